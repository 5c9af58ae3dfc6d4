"""One client connection's outbound side: a bounded send buffer and its writer.

The hub never awaits a client. It hands a session everything one publish has for
it in one call and returns; the session's writer task moves the frames to the
socket, one at a time, at the client's pace. What is still unsent (our queue
plus the transport's write buffer, pongs included) is the client's backlog. A
client is slow when it has not taken what it was sent before: a backlog past
``send_buffer`` when the next publish for it comes closes it with 4008 and its
last seq, so it can resume from the store, and no other client waits for it
(invariant 4). One large publish never makes a client slow by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from relay import protocol
from relay.errors import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_SLOW_CONSUMER

if TYPE_CHECKING:
    from relay.filters import TweetFilter
    from relay.metrics import Metrics
    from relay.store import StoredTweet

log = logging.getLogger(__name__)

LAG_ALLOWANCE = 8
"""Send buffers' worth of frames a client may wait for while the relay itself lags."""

FRAMES_PER_TURN = 32
"""Frames a writer sends before it lets the other tasks of the loop run."""

CLOSE_TIMEOUT = 2.0
"""Seconds a client gets to take the close frame before the connection is cut."""
ROOM_POLL = 0.25
"""Seconds between backlog checks of a waiting catch-up when the writer is idle."""


class Connection(Protocol):
    """What a session needs of a WebSocket connection."""

    async def send(self, message: bytes, *, text: bool | None = None) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    @property
    def transport(self) -> asyncio.Transport: ...


class SessionClosed(Exception):
    """The session stopped accepting frames (slow consumer, shutdown, gone)."""


@dataclass(eq=False)
class Subscription:
    """A session's interest in one channel; held frames wait while it catches up."""

    channel: str
    filter: TweetFilter | None = None
    requested: Any = None
    """The filters the client asked for at subscribe time (re-bounded on refresh)."""
    live: bool = False
    held: list[tuple[bytes, int]] = field(default_factory=list)
    held_bytes: int = 0
    overflowed: bool = False
    task: asyncio.Task[None] | None = None


class Session:
    def __init__(
        self, conn: Connection, *, send_buffer: int, metrics: Metrics, peer: str = ""
    ) -> None:
        self.conn = conn
        self.peer = peer
        self.limit = send_buffer
        self.metrics = metrics
        self.subscriptions: dict[str, Subscription] = {}
        self.last_seq = 0
        self.closed = False
        self.state: dict[str, Any] = {}
        """Per-connection data of other layers (the token's grant, rate limits)."""
        self.catch_up_turn = asyncio.Lock()
        """One catch-up at a time per connection; the others wait their turn in order."""
        self._queue: deque[tuple[bytes, int]] = deque()
        self._queued = 0
        self._held = 0
        """Bytes of live frames held for subscriptions still catching up."""
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._in_send = False
        """The writer is blocked in a send: waiting for the client to take bytes."""
        self._progress = True
        """A frame went out since the last publish was queued."""

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def backlog(self) -> int:
        """Bytes sent to this client and not yet taken: our queue and the transport's."""
        return self._queued + self.transport_backlog()

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"writer {self.peer}")

    def push(self, frame: bytes, seq: int = 0) -> None:
        """Queue one reply. Replies are small and come at the rate the client's ops may."""
        self._enqueue(((frame, seq),))

    def transport_backlog(self) -> int:
        try:
            return self.conn.transport.get_write_buffer_size()
        except Exception:  # a transport already gone holds nothing
            return 0

    def deliver_batch(self, frames: Iterable[tuple[bytes, int]]) -> None:
        """Queue what one publish has for this client, after checking what came before.

        The backlog from before this call decides: past the limit the client is
        slow (4008). The new frames are queued whatever their size; the writer
        sends them one by one.
        """
        if self.closed:
            return
        # Slow: the writer waits on the client's socket and not one frame went out since
        # the previous publish, with more than the limit unsent. A backlog that still moves
        # is a burst or the relay's own lag: tolerated up to LAG_ALLOWANCE limits, which
        # bounds what one connection can hold.
        backlog = self.backlog()
        stuck = self._in_send and not self._progress
        if backlog > LAG_ALLOWANCE * self.limit or (backlog > self.limit and stuck):
            self.slow_consumer()
            return
        self._progress = False
        self._enqueue(frames)

    def _enqueue(self, frames: Iterable[tuple[bytes, int]]) -> None:
        if self.closed:
            return
        for frame, seq in frames:
            self._queue.append((frame, seq))
            self._queued += len(frame)
        self._wakeup.set()

    def enqueue_paced(self, frames: Iterable[tuple[bytes, int]]) -> None:
        """Queue frames read from the store after :meth:`wait_room` made room for them."""
        self._enqueue(frames)

    async def wait_room(self) -> None:
        """Wait until the backlog is at most half the limit: the client is reading."""
        while True:
            if self.closed:
                raise SessionClosed
            if self.backlog() <= self.limit // 2:
                return
            self._room.clear()
            # The writer wakes us after each frame; a poll covers a transport that drains
            # while the writer is idle (nothing of ours queued, pongs in the buffer).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), ROOM_POLL)

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

    def release_held(self, sub: Subscription) -> list[tuple[bytes, int]]:
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
        """Close with ``code`` and the last seq, from synchronous code; drop what is queued."""
        if self.closed:
            return
        self.closed = True
        self._queue.clear()
        self._queued = 0
        self._room.set()
        self._wakeup.set()
        if self._writer is not None:
            self._writer.cancel()
        self._closing = asyncio.create_task(self._close(code, reason, CLOSE_TIMEOUT))
        self._closing.add_done_callback(_ignore_result)

    async def wait_abandoned(self) -> None:
        """Wait for a close begun by :meth:`abandon`, so that its code is the one sent."""
        if self._closing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._closing)

    async def close_now(self, code: int, reason: str) -> None:
        """Close at once (policy, expiry): what is queued is dropped."""
        self.closed = True
        self._queue.clear()
        self._queued = 0
        self._room.set()
        if self._writer is not None:
            self._writer.cancel()
        await self._close(code, reason, CLOSE_TIMEOUT)

    async def _close(self, code: int, reason: str, timeout: float) -> None:
        """Close with a code and the last seq; abort if the client does not take the frame."""
        try:
            await asyncio.wait_for(
                self.conn.close(code, protocol.close_reason(reason, self.last_seq)), timeout
            )
        except Exception:
            # A client that reads nothing never lets the close frame out: cut it off.
            self.conn.transport.abort()

    async def shutdown(self, timeout: float) -> None:
        """Send what is queued (within ``timeout``), then close with 1001 and the last seq."""
        if self.closed:
            return
        self.closed = True
        self._room.set()
        for sub in self.subscriptions.values():
            if sub.task is not None:
                sub.task.cancel()
        self._wakeup.set()
        if self._writer is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._writer), timeout)
            self._writer.cancel()
        await self._close(CLOSE_GOING_AWAY, "shutdown", timeout)

    def stop(self) -> None:
        """The connection is gone: stop the writer and every catch-up."""
        self.closed = True
        self._room.set()
        for sub in self.subscriptions.values():
            if sub.task is not None:
                sub.task.cancel()
        if self._writer is not None:
            self._writer.cancel()

    async def _write_loop(self) -> None:
        sent_this_turn = 0
        try:
            while True:
                if not self._queue:
                    if self.closed:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    sent_this_turn = 0
                    continue
                # One frame at a time: a large publish goes out in pieces, and the
                # connection's drain (bounded by ping_timeout) paces us.
                frame, seq = self._queue.popleft()
                self._queued -= len(frame)
                self._in_send = True
                try:
                    await self.conn.send(frame, text=True)
                finally:
                    self._in_send = False
                self._progress = True
                self._room.set()
                self.metrics.frames_sent.inc()
                if seq > self.last_seq:
                    self.last_seq = seq
                sent_this_turn += 1
                if sent_this_turn >= FRAMES_PER_TURN:
                    # A send that needs no drain never suspends: without this, one fast
                    # client's backlog held the event loop for up to 2 s under the soak.
                    sent_this_turn = 0
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away; the handler notices and cleans up
            log.debug("writer for %s stopped: %s", self.peer, exc)
            self.closed = True
            self._room.set()


def wanted(sub: Subscription, tweet: StoredTweet) -> bool:
    """Whether a tweet passes the subscription's filters."""
    return sub.filter is None or sub.filter.matches(
        tweet.lang, tweet.author, tweet.has_media, tweet.text
    )


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
