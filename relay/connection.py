"""The WebSocket connection, held to the relay's bounds at the library's level.

websockets answers pings and buffers writes below our handler; this subclass of
its ``ServerConnection`` (``serve(create_connection=...)``) is where the relay
sees every frame and every write, so that nothing a client does escapes the
connection's rate limit and outbound bound. It is also where a TCP connection
first exists, so the bound on sockets per address is kept here, before any byte
is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

from websockets.frames import Frame, Opcode

from relay.http import LogSampler
from relay.http_wire import HttpWireConnection
from relay.session import LAG_ALLOWANCE

if TYPE_CHECKING:
    from relay.auth import Grant
    from relay.metrics import Metrics
    from relay.session import Session

log = logging.getLogger(__name__)

_CONTROL = (Opcode.PING, Opcode.PONG)


def socket_name(address: Any) -> str:
    """A socket address for a log line: ``host:port`` (a tuple from the transport)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


class SocketCount:
    """Open TCP connections per socket address, in any state, against one bound.

    Counted from the accept, before any byte is read: a half-sent request, a plain
    HTTP request and an upgraded stream each hold a file descriptor, and only the
    upgraded ones count against ``max_connections_per_address``. ``bound`` 0 counts
    without refusing (behind a proxy every client has the proxy's address).
    """

    def __init__(self, bound: int, metrics: Metrics) -> None:
        self.bound = bound
        self.metrics = metrics
        self.open: Counter[str] = Counter()
        self._logged = LogSampler(what="connections over the socket bound")

    def add(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and counted) when over the bound."""
        if self.bound and self.open[address] >= self.bound:
            self.metrics.refused.labels("too_many_sockets").inc()
            if self._logged.allow(time.monotonic()):
                log.info(
                    "refused a connection from %s: %d sockets open from that address",
                    address,
                    self.open[address],
                )
            return False
        self.open[address] += 1
        return True

    def remove(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


class AcceptErrorFilter(logging.Filter):
    """Lets through a sample of asyncio's "out of system resource" accept errors.

    Out of file descriptors, asyncio logs a traceback at every retry of the accept
    (each second, for each listening socket) for as long as it lasts: one line per
    minute, and then how many were not logged, says the same.
    """

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self) -> None:
        super().__init__()
        self.sampler = LogSampler(burst=1, window=60.0, what="accept errors (out of resources)")

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.MESSAGE):
            return True
        return self.sampler.allow(time.monotonic())


def sample_accept_errors() -> None:
    """Install :class:`AcceptErrorFilter` on asyncio's logger, once per process."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, AcceptErrorFilter) for f in logger.filters):
        logger.addFilter(AcceptErrorFilter())


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

    Past the bound of :class:`SocketCount` a new connection is aborted as it is
    accepted: no handshake task, no timer, no byte read.
    """

    sockets: ClassVar[SocketCount | None] = None
    """The server's count (set on a subclass per server: ``serve`` takes a class)."""

    @classmethod
    def counted_by(cls, sockets: SocketCount) -> type[StreamConnection]:
        """This class with its connections counted in ``sockets``."""

        class Counted(cls):  # type: ignore[valid-type,misc]
            pass

        Counted.sockets = sockets
        return Counted

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
        self.counted_as: str | None = None
        """The socket address this connection is counted under, while it is."""
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sockets = self.sockets
        if sockets is not None:
            address = socket_name(transport.get_extra_info("peername")).rsplit(":", 1)[0]
            if not sockets.add(address):
                # Before the library sees it: nothing to time out, nothing to close.
                self.refused = True
                cast(asyncio.Transport, transport).abort()
                return
            self.counted_as = address
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return  # the library never saw this connection
        try:
            super().connection_lost(exc)
        finally:
            if self.sockets is not None and self.counted_as is not None:
                self.sockets.remove(self.counted_as)
                self.counted_as = None

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
            and session.transport_backlog() > LAG_ALLOWANCE * session.limit
        ):
            # The library wrote pongs for the client's pings straight to the transport,
            # after our frames; a publish may leave up to its own size there, so only the
            # connection's hard bound applies here (publishes check the send buffer).
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
                "closing %s: a write waited %g s (the client reads nothing)",
                self.session.peer if self.session is not None else socket_name(self.remote_address),
                self.ping_timeout,
            )
            if self.session is not None:
                self.session.metrics.refused.labels("write_timeout").inc()
            raise  # send_context aborts the transport on any error here
