"""One client connection's outbound side: a bounded send buffer and its writer.

The hub never awaits a client. It appends frames to the session's buffer and
returns; the session's writer task moves them to the socket at the client's
pace. A buffer past its limit means the client cannot keep up: it is closed
with 4008 and its last seq, so it can resume from the store, and no other
client waits for it (invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from relay import protocol
from relay.errors import CLOSE_GOING_AWAY, CLOSE_SLOW_CONSUMER

if TYPE_CHECKING:
    from relay.filters import TweetFilter
    from relay.metrics import Metrics
    from relay.store import StoredTweet

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0
"""Seconds a client gets to take the close frame before the connection is cut."""


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
    live: bool = False
    held: list[tuple[int, bytes]] = field(default_factory=list)
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
        self._queue: deque[tuple[bytes, int]] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._writer: asyncio.Task[None] | None = None

    @property
    def queued_bytes(self) -> int:
        return self._queued

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"writer {self.peer}")

    def push(self, frame: bytes, seq: int = 0) -> None:
        """Queue a frame; close the session as a slow consumer if that overflows the buffer."""
        if self.closed:
            return
        self._queue.append((frame, seq))
        self._queued += len(frame)
        self._wakeup.set()
        if self._queued > self.limit:
            self._drained.clear()
            self.slow_consumer()
        elif self._queued > self.limit // 2:
            self._drained.clear()

    async def push_paced(self, frame: bytes, seq: int = 0) -> None:
        """Queue a frame from the store, waiting for room instead of overflowing."""
        while self._queued > self.limit // 2:
            if self.closed:
                raise SessionClosed
            await self._drained.wait()
        if self.closed:
            raise SessionClosed
        self.push(frame, seq)

    def deliver(self, channel: str, tweet: StoredTweet, frame: bytes) -> None:
        """A live tweet of a channel: send it, or hold it while the channel catches up."""
        sub = self.subscriptions.get(channel)
        if sub is None or not wanted(sub, tweet):
            return
        seq = tweet.seq
        if sub.live:
            self.push(frame, seq)
            return
        sub.held.append((seq, frame))
        sub.held_bytes += len(frame)
        if sub.held_bytes > self.limit:
            # Everything held is in the store; drop it and read it from there instead.
            sub.held.clear()
            sub.held_bytes = 0
            sub.overflowed = True

    def slow_consumer(self) -> None:
        log.warning(
            "closing slow consumer %s: %d bytes queued, last seq %d",
            self.peer,
            self._queued,
            self.last_seq,
        )
        self.metrics.slow_consumers.inc()
        self._abandon(CLOSE_SLOW_CONSUMER, "slow_consumer")

    def _abandon(self, code: int, reason: str) -> None:
        self.closed = True
        self._queue.clear()
        self._queued = 0
        self._drained.set()
        self._wakeup.set()
        if self._writer is not None:
            self._writer.cancel()
        closing = asyncio.create_task(self._close(code, reason, CLOSE_TIMEOUT))
        closing.add_done_callback(_ignore_result)

    async def close_now(self, code: int, reason: str) -> None:
        """Close at once (policy, expiry): what is queued is dropped."""
        self.closed = True
        self._queue.clear()
        self._queued = 0
        self._drained.set()
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
        self._drained.set()
        for sub in self.subscriptions.values():
            if sub.task is not None:
                sub.task.cancel()
        if self._writer is not None:
            self._writer.cancel()

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self.closed:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                frame, seq = self._queue.popleft()
                self._queued -= len(frame)
                if self._queued <= self.limit // 2:
                    self._drained.set()
                await self.conn.send(frame, text=True)
                self.metrics.frames_sent.inc()
                if seq > self.last_seq:
                    self.last_seq = seq
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away; the handler notices and cleans up
            log.debug("writer for %s stopped: %s", self.peer, exc)
            self.closed = True
            self._drained.set()


def wanted(sub: Subscription, tweet: StoredTweet) -> bool:
    """Whether a tweet passes the subscription's filters."""
    return sub.filter is None or sub.filter.matches(
        tweet.lang, tweet.author, tweet.has_media, tweet.text
    )


def _ignore_result(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
