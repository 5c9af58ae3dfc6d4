"""One client's subscriptions and send side, whatever its transport.

No task per connection and no coroutine per frame: the hub gives a session
everything one publish has for it (ready frames of its transport kind, the same
bytes for every client of that kind) and the session writes them to its
:class:`~relay.stream.transport.Transport` in one write, or in a few pieces of at
most a quarter of ``send_buffer`` when the publish is large (the hub interleaves
those pieces with other clients' and yields between turns).

The transport's own write buffer is the send buffer. While the transport pushes
back (the client reads slower than the relay sends), the hub writes nothing more
to it: the frames of every publish meanwhile wait here, unsent and uncopied, and
go out in one write once it drains (:meth:`Session.drained`), so a slow reader
costs no more writes or loop turns a frame than a fast one. A client is slow when it
has not taken what it was sent before: more than ``send_buffer`` bytes from
earlier publishes still unsent (held back here or in the transport) when the next
publish for it comes closes it with 4008 and its last seq, so it can resume from
the store, and no other client waits for it (invariant 4). The buffer is measured before this
publish's bytes are written, so one large publish never makes a client slow by
itself; ``LAG_ALLOWANCE`` buffers' worth bounds what one connection can hold
while the relay itself lags behind.

The session owns its subscriptions: only the methods here change them (the hub
and the server ask). It ends one way, :meth:`Session.close`, whatever the reason
(a slow client, shutdown, a refusal, a failure, the peer gone).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from relay.core import protocol
from relay.errors import CLOSE_ABNORMAL, CLOSE_SLOW_CONSUMER, SessionClosed
from relay.stream.payloads import Frames

if TYPE_CHECKING:
    from relay.core.filters import TweetFilter
    from relay.obs.metrics import Metrics
    from relay.store import StoredTweet
    from relay.stream.payloads import ChannelBatch
    from relay.stream.transport import Transport

log = logging.getLogger(__name__)

LAG_ALLOWANCE = 8
"""Send buffers' worth a connection may hold (written and pending) while the relay lags."""

ROOM_POLL = 0.005
"""Seconds between backlog checks of a waiting catch-up when the transport is not paused."""

_FREE, _HELD, _WHOLE = "free", "held", "whole"
"""A session's hold on its pending frames: written in pieces as usual; held back while
the transport pushes back; written whole at the next write, the transport drained."""

Frame = tuple[bytes, int]
"""A complete frame ready for the wire and the seq it carries (0: a reply)."""


@dataclass(eq=False, slots=True)
class Subscription:
    """A session's interest in one channel; held frames wait while it catches up.

    Changed only by its session's methods."""

    channel: str
    filter: TweetFilter | None = None
    requested: Any = None
    """The filters the client asked for at subscribe time (re-bounded on refresh)."""
    live: bool = False
    held: list[Frame] = field(default_factory=list)
    held_bytes: int = 0
    overflowed: bool = False
    task: asyncio.Task[None] | None = None
    ref: Any = None
    """The subscribe's ``id``, for a reply the catch-up has not sent yet."""
    replied: bool = False
    """``subscribed`` went out (a resume sends it once the store has counted)."""
    known: bool = True
    """The channel is one the relay knows (False: a rule no tweet matched yet, the rule
    set still open)."""


class Session:
    __slots__ = (
        "_catch_up_turn",
        "_held",
        "_hold",
        "_out",
        "_out_bytes",
        "_out_seq",
        "_whole",
        "closed",
        "frames_sent",
        "kind",
        "last_seq",
        "limit",
        "metrics",
        "on_drained",
        "peer",
        "piece",
        "scheduled",
        "sent_bytes",
        "subscriptions",
        "transport",
        "writes",
    )

    def __init__(
        self, transport: Transport, *, send_buffer: int, metrics: Metrics, peer: str = ""
    ) -> None:
        self.transport = transport
        self.peer = peer
        self.limit = send_buffer
        self.piece = max(1, send_buffer // 4)
        """Most bytes of one write of a publish's frames (at least one frame)."""
        self.metrics = metrics
        self.kind = transport.framing.name
        """The transport kind (``websocket``, ``sse``): the label of its counts."""
        self.frames_sent = metrics.frames_sent.labels(self.kind)
        """The count of frames sent over this kind of transport."""
        self.subscriptions: dict[str, Subscription] = {}
        self.last_seq = 0
        self.closed = False
        self.writes = 0
        """Writes of frames to this session's transport (coalesced: one per publish)."""
        self.sent_bytes = 0
        """Bytes of frames written (before compression), for the access log."""
        self._catch_up_turn: asyncio.Lock | None = None
        self.scheduled = False
        """The hub has this session in its list of sessions with frames to write."""
        self.on_drained: Callable[[Session], None] | None = None
        """Told when the transport drained while frames were held back (the hub's)."""
        self._out: list[bytes] = []
        self._out_seq: list[int] = []
        self._out_bytes = 0
        self._whole: Frames | None = None
        """What one publish shared with every live subscriber, when it is all this session
        has pending: written as it is, joined once for all of them (see :meth:`_spill`)."""
        self._held = 0
        """Bytes of live frames held for subscriptions still catching up."""
        self._hold = _FREE
        """Whether pending frames are held back for the transport to drain (the hub does
        not schedule the session meanwhile), or go out whole at the next write."""

    @property
    def catch_up_turn(self) -> asyncio.Lock:
        """One catch-up at a time per connection; the others wait their turn in order."""
        if self._catch_up_turn is None:
            self._catch_up_turn = asyncio.Lock()
        return self._catch_up_turn

    # -- subscriptions -----------------------------------------------------------------

    def subscribe(
        self,
        channel: str,
        tweet_filter: TweetFilter | None = None,
        requested: Any = None,
        ref: Any = None,
    ) -> Subscription:
        """Register interest in ``channel``: its live frames are held until it goes live."""
        sub = self.subscriptions[channel] = Subscription(channel, tweet_filter, requested, ref=ref)
        return sub

    def answer(
        self, sub: Subscription, epoch: str, head: int, recovered: int = 0, *, capped: bool = False
    ) -> None:
        """Send the subscription's ``subscribed`` reply (a resume's, once the store counted)."""
        filters = sub.filter.as_dict() if sub.filter else None
        self.push(
            protocol.subscribed(
                sub.channel,
                epoch,
                head,
                recovered,
                sub.ref,
                filters,
                capped=capped,
                known=sub.known,
            )
        )
        sub.replied = True

    def waits_on(self, sub: Subscription, task: asyncio.Task[None]) -> None:
        """The subscription goes live when ``task`` (a channel check, a catch-up) says so;
        an unsubscribe or the end of the session cancels it."""
        sub.task = task

    def mark_known(self, sub: Subscription, known: bool) -> None:
        sub.known = known

    def go_live(self, sub: Subscription, after: int | None) -> None:
        """Send the held frames past ``after`` (None: all), then every frame as it comes."""
        held = self.release_held(sub)
        self.send_now([(frame, seq) for frame, seq in held if after is None or seq > after])
        sub.live = True
        sub.task = None

    def take_overflow(self, sub: Subscription) -> bool:
        """Whether live frames were dropped while the subscription caught up (they are in
        the store: the catch-up reads on); the mark is cleared."""
        overflowed, sub.overflowed = sub.overflowed, False
        return overflowed

    def refilter(self, channel: str, tweet_filter: TweetFilter | None) -> None:
        """From now on ``tweet_filter`` bounds the subscription's live frames and pages."""
        self.subscriptions[channel].filter = tweet_filter

    def reset(self, sub: Subscription, epoch: str, head: int) -> None:
        """The store's history changed under the subscription: ``reset`` to ``head`` of
        ``epoch``, its reply if it had none, and live from there (a catch-up stops)."""
        _stop(sub.task)
        self.release_held(sub)  # frames of the old history
        self.push(protocol.reset(sub.channel, epoch, head))
        if not sub.replied:  # the resume had not answered yet: answer it now
            self.answer(sub, epoch, head)
        sub.live = True
        sub.task = None
        sub.overflowed = False

    def unsubscribe(self, channel: str) -> Subscription | None:
        """End the subscription to ``channel`` (its catch-up stops at once); None if none."""
        sub = self.subscriptions.pop(channel, None)
        if sub is not None:
            _stop(sub.task)  # frees its turn and its read slot at once
            self.release_held(sub)
        return sub

    # -- the send side -----------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """Frames handed to this session wait to be written."""
        return bool(self._out) or self._whole is not None

    def backlog(self) -> int:
        """Bytes sent to this client and not yet taken: ours and the transport's."""
        return self._out_bytes + self.transport_backlog()

    def transport_backlog(self) -> int:
        return self.transport.backlog()

    def push(self, payload: bytes, seq: int = 0) -> None:
        """Send one reply now (after anything still pending, so order holds)."""
        self.send_now(((self.transport.framing.message(payload), seq),))

    def take_batch(self, channel: str, batch: ChannelBatch) -> Frames | None:
        """What of a channel's publish goes out to this client now (the rest is held or
        filtered out): the shared frames themselves when the subscription is live and
        takes all."""
        if self.closed:
            return None
        sub = self.subscriptions.get(channel)
        if sub is None:
            return None
        framed = batch.framed(self.transport.framing)
        if sub.live and sub.filter is None:
            return framed
        mine = Frames()
        for tweet, frame in zip(batch.tweets, framed.frames, strict=True):
            if self._take(sub, tweet, frame):
                mine.add(frame, tweet.seq)
        return mine if mine.frames else None

    def deliver_batch(self, parts: list[Frames]) -> bool:
        """Take what one publish has for this client; True when it waits to be written.

        The transport's buffer before this publish decides: past the limit the client
        has not taken what earlier publishes sent, and it is slow (4008).
        """
        if self.closed:
            return False
        buffered = self.transport_backlog()
        # Held back, the frames of earlier publishes are the client's unsent bytes too.
        unsent = buffered + self._out_bytes if self.held_back else buffered
        if unsent > self.limit or buffered + self._out_bytes > LAG_ALLOWANCE * self.limit:
            self.close(CLOSE_SLOW_CONSUMER, "slow_consumer")
            return False
        if len(parts) == 1:
            (part,) = parts
            if (
                self._whole is None
                and not self._out
                and not self.held_back
                and part.size <= self.piece
            ):
                # The live path: nothing else pending, one write of the publish's bytes.
                self._whole = part
                self._out_bytes += part.size
                return True
            self._spill()
            self._out.extend(part.frames)
            self._out_seq.extend(part.seqs)
            self._out_bytes += part.size
        else:
            # Several channels: their frames interleaved back into seq order.
            merged = sorted(
                (pair for p in parts for pair in zip(p.frames, p.seqs, strict=True)),
                key=lambda pair: pair[1],
            )
            self._add(merged)
        return bool(self._out) and not self.held_back

    def _spill(self) -> None:
        """Turn a whole publish pending (:attr:`_whole`) into frames pending like any."""
        whole = self._whole
        if whole is not None:
            self._whole = None
            self._out.extend(whole.frames)
            self._out_seq.extend(whole.seqs)

    def _add(self, frames: Iterable[Frame]) -> None:
        self._spill()
        out, seqs = self._out, self._out_seq
        size = 0
        for frame, seq in frames:
            out.append(frame)
            seqs.append(seq)
            size += len(frame)
        self._out_bytes += size

    def send_now(self, frames: Iterable[Frame]) -> int:
        """Write ``frames`` (and what is pending before them) in one write; frames written."""
        if self.closed:
            return 0
        self._add(frames)
        count = len(self._out)
        if count and self._write(count):
            self.frames_sent.inc(count)
            self.metrics.stream_writes.inc()
            return count
        return 0

    def send_page(self, page: bytes, count: int, last: int) -> None:
        """Write ``count`` complete frames put end to end in ``page`` (a catch-up page,
        seqs up to ``last``) after what is pending, in one write."""
        if self.closed:
            return
        self._spill()
        self._out.append(page)
        self._out_seq.append(last)
        self._out_bytes += len(page)
        written = len(self._out)
        if self._write(written):
            self.frames_sent.inc(count + written - 1)
            self.metrics.stream_writes.inc()

    @property
    def held_back(self) -> bool:
        """Pending frames wait for the transport to drain (it pushed back)."""
        return self._hold is _HELD

    def flush_piece(self) -> tuple[int, int]:
        """Write the next piece of pending frames (at most ``piece`` bytes, at least one
        frame) in one write: how many frames and bytes went out. Nothing while the
        transport pushes back: the frames are held back until it drains, and then
        everything pending goes out in one write."""
        whole = self._whole
        if self.closed or not (self._out or whole is not None):
            return 0, 0
        if self.transport.pushing_back():
            self._hold = _HELD
            return 0, 0
        if whole is not None:
            self._whole = None
            self._hold = _FREE
            if self._send(whole.joined, whole.size, whole.seqs[-1]):
                return len(whole.frames), whole.size
            return 0, 0
        out, size, count = self._out, 0, 0
        if self._hold is _WHOLE:
            self._hold = _FREE
            count, size = len(out), self._out_bytes
        else:
            for frame in out:
                if count and size + len(frame) > self.piece:
                    break
                size += len(frame)
                count += 1
        return (count, size) if self._write(count) else (0, 0)

    def drained(self) -> None:
        """The transport takes writes again: frames held back meanwhile go out (the hub
        writes them in one write at the loop's next step)."""
        if self._hold is not _HELD:
            return
        self._hold = _FREE
        if self.pending and not self.closed and self.on_drained is not None:
            self._hold = _WHOLE
            self.on_drained(self)

    def _write(self, count: int) -> bool:
        """Write the first ``count`` pending frames to the transport, as one write."""
        frames = self._out[:count]
        last = max(self._out_seq[:count])
        del self._out[:count]
        del self._out_seq[:count]
        size = sum(map(len, frames))
        return self._send(frames[0] if count == 1 else b"".join(frames), size, last)

    def _send(self, data: bytes, size: int, last: int) -> bool:
        """Write ``data`` (pending frames of ``size`` bytes up to seq ``last``) as one write."""
        self._out_bytes -= size
        try:
            written = self.transport.write(data)
        except Exception as exc:  # a transport that fails is cut; its end reaches the server
            log.debug("writing to %s failed: %s", self.peer, exc)
            written = False
        if not written:
            # Closing (the client's close came first) or gone: nothing more goes out.
            self.close(CLOSE_ABNORMAL, "gone")
            return False
        self.writes += 1
        self.sent_bytes += size
        if last > self.last_seq:
            self.last_seq = last
        return True

    async def wait_room(self) -> None:
        """Wait until at most a quarter of the send buffer is unsent: the client reads."""
        low = self.limit // 4
        while True:
            if self.closed:
                raise SessionClosed
            if self._out or self._whole is not None:
                self.send_now(())
                continue
            if self.transport_backlog() <= low:
                return
            try:
                # Wakes when the transport drains below its low-water mark; bounded by
                # ping_timeout on our connections (a client that reads nothing).
                await self.transport.drain()
            except Exception:
                self.close(CLOSE_ABNORMAL, "gone")
                raise SessionClosed from None
            if self.transport_backlog() > low:
                await asyncio.sleep(ROOM_POLL)  # not paused, not yet below: look again soon

    def _take(self, sub: Subscription, tweet: StoredTweet, frame: bytes) -> bool:
        """A live tweet of a channel: True if it goes out now; held while catching up."""
        if not wanted(sub, tweet):
            return False
        if sub.live:
            return True
        if not sub.overflowed:
            sub.held.append((frame, tweet.seq))
            sub.held_bytes += len(frame)
            self._held += len(frame)
            if self._held > self.limit:
                # Everything held is in the store; drop it and read it from there instead.
                # One bound for all the connection's waiting subscriptions together.
                self.release_held(sub)
                sub.overflowed = True
        return False

    def release_held(self, sub: Subscription) -> list[Frame]:
        """Take a subscription's held frames out of the connection's account."""
        held = sub.held
        self._held -= sub.held_bytes
        sub.held = []
        sub.held_bytes = 0
        return held

    # -- the end -----------------------------------------------------------------------

    def close(self, code: int, reason: str, message: str = "", *, flush: bool = False) -> None:
        """End the session, whatever the reason: every catch-up stops, what is pending is
        dropped (``flush``: written first, as at shutdown), and the transport closes with
        ``code`` and a reason carrying the last seq sent, from where the client resumes
        (``message``: words for people). A slow consumer (4008) is counted and logged.
        :data:`~relay.errors.CLOSE_ABNORMAL`: the transport failed or is gone (it is cut,
        nothing is sent). Closing again does nothing."""
        if self.closed:
            return
        if flush:
            self.send_now(())
            if self.closed:  # the transport failed meanwhile
                return
        if code == CLOSE_SLOW_CONSUMER:
            log.warning(
                "closing slow consumer %s: %d bytes unsent, last seq %d",
                self.peer,
                self.backlog(),
                self.last_seq,
            )
            self.metrics.slow_consumers.inc()
        self.closed = True
        self._whole = None
        self._out.clear()
        self._out_seq.clear()
        self._out_bytes = 0
        for sub in self.subscriptions.values():
            _stop(sub.task)
        self.transport.close(code, protocol.close_reason(reason, self.last_seq, message))

    async def wait_closed(self) -> None:
        """Return once the session's transport is gone."""
        await self.transport.wait_closed()


def wanted(sub: Subscription, tweet: StoredTweet) -> bool:
    """Whether a tweet passes the subscription's filters."""
    return sub.filter is None or sub.filter.matches(
        tweet.lang, tweet.author, tweet.has_media, tweet.text, tweet.channels
    )


def _stop(task: asyncio.Task[None] | None) -> None:
    """Cancel a subscription's task, unless it is the one running: that one is the
    caller, and ends by itself (it returns, or sees the session closed at its next step)."""
    if task is not None and task is not asyncio.current_task():
        task.cancel()
