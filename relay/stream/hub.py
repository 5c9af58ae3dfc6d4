"""The hub: who listens to which channel, and gap-free delivery to them.

``publish`` runs on the event loop, never awaits, and builds each tweet's payload
once per channel, however many sessions listen; each transport kind with a listener
frames a channel's payloads once (:mod:`relay.stream.payloads`). It groups a whole
batch per session and hands each session its part in one call: a batch, not a frame,
is the unit of the slow-consumer rule (see :mod:`relay.stream.session`) and of the
counters. The frames are then written at the loop's next step, or once the coalescing
window (``coalesce``, a few milliseconds) since the first unwritten publish has passed,
one write per session for everything published meanwhile (pieces of a quarter of the
send buffer when it is large), round-robin over the sessions, in turns of
``FLUSH_BYTES_PER_TURN`` with the loop free between turns: no task and no coroutine
per client or per frame. A failure for one session closes that session only; the
others and the publisher go on.

Resume works without locks: a subscription registers and snapshots the last
published seq in the same tick, so every tweet up to that seq is already in the
store (persist before publish) and every later one is published after
registration and held until the store catch-up is done. Dropping held frames by
seq then gives no gap and no duplicate (invariant 3). Catch-ups run one at a time per
connection (in the order asked); their reads are bounded in :mod:`relay.stream.catch_up`.
A rewind to a moment is the same catch-up once the store has said where the moment
starts (:meth:`relay.store.Log.seq_at`, asked after the registration): after the seq
before it, up to the registration's head; a paced one goes on past it
(:mod:`relay.stream.rewind`).

A rule channel this process does not know (:mod:`relay.core.rule_set`) is checked against
the store before the reply: refused with ``unknown_channel`` when the ingester's rule
set is closed and does not name it, else answered with ``"known": false``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from relay.core import protocol
from relay.core.protocol import Position, Rewind, Since
from relay.core.rule_set import Channels
from relay.errors import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    SessionClosed,
    StoreCorrupt,
)
from relay.store import Log, StoredTweet
from relay.stream.catch_up import CatchUpReader
from relay.stream.delivery import deliver
from relay.stream.payloads import ChannelBatch
from relay.stream.rewind import replay_paced
from relay.stream.session import Session, Subscription

if TYPE_CHECKING:
    from relay.core.filters import TweetFilter
    from relay.obs.metrics import Metrics

log = logging.getLogger(__name__)

FLUSH_BYTES_PER_TURN = 2 << 20
"""Bytes the hub writes to clients before it lets the other tasks of the loop run:
about a millisecond of copying into socket buffers."""


class Hub:
    def __init__(
        self,
        store: Log,
        metrics: Metrics,
        *,
        head: int = 0,
        catch_ups_at_once: int = 2,
        recovered_cap: int = 1000,
        coalesce: float = 0.0,
    ) -> None:
        self.store = store
        self.coalesce = coalesce
        """Seconds publishes wait to go out together, one write per client (0: the next
        step); the wait is part of the delivery latency observed."""
        self.metrics = metrics
        self.head = head
        """The last seq published; every tweet up to it is in the store."""
        self.catch_ups = CatchUpReader(
            store,
            metrics,
            at_once=catch_ups_at_once,
            recovered_cap=recovered_cap,
        )
        self.sessions: set[Session] = set()
        self.kinds: Counter[str] = Counter()
        """Sessions per transport kind."""
        self._listeners: dict[str, set[Session]] = {}
        self._dirty: deque[Session] = deque()
        """Sessions with frames of a publish still to write, in turn."""
        self._flush_handle: asyncio.Handle | None = None
        self._oldest_unwritten = 0.0
        """Receive time of the oldest tweet whose frames are not all written yet."""
        self._on_drained = self._drained
        self.latest_stats: bytes | None = None
        """The last ``stats`` payload, sent at once to a new subscriber of ``$stats``."""
        self.known = Channels()
        """The channels known when last read from the store (:meth:`refresh_channels`)."""

    @property
    def epoch(self) -> str:
        return self.store.epoch

    def add(self, session: Session) -> None:
        if session not in self.sessions:
            session.on_drained = self._on_drained  # one bound method for every session
            self.sessions.add(session)
            self.kinds[session.kind] += 1
            self.metrics.connections.labels(session.kind).inc()

    def remove(self, session: Session) -> None:
        """The session's connection is gone: it ends (nothing more is sent) and listens no more."""
        session.close(CLOSE_ABNORMAL, "gone")
        for channel in list(session.subscriptions):
            session.unsubscribe(channel)
            self._unlisten(channel, session)
        if session in self.sessions:
            self.sessions.discard(session)
            self.kinds[session.kind] -= 1
            self.metrics.connections.labels(session.kind).dec()

    def announce(self, channel: str, payload: bytes, on: Collection[str] | None = None) -> int:
        """Send one control payload to every subscriber of ``channel``; how many got it.
        ``on``: the channels of the tweet it is about; a subscription bounded to other
        rule channels (:attr:`TweetFilter.channels`) does not get it."""
        sent = 0
        for session in list(self._listeners.get(channel, ())):
            if on is not None:
                sub = session.subscriptions.get(channel)
                bound = sub.filter.channels if sub is not None and sub.filter else None
                if bound is not None and bound.isdisjoint(on):
                    continue
            session.push(payload)
            sent += 1
        return sent

    def publish_stats(self, sample: dict[str, Any]) -> None:
        self.latest_stats = protocol.stats(sample)
        self.announce(protocol.STATS_CHANNEL, self.latest_stats)

    def subscriber_counts(self) -> dict[str, int]:
        """Subscribers per channel that has any (for the stats)."""
        return {channel: len(sessions) for channel, sessions in self._listeners.items() if sessions}

    def publish(self, tweets: Sequence[StoredTweet]) -> None:
        """Fan new tweets out; they must come in seq order and be in the store already."""
        # Each channel's payloads once, in seq order; then one call per listening session,
        # which takes its kind's frames as they are when its subscription is live and
        # unfiltered.
        per_channel: dict[str, ChannelBatch] = {}
        epoch = self.epoch
        for tweet in tweets:
            if tweet.seq <= self.head:
                continue  # a bus may redeliver after a reconnect
            self.head = tweet.seq
            for channel in tweet.channels:
                if channel not in self._listeners:
                    continue
                try:
                    payload = protocol.tweet(channel, tweet.seq, tweet.body)
                except Exception:  # a bug for this tweet must not stop the publisher
                    log.exception("cannot encode seq %d for %s; not delivered", tweet.seq, channel)
                    self.metrics.refused.labels("delivery_failed").inc()
                    continue
                batch = per_channel.get(channel)
                if batch is None:
                    batch = per_channel[channel] = ChannelBatch(channel, epoch)
                batch.add(tweet, payload)
        failed = deliver(self._listeners, per_channel, self._dirty)
        if failed:
            self._isolate(failed)
        if not self._dirty:
            self._oldest_unwritten = 0.0  # no frame to write: nothing to measure
        elif per_channel:
            received = min((t.received for t in tweets if t.received), default=0.0)
            if received and (not self._oldest_unwritten or received < self._oldest_unwritten):
                self._oldest_unwritten = received
        if self._dirty and self._flush_handle is None:
            # Not now: publishes of the same step (a follower's runs, a standby's catching
            # up), or of the window, go out together, one write per client. At a live rate
            # a tweet or a few come per publish, and a write per client is the cost.
            loop = asyncio.get_running_loop()
            if self.coalesce > 0:
                self._flush_handle = loop.call_later(self.coalesce, self._flush)
            else:
                self._flush_handle = loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write pending frames, a piece per session in turn, up to a turn's worth of bytes;
        the rest goes on at the loop's next turn, so that nothing else waits long."""
        self._flush_handle = None
        dirty = self._dirty
        frames = writes = written = 0
        counter = None  # frames are counted per transport kind, in runs of one kind
        while dirty and written < FLUSH_BYTES_PER_TURN:
            session = dirty.popleft()
            try:
                count, size = session.flush_piece()
            except Exception:  # pragma: no cover - _write catches what the transport raises
                log.exception("writing to %s failed; closing it (1011)", session.peer)
                count = size = 0
                session.close(CLOSE_INTERNAL_ERROR, "internal_error")
            if count:
                if session.frames_sent is not counter:
                    if counter is not None:
                        counter.inc(frames)
                    counter, frames = session.frames_sent, 0
                frames += count
                writes += 1
                written += size
            if session.pending and not session.closed and not session.held_back:
                dirty.append(session)
            else:
                # Done, closed, or held back until its transport drains (Session.drained).
                session.scheduled = False
        if counter is not None:
            counter.inc(frames)
            self.metrics.stream_writes.inc(writes)
        if not dirty and self._oldest_unwritten:
            # Every frame of the publishes so far is with the sockets: line to socket.
            self.metrics.delivery_latency.observe(max(0.0, time.time() - self._oldest_unwritten))
            self._oldest_unwritten = 0.0
        if dirty and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _drained(self, session: Session) -> None:
        """A session's transport drained after it pushed back: what it held back meanwhile
        goes out at the loop's next step, in one write."""
        if session.scheduled or session.closed:
            return
        session.scheduled = True
        self._dirty.append(session)
        if self._flush_handle is None:
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
                session.close(CLOSE_INTERNAL_ERROR, "internal_error")
            except Exception:  # pragma: no cover - closing must not stop the others
                log.debug("closing %s failed", session.peer, exc_info=True)

    def subscribe(
        self,
        session: Session,
        channel: str,
        since: Since | None,
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
            sub = session.subscribe(channel, ref=ref)
            self._listeners.setdefault(channel, set()).add(session)
            session.answer(sub, self.epoch, self.head)
            if self.latest_stats is not None:
                session.push(self.latest_stats)
            return
        sub = session.subscribe(channel, tweet_filter, requested, ref)
        self._listeners.setdefault(channel, set()).add(session)
        head = self.head  # same tick as registration: see the module docstring
        if not self.known.knows(channel):
            # Not known here: the store may know more than this process's copy (an
            # ingester that just started, a tweet of a new rule). The reply waits for its
            # answer; live frames are held meanwhile, as during a catch-up.
            task = asyncio.create_task(
                self._check_channel(session, sub, since, head), name=f"check {channel[:64]}"
            )
            session.waits_on(sub, task)
            return
        self._start(session, sub, since, head)

    def _start(self, session: Session, sub: Subscription, since: Since | None, head: int) -> None:
        """Answer a subscription registered at ``head``: live at once, or a catch-up (a
        resume after a position, a rewind to a moment)."""
        if isinstance(since, Rewind) or (
            since is not None and since.epoch == self.epoch and since.seq <= head
        ):
            task = asyncio.create_task(
                self._catch_up(session, sub, since, head), name=f"catch-up {sub.channel[:64]}"
            )
            session.waits_on(sub, task)
            return
        if since is not None:  # another history, or a seq past it: start over from here
            session.push(protocol.reset(sub.channel, self.epoch, head))
        session.answer(sub, self.epoch, head)
        session.go_live(sub, after=None)

    async def refresh_channels(self) -> Channels:
        """Read the known channels from the store afresh, and keep them for the next
        subscriptions (a subscription to a channel they miss reads them again)."""
        self.known = await self.store.known_channels()
        return self.known

    async def _check_channel(
        self, session: Session, sub: Subscription, since: Since | None, head: int
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
        session.mark_known(sub, channels.knows(channel))
        if not sub.known and channels.closed:
            session.unsubscribe(channel)
            self._unlisten(channel, session)
            self.metrics.bad_frames.labels("unknown_channel").inc()
            message = channels.unknown_message(channel)
            session.push(protocol.error("unknown_channel", message, "subscribe", sub.ref, channel))
            return
        self._start(session, sub, since, head)

    def reset_epoch(self, head: int) -> int:
        """The store's epoch changed under this process (``relay migrate --new-epoch``):
        its seqs now name another history. Every subscription gets ``reset`` with the new
        epoch and ``head`` (the new store's last seq) and goes on live from there; a
        catch-up of the old history stops. How many subscriptions were reset."""
        self.head = head
        count = 0
        for session in list(self.sessions):
            for channel, sub in list(session.subscriptions.items()):
                if channel != protocol.STATS_CHANNEL:
                    session.reset(sub, self.epoch, head)
                    count += 1
        return count

    def unsubscribe(self, session: Session, channel: str, ref: object = None) -> None:
        if session.unsubscribe(channel) is None:
            session.push(
                protocol.error(
                    "not_subscribed", f"not subscribed to {channel}", "unsubscribe", ref, channel
                )
            )
            return
        self._unlisten(channel, session)
        session.push(protocol.unsubscribed(channel, ref))

    async def close_all(self, timeout: float) -> None:
        """Shutdown: every session gets what is queued, then 1001 with its last seq; waits
        until their connections are gone, at most ``timeout`` (the transports cut a
        client that does not take its close)."""
        sessions = list(self.sessions)
        for session in sessions:
            session.close(CLOSE_GOING_AWAY, "shutdown", flush=True)
        if sessions:
            waiting = [asyncio.ensure_future(s.wait_closed()) for s in sessions]
            _, late = await asyncio.wait(waiting, timeout=timeout)
            for task in late:
                task.cancel()

    def channels(self) -> Iterable[str]:
        return self._listeners.keys()

    async def _catch_up(
        self, session: Session, sub: Subscription, since: Position | Rewind, head: int
    ) -> None:
        """A resume or a rewind: the count, ``subscribed``, the stored tweets after the
        client's seq (a rewind: from the first seq received at or after its moment, at its
        pace when it has one), then live."""
        channel, reader = sub.channel, self.catch_ups
        rewind = since if isinstance(since, Rewind) else None
        pace = rewind.pace if rewind is not None else None
        try:
            async with session.catch_up_turn:
                if isinstance(since, Position):
                    after = since.seq
                else:
                    after = await reader.seq_at(since.time) - 1
                    if after >= head:  # nothing received since the moment: live from here
                        session.answer(sub, self.epoch, head)
                        session.go_live(sub, after=None)
                        return
                oldest, counted = await reader.count(channel, after, head)
                # Retention deleted some of what the client missed; for a rewind, the
                # oldest kept tweet is the first at or after its moment, and older ones
                # (which may have been too) are gone.
                if oldest > after + 1 or (rewind is not None and oldest == after + 1 > 1):
                    session.push(protocol.history_start(channel, self.epoch, oldest))
                    self.metrics.history_gone.inc()
                cap = reader.recovered_cap
                session.answer(sub, self.epoch, head, min(counted, cap), capped=counted > cap)
                last = after
                while pace is None:
                    last = await reader.copy(session, sub, last, head, self.epoch)
                    if not session.take_overflow(sub):
                        break
                    # Live frames were dropped while we read: read on up to the new head.
                    head = self.head
            if pace is not None:
                # Out of the turn: it waits between tweets holding nothing, and returns
                # having sent every tweet up to the hub's head (dropped live frames too).
                last = await replay_paced(
                    reader, session, sub, last, self.epoch, pace, lambda: self.head
                )
                session.take_overflow(sub)
            session.go_live(sub, after=last)
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
                    sub.ref,
                    channel,
                )
            )
            session.close(CLOSE_INTERNAL_ERROR, "internal_error")
        except Exception:
            log.exception("catch-up of %s for %s failed", channel, session.peer)
            session.push(
                protocol.error(
                    "internal", "catch-up failed; resubscribe", "subscribe", sub.ref, channel
                )
            )
            if session.subscriptions.get(channel) is sub:
                session.unsubscribe(channel)
                self._unlisten(channel, session)

    def _unlisten(self, channel: str, session: Session) -> None:
        listeners = self._listeners.get(channel)
        if listeners is not None:
            listeners.discard(session)
            if not listeners:
                del self._listeners[channel]
