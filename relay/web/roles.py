"""The roles around one connection of the shared port: the host that accepted it (the
listener: its limits, its clock, its registries) and the handler that serves it (the
server). Typed here, by the connection they serve, so that the connection imports
neither the listener that creates it nor the server above it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from websockets.extensions.base import ServerExtensionFactory
    from websockets.http11 import Request

    from relay.obs.metrics import Metrics
    from relay.obs.sampling import LogSampler
    from relay.web.http_wire import Refusal
    from relay.web.sockets import SocketCount

C = TypeVar("C")
"""The connection."""
C_in = TypeVar("C_in", contravariant=True)


class Handler(Protocol[C_in]):
    """What a connection asks of the server (:class:`relay.web.server.StreamServer`)."""

    async def process_request(self, conn: C_in, request: Request) -> bool:
        """Answer the opening request on the connection (``conn.respond``); True instead
        to have it upgraded to a WebSocket."""
        ...

    def opened(self, conn: C_in) -> None: ...

    def malformed(self, conn: C_in, refusal: Refusal) -> None:
        """A request that was not HTTP/1.x was answered (400, 414, 431, 505) at the wire."""
        ...

    def received(self, conn: C_in, message: str | bytes) -> None: ...

    def control(self, conn: C_in) -> bool:
        """A ping or pong came; False when the client is over its rate."""
        ...

    def closed(self, conn: C_in) -> None: ...


class Host(Protocol[C]):
    """What a connection reads from the listener that accepted it: its limits, its timer
    clock, the registries it joins."""

    handler: Handler[C]
    sockets: SocketCount
    metrics: Metrics
    max_size: int
    send_buffer: int
    extensions: list[ServerExtensionFactory] | None
    ping_interval: float
    ping_timeout: float
    open_timeout: float
    keepalive: float
    """Seconds between the keep-alive bytes of a streamed answer (0: none)."""
    ws_logger: logging.Logger
    logged: LogSampler
    failures: LogSampler
    connections: set[C]
    serving: bool

    def now(self) -> float: ...
