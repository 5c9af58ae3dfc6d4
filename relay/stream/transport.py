"""The transport seam: what the fan-out core asks of a transport kind and of one client's
connection. The hub and the session know these two protocols and no transport; a
WebSocket connection (:mod:`relay.web.connection`, framed by :mod:`relay.web.ws_frames`)
is one implementation, a server-sent events stream (:mod:`relay.web.sse`) another.

A transport kind frames payloads; it never builds them. The hub builds each payload
once (:mod:`relay.core.protocol`) and asks each kind with a listener for its frames once
per publish, shared by every session of that kind (:mod:`relay.stream.payloads`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from relay.store import StoredTweet


class Framing(Protocol):
    """One transport kind's wire form of the relay's payloads: pure, bytes in, bytes out.

    Usually one object per kind, shared by all its connections; a connection that frames
    differently (a server-sent events stream of several channels lists each tweet's
    channels) has its own, and the hub then frames a publish for it alone."""

    @property
    def name(self) -> str:
        """The transport kind (``websocket``, ``sse``): the label of its metrics."""
        ...

    def message(self, payload: bytes) -> bytes:
        """One reply or announcement (``subscribed``, ``error``, ``deleted``, ``stats``...)
        as one complete frame."""
        ...

    def tweets(
        self,
        channel: str,
        epoch: str,
        tweets: Sequence[StoredTweet],
        payloads: Sequence[bytes],
    ) -> list[bytes]:
        """The complete frame of each ``tweet`` payload of one channel's publish, in order
        (``tweets`` are theirs: seqs in ``epoch``, the channels each is on). Asked once
        per publish, shared by every session of this framing."""
        ...

    def page(self, channel: str, epoch: str, rows: Iterable[tuple[int, bytes]]) -> bytes:
        """A catch-up page: the ``tweet`` frame of ``channel`` for each ``(seq, stored
        object)`` row, end to end in one bytes object (built where the store reads it, off
        the event loop: pure, and it must not keep ``rows``)."""
        ...


class Transport(Protocol):
    """Where one session's bytes go: a client's connection, of some transport kind.

    Written only on the event loop, never awaited on the hot path: ``write`` takes whole
    frames at once and the transport's own buffer is the session's send buffer.
    """

    @property
    def framing(self) -> Framing:
        """The kind's framing, in which everything written to this transport is."""
        ...

    def write(self, data: bytes) -> bool:
        """Write complete frames of :attr:`framing`, one or more end to end, as one write.
        False, and nothing written, once the connection takes no more (closing or gone)."""
        ...

    def backlog(self) -> int:
        """Bytes written and not yet taken by the client (0 once gone)."""
        ...

    def pushing_back(self) -> bool:
        """The client has not taken what it was sent and the transport's own buffer is
        past its high-water mark: more written now would only queue behind it. Once it
        drains, the transport tells its session (:meth:`Session.drained
        <relay.stream.session.Session.drained>`)."""
        ...

    async def drain(self) -> None:
        """Return once the transport takes writes again: at once unless it pushed back.
        Raises when the client took nothing for too long; the connection is cut then."""
        ...

    def close(self, code: int, reason: str) -> None:
        """End the connection with a close code (:mod:`relay.errors`) and a reason, after
        what was written; a client that does not take it within the close timeout is cut.
        :data:`~relay.errors.CLOSE_ABNORMAL` cuts at once, with nothing more sent. Once
        closing or gone, nothing happens."""
        ...

    async def wait_closed(self) -> None:
        """Return once the connection is gone."""
        ...
