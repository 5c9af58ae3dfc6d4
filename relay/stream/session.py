"""One client connection's outbound side: frames written straight to its transport.

No task per connection and no coroutine per frame: the hub gives a session
everything one publish has for it (ready WebSocket frames, the same bytes for
every client) and the session writes them to the socket in one write, or in a
few pieces of at most a quarter of ``send_buffer`` when the publish is large
(the hub interleaves those pieces with other clients' and yields between turns).

The transport's own write buffer is the send buffer. A client is slow when it
has not taken what it was sent before: more than ``send_buffer`` bytes from
earlier publishes still unsent when the next publish for it comes closes it
with 4008 and its last seq, so it can resume from the store, and no other
client waits for it (invariant 4). The buffer is measured before this
publish's bytes are written, so one large publish never makes a client slow by
itself; ``LAG_ALLOWANCE`` buffers' worth bounds what one connection can hold
while the relay itself lags behind.

A connection that negotiated an extension (permessage-deflate, off by default)
cannot take shared bytes: its frames go through websockets' own sans-I/O send
path, still synchronously, still one publish at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from websockets.protocol import Protocol as WsProtocol
from websockets.protocol import State

from relay.core import protocol
from relay.errors import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_SLOW_CONSUMER, SessionClosed

if TYPE_CHECKING:
    from relay.core.auth import Grant, TokenBucket
    from relay.core.filters import TweetFilter
    from relay.obs.metrics import Metrics
    from relay.store import StoredTweet

log = logging.getLogger(__name__)

LAG_ALLOWANCE = 8
"""Send buffers' worth a connection may hold (written and pending) while the relay lags."""

LIBRARY_WRITE_LIMIT = 64 * 1024
"""The transport's default high-water mark (asyncio's), above which it pauses our writes."""

CLOSE_TIMEOUT = 2.0
"""Seconds a client gets to take the close frame before the connection is cut."""
ROOM_POLL = 0.005
"""Seconds between backlog checks of a waiting catch-up when the transport is not paused."""

Frame = tuple[bytes, int]
"""A complete WebSocket frame ready for the wire and the seq it carries (0: a reply)."""


class Connection(Protocol):
    """What a session needs of a WebSocket connection."""

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    async def drain(self) -> None: ...

    def send_data(self) -> None: ...

    @property
    def protocol(self) -> WsProtocol: ...

    @property
    def transport(self) -> asyncio.Transport: ...


class ChannelBatch:
    """One channel's frames of one publish, in seq order, shared by every listener."""

    __slots__ = ("frames", "seqs", "size", "tweets")

    def __init__(self) -> None:
        self.tweets: list[StoredTweet] = []
        self.frames: list[bytes] = []
        self.seqs: list[int] = []
        self.size = 0

    def add(self, tweet: StoredTweet, frame: bytes) -> None:
        self.tweets.append(tweet)
        self.frames.append(frame)
        self.seqs.append(tweet.seq)
        self.size += len(frame)


@dataclass(eq=False, slots=True)
class Subscription:
    """A session's interest in one channel; held frames wait while it catches up."""

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
    replied: bool = True
    """``subscribed`` went out (a resume sends it once the store has counted)."""
    known: bool = True
    """The channel is one the relay knows (False: a rule no tweet matched yet, the rule
    set still open)."""


class Session:
    __slots__ = (
        "_catch_up_turn",
        "_closing",
        "_held",
        "_out",
        "_out_bytes",
        "_out_seq",
        "address",
        "bucket",
        "closed",
        "conn",
        "counted_subject",
        "expiry",
        "grant",
        "last_seq",
        "limit",
        "metrics",
        "peer",
        "piece",
        "refreshed",
        "scheduled",
        "sent_bytes",
        "started",
        "subscriptions",
        "writes",
    )

    def __init__(
        self, conn: Connection, *, send_buffer: int, metrics: Metrics, peer: str = ""
    ) -> None:
        self.conn = conn
        self.peer = peer
        self.limit = send_buffer
        self.piece = max(1, send_buffer // 4)
        """Most bytes of one write of a publish's frames (at least one frame)."""
        self.metrics = metrics
        self.subscriptions: dict[str, Subscription] = {}
        self.last_seq = 0
        self.closed = False
        self.writes = 0
        """Writes of frames to this connection's transport (coalesced: one per publish)."""
        self.sent_bytes = 0
        """Bytes of frames written (before compression), for the access log."""
        self.started = time.monotonic()
        # The server's per-connection state: the client's address, the token's grant,
        # the frame rate, the subject it is counted under, the token's expiry watch.
        self.address = ""
        self.grant: Grant | None = None
        self.bucket: TokenBucket | None = None
        self.counted_subject: str | None = None
        self.refreshed: asyncio.Event | None = None
        self.expiry: asyncio.Task[None] | None = None
        self._catch_up_turn: asyncio.Lock | None = None
        self.scheduled = False
        """The hub has this session in its list of sessions with frames to write."""
        self._out: list[bytes] = []
        self._out_seq: list[int] = []
        self._out_bytes = 0
        self._held = 0
        """Bytes of live frames held for subscriptions still catching up."""
        self._closing: asyncio.Task[None] | None = None
        low = self.limit // 4
        if low < LIBRARY_WRITE_LIMIT:
            # Not paused must mean "at most a quarter of the send buffer unsent", so that a
            # waiting catch-up can sleep in drain() instead of polling.
            with contextlib.suppress(Exception):
                conn.transport.set_write_buffer_limits(high=max(1, low))

    @property
    def catch_up_turn(self) -> asyncio.Lock:
        """One catch-up at a time per connection; the others wait their turn in order."""
        if self._catch_up_turn is None:
            self._catch_up_turn = asyncio.Lock()
        return self._catch_up_turn

    @property
    def queued_bytes(self) -> int:
        """Bytes handed to this session and not yet written to its transport."""
        return self._out_bytes

    @property
    def pending(self) -> bool:
        return bool(self._out)

    def backlog(self) -> int:
        """Bytes sent to this client and not yet taken: ours and the transport's."""
        return self._out_bytes + self.transport_backlog()

    def transport_backlog(self) -> int:
        try:
            return self.conn.transport.get_write_buffer_size()
        except Exception:  # a transport already gone holds nothing
            return 0

    def push(self, frame: bytes, seq: int = 0) -> None:
        """Send one reply now (after anything still pending, so order holds)."""
        self.send_now(((protocol.text_frame(frame), seq),))

    def take_batch(self, channel: str, batch: ChannelBatch) -> ChannelBatch | None:
        """What of a channel's publish goes out to this client now (the rest is held or
        filtered out): the shared batch itself when the subscription is live and takes all."""
        if self.closed:
            return None
        sub = self.subscriptions.get(channel)
        if sub is None:
            return None
        if sub.live and sub.filter is None:
            return batch
        mine = ChannelBatch()
        for tweet, frame in zip(batch.tweets, batch.frames, strict=True):
            if self.take(channel, tweet, frame):
                mine.add(tweet, frame)
        return mine if mine.frames else None

    def deliver_batch(self, batches: list[ChannelBatch]) -> bool:
        """Take what one publish has for this client; True when it waits to be written.

        The transport's buffer before this publish decides: past the limit the client
        has not taken what earlier publishes sent, and it is slow (4008).
        """
        if self.closed:
            return False
        buffered = self.transport_backlog()
        if buffered > self.limit or buffered + self._out_bytes > LAG_ALLOWANCE * self.limit:
            self.slow_consumer()
            return False
        if len(batches) == 1:
            (batch,) = batches
            self._out.extend(batch.frames)
            self._out_seq.extend(batch.seqs)
            self._out_bytes += batch.size
        else:
            # Several channels: their frames interleaved back into seq order.
            merged = sorted(
                (pair for b in batches for pair in zip(b.frames, b.seqs, strict=True)),
                key=lambda pair: pair[1],
            )
            self._add(merged)
        return bool(self._out)

    def _add(self, frames: Iterable[Frame]) -> None:
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
            self.metrics.frames_sent.inc(count)
            self.metrics.stream_writes.inc()
            return count
        return 0

    def send_page(self, page: bytes, count: int, last: int) -> None:
        """Write ``count`` complete frames put end to end in ``page`` (a catch-up page,
        seqs up to ``last``) after what is pending, in one write."""
        if self.closed:
            return
        self._out.append(page)
        self._out_seq.append(last)
        self._out_bytes += len(page)
        written = len(self._out)
        if self._write(written):
            self.metrics.frames_sent.inc(count + written - 1)
            self.metrics.stream_writes.inc()

    def flush_piece(self) -> tuple[int, int]:
        """Write the next piece of pending frames (at most ``piece`` bytes, at least one
        frame) in one write: how many frames and bytes went out."""
        if self.closed or not self._out:
            return 0, 0
        out, size, count = self._out, 0, 0
        for frame in out:
            if count and size + len(frame) > self.piece:
                break
            size += len(frame)
            count += 1
        return (count, size) if self._write(count) else (0, 0)

    def _write(self, count: int) -> bool:
        """Write the first ``count`` pending frames to the transport, as one write."""
        frames = self._out[:count]
        last = max(self._out_seq[:count])
        del self._out[:count]
        del self._out_seq[:count]
        size = sum(map(len, frames))
        self._out_bytes -= size
        conn = self.conn
        ws = conn.protocol
        try:
            if ws.state is not State.OPEN:
                # The library is closing this connection: the handler will clean up.
                self._drop()
                return False
            if ws.expect_continuation_frame:  # pragma: no cover - the relay never fragments
                raise RuntimeError("a fragmented message is being sent")
            if ws.extensions:
                # Compressed per connection: the library's own framing, still synchronous.
                for frame in frames:  # a catch-up page holds several frames
                    for payload in protocol.frame_payloads(frame):
                        ws.send_text(payload)
                conn.send_data()
            else:
                # Whole frames only: the library's own writes (pongs, pings, close) land
                # between ours, never inside one.
                conn.transport.write(frames[0] if count == 1 else b"".join(frames))
        except Exception as exc:  # the socket went away; the handler notices and cleans up
            log.debug("writing to %s failed: %s", self.peer, exc)
            self._drop()
            return False
        self.writes += 1
        self.sent_bytes += size
        if last > self.last_seq:
            self.last_seq = last
        return True

    def _drop(self) -> None:
        self.closed = True
        self._out.clear()
        self._out_seq.clear()
        self._out_bytes = 0

    async def wait_room(self) -> None:
        """Wait until at most a quarter of the send buffer is unsent: the client reads."""
        low = self.limit // 4
        while True:
            if self.closed:
                raise SessionClosed
            if self._out:
                self.send_now(())
                continue
            if self.transport_backlog() <= low:
                return
            if getattr(self.conn, "paused", True):
                try:
                    # Wakes when the transport drains below its low-water mark; bounded by
                    # ping_timeout on our connections (a client that reads nothing).
                    await self.conn.drain()
                except Exception:
                    self._drop()
                    self.conn.transport.abort()
                    raise SessionClosed from None
            else:
                await asyncio.sleep(ROOM_POLL)

    def take(self, channel: str, tweet: StoredTweet, frame: bytes) -> bool:
        """A live tweet of a channel: True if it goes out now; held while catching up."""
        if self.closed:
            return False
        sub = self.subscriptions.get(channel)
        if sub is None or not wanted(sub, tweet):
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

    def slow_consumer(self) -> None:
        if self.closed:
            return
        log.warning(
            "closing slow consumer %s: %d bytes unsent, last seq %d",
            self.peer,
            self.backlog(),
            self.last_seq,
        )
        self.metrics.slow_consumers.inc()
        self.abandon(CLOSE_SLOW_CONSUMER, "slow_consumer")

    def failed(self) -> None:
        """Delivering to this client raised: close it (1011) and let it resume."""
        if not self.closed:
            self.abandon(CLOSE_INTERNAL_ERROR, "internal_error")

    def abandon(self, code: int, reason: str) -> None:
        """Close with ``code`` and the last seq, from synchronous code; drop what is pending."""
        if self.closed:
            return
        self._drop()
        self._closing = asyncio.create_task(self._close(code, reason, CLOSE_TIMEOUT))
        self._closing.add_done_callback(_ignore_result)

    async def wait_abandoned(self) -> None:
        """Wait for a close begun by :meth:`abandon`, so that its code is the one sent."""
        if self._closing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._closing)

    async def close_now(self, code: int, reason: str, message: str = "") -> None:
        """Close at once (policy, expiry): what is pending is dropped."""
        self._drop()
        await self._close(code, reason, CLOSE_TIMEOUT, message)

    async def _close(self, code: int, reason: str, timeout: float, message: str = "") -> None:
        """Close with a code and the last seq; abort if the client does not take the frame."""
        try:
            await asyncio.wait_for(
                self.conn.close(code, protocol.close_reason(reason, self.last_seq, message)),
                timeout,
            )
        except Exception:
            # A client that reads nothing never lets the close frame out: cut it off.
            self.conn.transport.abort()

    async def shutdown(self, timeout: float) -> None:
        """Write what is pending, then close with 1001 and the last seq (within ``timeout``)."""
        if self.closed:
            return
        self.send_now(())
        self.closed = True
        for sub in self.subscriptions.values():
            if sub.task is not None:
                sub.task.cancel()
        await self._close(CLOSE_GOING_AWAY, "shutdown", timeout)

    def stop(self) -> None:
        """The connection is gone: drop what is pending and stop every catch-up."""
        self._drop()
        for sub in self.subscriptions.values():
            if sub.task is not None:
                sub.task.cancel()


def wanted(sub: Subscription, tweet: StoredTweet) -> bool:
    """Whether a tweet passes the subscription's filters."""
    return sub.filter is None or sub.filter.matches(
        tweet.lang, tweet.author, tweet.has_media, tweet.text
    )


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
