"""The WebSocket connection, held to the relay's bounds at the library's level.

websockets answers pings and buffers writes below our handler; this subclass of
its ``ServerConnection`` (``serve(create_connection=...)``) is where the relay
sees every frame and every write, so that nothing a client does escapes the
connection's rate limit and outbound bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from websockets.frames import Frame, Opcode

from relay.http_wire import HttpWireConnection

if TYPE_CHECKING:
    from relay.auth import Grant
    from relay.session import Session

log = logging.getLogger(__name__)

_CONTROL = (Opcode.PING, Opcode.PONG)


class StreamConnection(HttpWireConnection):
    """A connection that carries its own state and holds the library to our bounds.

    It reads plain HTTP requests the way :class:`HttpWireConnection` does (one per
    connection, answered, then closed).

    The grant lives on the connection, so it dies with it whether or not the
    handshake succeeds. The library answers pings by itself, before our handler
    sees anything: so control frames are counted here, as they arrive, and the
    bytes they make us write count in the connection's backlog. A write that
    cannot complete within ``ping_timeout`` (a client that reads nothing) ends
    the connection, keepalive pings included.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grant: Grant | None = None
        self.client = ""
        """The client's address (behind trusted proxies, the one they forwarded)."""
        self.session: Session | None = None
        self.on_control_frame: Callable[[], bool] | None = None
        """Counts a control frame; False when the client is over its rate."""
        self.discarding = False
        """Input is dropped (a flooding client is being cut off)."""

    def data_received(self, data: bytes) -> None:
        session = self.session
        if self.discarding or (
            session is not None and session.closed and session.backlog() > session.limit
        ):
            # A client being cut off gets no more answers (pongs) to pile up; not reading
            # pushes back on its sending until the close times out and aborts.
            self.transport.pause_reading()
            return
        super().data_received(data)
        if (
            session is not None
            and not session.closed
            and session.transport_backlog() > session.limit
        ):
            # The library wrote pongs for the client's pings straight to the transport,
            # past our queue; the writer itself never fills it beyond one frame.
            session.slow_consumer()

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        if (
            isinstance(event, Frame)
            and event.opcode in _CONTROL
            and self.on_control_frame is not None
            and not self.on_control_frame()
        ):
            self.discarding = True

    async def drain(self) -> None:
        if self.ping_timeout is None:
            await super().drain()
            return
        try:
            async with asyncio.timeout(self.ping_timeout):
                await super().drain()
        except TimeoutError:
            log.info(
                "closing %s: a write waited %.0f s (the client reads nothing)",
                self.session.peer if self.session is not None else self.remote_address,
                self.ping_timeout,
            )
            if self.session is not None:
                self.session.metrics.refused.labels("write_timeout").inc()
            raise  # send_context aborts the transport on any error here
