"""The hub: who listens to which channel, and gap-free delivery to them.

``publish`` runs on the event loop, never awaits, and builds each tweet frame
once per channel as the exact WebSocket frame bytes, however many sessions
listen. It groups a whole batch per session and hands each session its part in
one call: a batch, not a frame, is the unit of the slow-consumer rule (see
:mod:`relay.stream.session`) and of the counters. The frames are then written at the
loop's next step, one write per session for everything published in a step
(pieces of a quarter of the send buffer when it is large), round-robin over the
sessions, in turns of ``FLUSH_BYTES_PER_TURN`` with the loop free between
turns: no task and no coroutine per client or per frame. A failure for one
session closes that session only; the others and the publisher go on.

Resume works without locks: a subscription registers and snapshots the last
published seq in the same tick, so every tweet up to that seq is already in the
store (persist before publish) and every later one is published after
registration and held until the store catch-up is done. Dropping held frames by
seq then gives no gap and no duplicate (invariant 3).

Catch-ups are bounded: one at a time per connection (in the order asked), a
fixed number of store reads at once overall, small pages read only when the
client has taken most of what it was sent (the transport's buffer drained to a
quarter of the send buffer), written coalesced, and ``recovered`` counted up to a cap.
A page is read as ``(seq, body)`` rows and turned into its frames, end to end in one
bytes object, where the store reads it (:meth:`Log.read_bodies`): the loop only
writes it. A subscription's filter is tested in the store, over windows of at most
``CATCH_UP_SCAN`` seqs: a filter that matches nothing reads no tweet out; a page read
under a filter that a refresh has since replaced is read again.

A rule channel this process does not know (:mod:`relay.core.rule_set`) is checked against
the store before the reply: refused with ``unknown_channel`` when the ingester's rule
set is closed and does not name it, else answered with ``"known": false``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from relay.core import protocol
from relay.core.protocol import Position
from relay.core.rule_set import Channels
from relay.errors import SessionClosed, StoreCorrupt
from relay.store import BodyPage, Log, StoredTweet
from relay.stream.session import ChannelBatch, Session, Subscription

if TYPE_CHECKING:
    from relay.core.filters import TweetFilter
    from relay.obs.metrics import Metrics

log = logging.getLogger(__name__)

_Page = tuple[BodyPage[bytes], int, "TweetFilter | None"]
"""A catch-up page: its frames, the seq the read looked up to, the filter it was read with."""

CATCH_UP_PAGE = 1000
"""Most tweets one catch-up read takes from the store (also bounded in bytes: half
the send buffer), written to the client in one write."""
FLUSH_BYTES_PER_TURN = 2 << 20
"""Bytes the hub writes to clients before it lets the other tasks of the loop run:
about a millisecond of copying into socket buffers."""
CATCH_UP_SCAN = 4096
"""Most seqs one filtered catch-up read looks through: a filter that matches little
cannot hold a store reader for a whole scan of the store in one read."""


class Hub:
    def __init__(
        self,
        store: Log,
        metrics: Metrics,
        *,
        head: int = 0,
        catch_ups_at_once: int = 2,
        recovered_cap: int = 1000,
        catch_up_scan: int = CATCH_UP_SCAN,
    ) -> None:
        self.store = store
        self.catch_up_scan = catch_up_scan
        """Seqs one filtered catch-up read looks through at most."""
        self.metrics = metrics
        self.head = head
        """The last seq published; every tweet up to it is in the store."""
        self.recovered_cap = recovered_cap
        self.sessions: set[Session] = set()
        self._listeners: dict[str, set[Session]] = {}
        self._reads = asyncio.Semaphore(catch_ups_at_once)
        """Store reads of catch-ups at once, over every connection."""
        self._dirty: deque[Session] = deque()
        """Sessions with frames of a publish still to write, in turn."""
        self._flush_handle: asyncio.Handle | None = None
        self._oldest_unwritten = 0.0
        """Receive time of the oldest tweet whose frames are not all written yet."""
        self.latest_stats: bytes | None = None
        """The last ``$stats`` frame, sent at once to a new subscriber."""
        self.known = Channels()
        """The channels known when last read from the store (:meth:`refresh_channels`)."""

    @property
    def epoch(self) -> str:
        return self.store.epoch

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        self.metrics.connections.set(len(self.sessions))

    def remove(self, session: Session) -> None:
        session.stop()
        for channel in session.subscriptions:
            self._unlisten(channel, session)
        session.subscriptions.clear()
        self.sessions.discard(session)
        self.metrics.connections.set(len(self.sessions))

    def announce(self, channel: str, frame: bytes) -> int:
        """Send one control frame to every subscriber of ``channel``; how many got it."""
        sessions = list(self._listeners.get(channel, ()))
        for session in sessions:
            session.push(frame)
        return len(sessions)

    def publish_stats(self, sample: dict[str, Any]) -> None:
        self.latest_stats = protocol.stats(sample)
        self.announce(protocol.STATS_CHANNEL, self.latest_stats)

    def subscriber_counts(self) -> dict[str, int]:
        """Subscribers per channel that has any (for the stats)."""
        return {channel: len(sessions) for channel, sessions in self._listeners.items() if sessions}

    def publish(self, tweets: Sequence[StoredTweet]) -> None:
        """Fan new tweets out; they must come in seq order and be in the store already."""
        # Each channel's frames once, in seq order; then one call per listening session,
        # which takes the whole list as it is when its subscription is live and unfiltered.
        per_channel: dict[str, ChannelBatch] = {}
        for tweet in tweets:
            if tweet.seq <= self.head:
                continue  # a bus may redeliver after a reconnect
            self.head = tweet.seq
            for channel in tweet.channels:
                if channel not in self._listeners:
                    continue
                try:
                    frame = protocol.tweet_frame(channel, tweet.seq, tweet.body)
                except Exception:  # a bug for this tweet must not stop the publisher
                    log.exception("cannot encode seq %d for %s; not delivered", tweet.seq, channel)
                    self.metrics.refused.labels("delivery_failed").inc()
                    continue
                batch = per_channel.get(channel)
                if batch is None:
                    batch = per_channel[channel] = ChannelBatch()
                batch.add(tweet, frame)
        parts: dict[Session, list[ChannelBatch]] = {}
        failed: dict[Session, BaseException] = {}
        for channel, batch in per_channel.items():
            for session in tuple(self._listeners.get(channel, ())):
                if session in failed:
                    continue
                try:
                    part = session.take_batch(channel, batch)
                    if part is not None:
                        parts.setdefault(session, []).append(part)
                except Exception as exc:  # one session's failure stays with it
                    failed[session] = exc
        for session, batches in parts.items():
            if session in failed:
                continue
            try:
                if session.deliver_batch(batches) and not session.scheduled:
                    session.scheduled = True
                    self._dirty.append(session)
            except Exception as exc:
                failed[session] = exc
        if failed:
            self._isolate(failed)
        if not self._dirty:
            self._oldest_unwritten = 0.0  # no frame to write: nothing to measure
        elif per_channel:
            received = min((t.received for t in tweets if t.received), default=0.0)
            if received and (not self._oldest_unwritten or received < self._oldest_unwritten):
                self._oldest_unwritten = received
        if self._dirty and self._flush_handle is None:
            # At the loop's next step, not now: publishes of the same step (a follower's
            # runs, a standby's catching up) go out together, one write per client.
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write pending frames, a piece per session in turn, up to a turn's worth of bytes;
        the rest goes on at the loop's next turn, so that nothing else waits long."""
        self._flush_handle = None
        dirty = self._dirty
        frames = writes = written = 0
        while dirty and written < FLUSH_BYTES_PER_TURN:
            session = dirty.popleft()
            try:
                count, size = session.flush_piece()
            except Exception:  # pragma: no cover - _write catches what the socket raises
                log.exception("writing to %s failed; closing it (1011)", session.peer)
                count = size = 0
                session.failed()
            if count:
                frames += count
                writes += 1
                written += size
            if session.pending and not session.closed:
                dirty.append(session)
            else:
                session.scheduled = False
        if frames:
            self.metrics.frames_sent.inc(frames)
            self.metrics.stream_writes.inc(writes)
        if not dirty and self._oldest_unwritten:
            # Every frame of the publishes so far is with the sockets: line to socket.
            self.metrics.delivery_latency.observe(max(0.0, time.time() - self._oldest_unwritten))
            self._oldest_unwritten = 0.0
        if dirty and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _isolate(self, failed: dict[Session, BaseException]) -> None:
        """Close each session whose delivery raised; one log line with the first cause."""
        first = next(iter(failed.values()))
        log.error(
            "delivery failed for %d connection(s) at seq %d; closing them (1011)",
            len(failed),
            self.head,
            exc_info=(type(first), first, first.__traceback__),
        )
        for session in failed:
            self.metrics.refused.labels("delivery_failed").inc()
            try:
                session.failed()
            except Exception:  # pragma: no cover - closing must not stop the others
                log.debug("closing %s failed", session.peer, exc_info=True)

    def subscribe(
        self,
        session: Session,
        channel: str,
        since: Position | None,
        ref: object = None,
        tweet_filter: TweetFilter | None = None,
        requested: Any = None,
    ) -> None:
        """Start a subscription; a resume runs its store catch-up in a task."""
        if channel in session.subscriptions:
            session.push(
                protocol.error(
                    "already_subscribed",
                    f"already subscribed to {channel}",
                    "subscribe",
                    ref,
                    channel,
                )
            )
            return
        if channel == protocol.STATS_CHANNEL:
            if requested is not None or since is not None:
                session.push(
                    protocol.error(
                        "bad_request",
                        "$stats takes no filters and no since",
                        "subscribe",
                        ref,
                        channel,
                    )
                )
                return
            session.subscriptions[channel] = Subscription(channel, None, None)
            self._listeners.setdefault(channel, set()).add(session)
            session.push(protocol.subscribed(channel, self.epoch, self.head, 0, ref))
            if self.latest_stats is not None:
                session.push(self.latest_stats)
            return
        sub = Subscription(channel, tweet_filter, requested, ref=ref)
        session.subscriptions[channel] = sub
        filters = tweet_filter.as_dict() if tweet_filter else None
        self._listeners.setdefault(channel, set()).add(session)
        head = self.head  # same tick as registration: see the module docstring
        if not self.known.knows(channel):
            # Not known here: the store may know more than this process's copy (an
            # ingester that just started, a tweet of a new rule). The reply waits for its
            # answer; live frames are held meanwhile, as during a catch-up.
            sub.ref, sub.replied = ref, False
            sub.task = asyncio.create_task(
                self._check_channel(session, sub, since, head, filters),
                name=f"check {channel[:64]}",
            )
            return
        self._start(session, sub, since, head, filters)

    def _start(
        self,
        session: Session,
        sub: Subscription,
        since: Position | None,
        head: int,
        filters: dict[str, Any] | None,
    ) -> None:
        """Answer a subscription registered at ``head``: live at once, or a catch-up."""
        channel, ref, known = sub.channel, sub.ref, sub.known
        if since is None:
            sub.replied = True
            session.push(
                protocol.subscribed(channel, self.epoch, head, 0, ref, filters, known=known)
            )
            self._go_live(session, sub, after=None)
        elif since.epoch != self.epoch or since.seq > head:
            sub.replied = True
            session.push(protocol.reset(channel, self.epoch, head))
            session.push(
                protocol.subscribed(channel, self.epoch, head, 0, ref, filters, known=known)
            )
            self._go_live(session, sub, after=None)
        else:
            sub.replied = False
            sub.task = asyncio.create_task(
                self._catch_up(session, sub, since.seq, head, ref, filters),
                name=f"catch-up {channel[:64]}",
            )

    async def refresh_channels(self) -> Channels:
        """Read the known channels from the store afresh, and keep them for the next
        subscriptions (a subscription to a channel they miss reads them again)."""
        self.known = await self.store.known_channels()
        return self.known

    async def _check_channel(
        self,
        session: Session,
        sub: Subscription,
        since: Position | None,
        head: int,
        filters: dict[str, Any] | None,
    ) -> None:
        """A subscription to a channel this process does not know: refused as
        ``unknown_channel`` when the store's rule set is closed and does not name it,
        else started, ``known`` False while no tweet has matched it."""
        channel = sub.channel
        try:
            channels = await self.refresh_channels()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store cannot say now: go by what this process knows
            log.warning("cannot read the known channels for %s: %s", channel[:64], exc)
            channels = self.known
        if session.closed or session.subscriptions.get(channel) is not sub:
            return
        sub.task = None
        sub.known = channels.knows(channel)
        if not sub.known and channels.closed:
            del session.subscriptions[channel]
            session.release_held(sub)
            self._unlisten(channel, session)
            self.metrics.bad_frames.labels("unknown_channel").inc()
            message = channels.unknown_message(channel)
            session.push(protocol.error("unknown_channel", message, "subscribe", sub.ref, channel))
            return
        self._start(session, sub, since, head, filters)

    def reset_epoch(self, head: int) -> int:
        """The store's epoch changed under this process (``relay migrate --new-epoch``):
        its seqs now name another history. Every subscription gets ``reset`` with the new
        epoch and ``head`` (the new store's last seq) and goes on live from there; a
        catch-up of the old history stops. How many subscriptions were reset."""
        self.head = head
        count = 0
        for session in list(self.sessions):
            for channel, sub in list(session.subscriptions.items()):
                if channel == protocol.STATS_CHANNEL:
                    continue
                if sub.task is not None:
                    sub.task.cancel()
                session.release_held(sub)  # frames of the old history
                session.push(protocol.reset(channel, self.epoch, head))
                if not sub.replied:  # the resume had not answered yet: answer it now
                    filters = sub.filter.as_dict() if sub.filter else None
                    session.push(
                        protocol.subscribed(
                            channel, self.epoch, head, 0, sub.ref, filters, known=sub.known
                        )
                    )
                    sub.replied = True
                sub.live = True
                sub.task = None
                sub.overflowed = False
                count += 1
        return count

    def unsubscribe(self, session: Session, channel: str, ref: object = None) -> None:
        sub = session.subscriptions.pop(channel, None)
        if sub is None:
            session.push(
                protocol.error(
                    "not_subscribed", f"not subscribed to {channel}", "unsubscribe", ref, channel
                )
            )
            return
        if sub.task is not None:
            sub.task.cancel()  # frees its turn and its read slot at once
        session.release_held(sub)
        self._unlisten(channel, session)
        session.push(protocol.unsubscribed(channel, ref))

    async def close_all(self, timeout: float) -> None:
        """Shutdown: every session gets what is queued, then 1001 with its last seq."""
        sessions = list(self.sessions)
        if sessions:
            await asyncio.gather(*(s.shutdown(timeout) for s in sessions))

    def channels(self) -> Iterable[str]:
        return self._listeners.keys()

    async def _catch_up(
        self,
        session: Session,
        sub: Subscription,
        after: int,
        head: int,
        ref: object,
        filters: dict[str, object] | None,
    ) -> None:
        channel = sub.channel
        try:
            async with session.catch_up_turn:
                async with self._reads:
                    oldest = await self.store.oldest_seq()
                    counted = await self.store.count_after(
                        channel, after, head, cap=self.recovered_cap
                    )
                if oldest > after + 1:  # retention deleted some of what the client missed
                    session.push(protocol.history_start(channel, self.epoch, oldest))
                    self.metrics.history_gone.inc()
                capped = counted > self.recovered_cap
                sub.replied = True
                session.push(
                    protocol.subscribed(
                        channel,
                        self.epoch,
                        head,
                        min(counted, self.recovered_cap),
                        ref,
                        filters,
                        capped=capped,
                        known=sub.known,
                    )
                )
                last = after
                while True:
                    last = await self._copy(session, sub, last, head)
                    if not sub.overflowed:
                        break
                    # Live frames were dropped while we read: read on up to the new head.
                    sub.overflowed = False
                    head = self.head
                self._go_live(session, sub, after=last)
        except SessionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except StoreCorrupt:
            # What was sent is good; what follows cannot be read from this store. The
            # client hears it and goes (1011 with its last seq) to resume elsewhere or
            # later: never a quiet end of the catch-up. The relay stops (the store told it).
            session.push(
                protocol.error(
                    "internal",
                    "the store is damaged; resume from another relay or later",
                    "subscribe",
                    ref,
                    channel,
                )
            )
            session.failed()
        except Exception:
            log.exception("catch-up of %s for %s failed", channel, session.peer)
            session.push(
                protocol.error(
                    "internal", "catch-up failed; resubscribe", "subscribe", ref, channel
                )
            )
            if session.subscriptions.get(channel) is sub:
                del session.subscriptions[channel]
                session.release_held(sub)
                self._unlisten(channel, session)

    async def _copy(self, session: Session, sub: Subscription, last: int, head: int) -> int:
        """Copy the channel's stored tweets ``last < seq <= head`` to the client, paced.

        Each page goes out in one write once the client has taken all but a quarter of
        the buffer; the next page is read while the client takes this one, so the client
        never waits for the store (one page ahead: at most the buffer's worth held).
        """
        page_bytes = max(1, session.limit // 2)
        ahead: asyncio.Future[_Page] | None = None
        try:
            while last < head:
                if ahead is None:
                    ahead = asyncio.ensure_future(self._page(sub, last, head, page_bytes))
                page, until, read_with = await ahead
                ahead = None
                # A complete page holds every match up to until (Log.read_bodies).
                after = until if page.complete else page.last
                if after < head:
                    ahead = asyncio.ensure_future(self._page(sub, after, head, page_bytes))
                await session.wait_room()
                if session.closed:
                    raise SessionClosed
                if read_with is not sub.filter:
                    # A refresh changed the filter while this page was read or waited for
                    # room: read it again under the filter now in force.
                    if ahead is not None:
                        ahead.cancel()
                        ahead = None
                    continue
                if page.count:
                    # The frames of the page, built by the store's reader, in one write.
                    session.send_page(page.built, page.count, page.last)
                    self.metrics.recovered.inc(page.count)
                last = after
        finally:
            if ahead is not None:
                ahead.cancel()  # a read of a page nobody will send
        return last

    async def _page(self, sub: Subscription, last: int, head: int, page_bytes: int) -> _Page:
        """One page of the channel's stored tweets after ``last`` as frames, how far it
        looked, and the filter it was read with."""
        # The filter goes to the store, so tweets it refuses are never read out (the
        # store's conditions mean what TweetFilter.matches means); taken afresh for each
        # page, as a refresh may narrow it.
        read_with = sub.filter
        conditions = read_with.conditions() if read_with is not None else ()
        until = min(head, last + self.catch_up_scan) if conditions else head
        channel = sub.channel
        async with self._reads:
            page = await self.store.read_bodies(
                channel,
                last,
                until,
                CATCH_UP_PAGE,
                partial(protocol.tweet_page, channel),
                max_bytes=page_bytes,
                conditions=conditions,
            )
        return page, until, read_with

    @staticmethod
    def _go_live(session: Session, sub: Subscription, after: int | None) -> None:
        held = session.release_held(sub)
        session.send_now([(frame, seq) for frame, seq in held if after is None or seq > after])
        sub.live = True
        sub.task = None

    def _unlisten(self, channel: str, session: Session) -> None:
        listeners = self._listeners.get(channel)
        if listeners is not None:
            listeners.discard(session)
            if not listeners:
                del self._listeners[channel]
