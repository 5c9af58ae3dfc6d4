"""One WebSocket connection: an asyncio protocol over websockets' sans-I/O protocol.

websockets' asyncio layer runs a handler task and a keepalive task per connection,
with their buffers; at 10,000 idle subscribers that was most of the relay's memory.
Here a connection is one small object with slots over the library's
``ServerProtocol`` (which parses, frames, negotiates extensions and answers pings):
no task while nothing is queued, and the timers of every connection (the opening
handshake's, the close's, keepalive pings, stalled writes) are kept by one shared
sweep in :mod:`relay.web.listener`.

It is where the relay sees every byte, frame and write, so nothing a client does
escapes the connection's bounds: the socket count per address (from the accept,
before any byte is read), the frame rate (control frames included), the largest
frame, and the outbound bound (the transport's write buffer, see
:mod:`relay.stream.session`). The server (:class:`Handler`) sees the opening request,
whole messages and the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol, cast

from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode
from websockets.http11 import SERVER, Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay.obs.sampling import LogSampler
from relay.stream.session import CLOSE_TIMEOUT, LAG_ALLOWANCE
from relay.web import http_wire

if TYPE_CHECKING:
    from websockets.extensions.base import ServerExtensionFactory

    from relay.core.auth import Grant
    from relay.obs.metrics import Metrics
    from relay.stream.session import Session

log = logging.getLogger(__name__)


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


class Handler(Protocol):
    """What a connection asks of the server (:class:`relay.web.server.StreamServer`)."""

    async def process_request(
        self, conn: StreamConnection, request: Request
    ) -> Response | None: ...

    def opened(self, conn: StreamConnection) -> None: ...

    def malformed(self, conn: StreamConnection, refusal: http_wire.Refusal) -> None:
        """A request that was not HTTP/1.x was answered (400, 414, 431, 505) at the wire."""
        ...

    def received(self, conn: StreamConnection, message: str | bytes) -> None: ...

    def control(self, conn: StreamConnection) -> bool:
        """A ping or pong came; False when the client is over its rate."""
        ...

    def closed(self, conn: StreamConnection) -> None: ...


_NEVER = float("inf")
_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
_CONTROL = (Opcode.PING, Opcode.PONG)


class Host(Protocol):
    """What a connection reads from the listener that accepted it (its limits, its timer
    clock, the registries it joins), so that the connection does not import the listener
    that creates it."""

    handler: Handler
    sockets: SocketCount
    metrics: Metrics
    max_size: int
    extensions: list[ServerExtensionFactory] | None
    ping_interval: float
    ping_timeout: float
    open_timeout: float
    ws_logger: logging.Logger
    logged: LogSampler
    failures: LogSampler
    connections: set[StreamConnection]
    serving: bool

    def now(self) -> float: ...


class StreamConnection(asyncio.Protocol):
    """One TCP connection: its opening request, then WebSocket frames or one HTTP answer.

    The library's ``ServerProtocol`` does the parsing and framing; this object moves
    bytes between it and the transport and keeps the deadlines that the listener's
    sweep checks (:meth:`tick`). Nothing runs for it while it is idle.
    """

    __slots__ = (
        "_drained",
        "_early",
        "_handshake",
        "_lost",
        "_parts",
        "_text",
        "client",
        "counted_as",
        "deadline",
        "discarding",
        "due",
        "grant",
        "latency",
        "listener",
        "opened",
        "paused",
        "paused_at",
        "ping_at",
        "pong_due",
        "protocol",
        "remote_address",
        "session",
        "transport",
        "unsent",
    )

    protocol: ServerProtocol
    transport: asyncio.Transport

    def __init__(self, listener: Host) -> None:
        self.listener = listener
        self.remote_address: Any = None
        self.counted_as: str | None = None
        """The socket address this connection is counted under, while it is open."""
        self.client = ""
        """The client's address (behind trusted proxies, the one they forwarded)."""
        self.grant: Grant | None = None
        self.session: Session | None = None
        self.opened = False
        """The upgrade succeeded and the server has not yet seen the end."""
        self.discarding = False
        """Input is dropped (a flooding client is being cut off)."""
        self.paused = False
        self.paused_at = 0.0
        self.unsent = 0
        """Bytes of an answer still unsent at its close deadline (to tell they move)."""
        self.deadline = 0.0
        """Loop time past which the connection is cut (opening or closing); 0: none."""
        self.due = _NEVER
        """The earliest loop time at which :meth:`tick` has something to do."""
        self.ping_at = 0.0
        self.pong_due = 0.0
        self.latency = 0.0
        """Seconds of the last keepalive ping's round trip (0: none yet)."""
        self._text = False
        self._parts: list[bytes] | None = None
        self._early: list[Frame] | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._lost: asyncio.Future[None] | None = None

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        listener = self.listener
        self.remote_address = transport.get_extra_info("peername")
        address = socket_name(self.remote_address).rsplit(":", 1)[0]
        if not listener.sockets.add(address):
            # Before anything else: nothing to time out, nothing to close.
            self.transport.abort()
            return
        self.counted_as = address
        listener.connections.add(self)
        self._close_by(listener.now() + listener.open_timeout)
        self.protocol = ServerProtocol(
            extensions=listener.extensions, max_size=listener.max_size, logger=listener.ws_logger
        )
        http_wire.install(self.protocol, self._malformed)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if self.discarding or (
            session is not None and session.closed and session.backlog() > session.limit
        ):
            # A client being cut off gets no more answers (pongs) to pile up; not reading
            # pushes back on its sending until the close times out and aborts.
            self.transport.pause_reading()
            return
        self.protocol.receive_data(data)
        self._step()
        session = self.session
        if (
            session is not None
            and not session.closed
            and session.transport_backlog() > LAG_ALLOWANCE * session.limit
        ):
            # Pongs for the client's pings go straight to the transport, after our frames;
            # a publish may leave up to its own size there, so only the connection's hard
            # bound applies here (publishes check the send buffer).
            session.slow_consumer()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._step()
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        address = self.counted_as
        if address is None:
            return  # refused at the accept
        self.counted_as = None
        listener = self.listener
        listener.sockets.remove(address)
        listener.connections.discard(self)
        self.protocol.receive_eof()  # idempotent; the protocol's state becomes CLOSED
        self.paused = False
        for waiter in (self._drained, self._lost):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._drained = self._lost = None
        if self.opened:
            self.opened = False
            listener.handler.closed(self)

    def pause_writing(self) -> None:
        self.paused = True
        listener = self.listener
        self.paused_at = listener.now()
        if listener.ping_timeout:
            self.due = min(self.due, self.paused_at + listener.ping_timeout)

    def resume_writing(self) -> None:
        self.paused = False
        waiter, self._drained = self._drained, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what the session and the server use --------------------------------------

    @property
    def lost(self) -> bool:
        return self.counted_as is None

    def send_data(self) -> None:
        """Write what the protocol has to send (frames, a close, a half-close)."""
        transport = self.transport
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                with contextlib.suppress(Exception):  # already closing: nothing to half-close
                    transport.write_eof()
            else:  # pragma: no cover - TLS is the proxy's business
                transport.close()

    async def drain(self) -> None:
        """Wait until the transport takes writes again; at most ``ping_timeout``."""
        if not self.paused or self.lost:
            return
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        timeout = self.listener.ping_timeout or None
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._drained)
        except TimeoutError:
            self.write_timed_out()
            raise

    def begin_close(self, code: int, reason: str = "") -> None:
        """Send a close frame now; the client has ``CLOSE_TIMEOUT`` to answer it."""
        if self.lost:
            return
        ws = self.protocol
        if ws.state is State.OPEN:
            try:
                ws.send_close(code, reason)
            except InvalidState:  # pragma: no cover - checked just above
                return
            self.send_data()
            self._close_by(self.listener.now() + CLOSE_TIMEOUT)
        elif ws.state is State.CONNECTING:
            self.transport.abort()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and wait until the connection is gone."""
        self.begin_close(code, reason)
        await self.wait_lost()

    async def wait_lost(self) -> None:
        if self.lost:
            return
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._lost)

    def write_timed_out(self) -> None:
        """A write could not complete within ``ping_timeout``: the client reads nothing."""
        listener = self.listener
        listener.metrics.refused.labels("write_timeout").inc()
        if listener.logged.allow(time.monotonic()):
            log.info(
                "closing %s: a write waited %g s (the client reads nothing)",
                socket_name(self.remote_address),
                listener.ping_timeout,
            )
        self.transport.abort()

    def tick(self, now: float) -> None:
        """The listener's sweep, once ``due`` is past: deadlines, keepalive pings, writes
        that do not move."""
        self._check(now)
        self._reschedule()

    def _check(self, now: float) -> None:
        listener = self.listener
        if self.paused and listener.ping_timeout and now - self.paused_at >= listener.ping_timeout:
            self.write_timed_out()  # the client took too little to unpause us: reads nothing
            return
        if self.deadline and now >= self.deadline:
            unsent = self.transport.get_write_buffer_size()
            if unsent and (not self.unsent or unsent < self.unsent):
                # An answer is still going out: the client has the close timeout from when
                # it has everything, as long as it takes some of it each close timeout.
                self.unsent = unsent
                self.deadline = now + CLOSE_TIMEOUT
                return
            if unsent:
                self.write_timed_out()
                return
            ws = self.protocol
            if not self.opened and ws.state is State.CONNECTING and not ws.eof_sent:
                listener.metrics.refused.labels("handshake_timeout").inc()
            self.deadline = 0.0
            self.transport.abort()
            return
        if not self.opened or self.protocol.state is not State.OPEN:
            return
        if self.pong_due:
            if now >= self.pong_due:
                if self.transport.get_write_buffer_size():
                    # The ping itself is not out yet: the client reads nothing.
                    self.write_timed_out()
                else:
                    listener.metrics.refused.labels("keepalive_timeout").inc()
                    self.begin_close(1011, "keepalive ping timeout")
        elif self.ping_at and now >= self.ping_at:
            self.protocol.send_ping(b"")
            self.send_data()
            self.pong_due = now + self._pong_wait()

    def _pong_wait(self) -> float:
        return self.listener.ping_timeout or self.listener.ping_interval

    # -- inside ------------------------------------------------------------------

    def _step(self) -> None:
        """Send what the protocol answered, then hand on what it received."""
        ws = self.protocol
        events = ws.events_received()
        self.send_data()
        if ws.state is not State.CONNECTING and not self.deadline and ws.close_expected():
            self._close_by(self.listener.now() + CLOSE_TIMEOUT)
        for event in events:
            if isinstance(event, Request):
                self._handshake = asyncio.get_running_loop().create_task(self._answer(event))
            elif self.opened:
                self._frame(cast(Frame, event))
            elif ws.state is State.CONNECTING:
                # Frames sent before our answer: handed on once the upgrade is done.
                if self._early is None:
                    self._early = []
                self._early.append(cast(Frame, event))

    async def _answer(self, request: Request) -> None:
        """The opening request: a plain HTTP answer, a refusal, or the upgrade."""
        listener, ws = self.listener, self.protocol
        try:
            response = await listener.handler.process_request(self, request)
        except Exception as exc:
            ws.handshake_exc = exc
            if listener.failures.allow(time.monotonic()):  # anyone can repeat the request
                log.error("answering a request failed", exc_info=True)
            response = ws.reject(
                500, "Failed to open a WebSocket connection.\nSee the server log.\n"
            )
        finally:
            self._handshake = None
        if response is None:
            response = ws.accept(request)
        response.headers["Server"] = SERVER
        if response.status_code == 101 and not listener.serving:
            response = ws.reject(503, "Server is shutting down.\n")
        if self.lost or ws.state is not State.CONNECTING:
            return  # gone while we were answering
        ws.send_response(response)
        self.send_data()
        if response.status_code != 101:
            # Answered and half-closed: the client has the close timeout to hang up.
            self._close_by(listener.now() + CLOSE_TIMEOUT)
            return
        self.deadline = 0.0
        if listener.ping_interval:
            self.ping_at = listener.now() + listener.ping_interval
        self._reschedule()
        self.opened = True
        listener.handler.opened(self)
        early, self._early = self._early, None
        for frame in early or ():
            if self.opened:
                self._frame(frame)

    def _malformed(self, refusal: http_wire.Refusal) -> None:
        # Answered and half-closed by the parser: the client has the close timeout to hang up.
        self._close_by(self.listener.now() + CLOSE_TIMEOUT)
        self.listener.handler.malformed(self, refusal)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode in _DATA:
            if opcode is not Opcode.CONT:
                self._text = opcode is Opcode.TEXT
            if not frame.fin:
                # The protocol bounds the whole message by max_size as it grows.
                if self._parts is None:
                    self._parts = []
                self._parts.append(bytes(frame.data))
                return
            data = bytes(frame.data)
            if self._parts is not None:
                self._parts.append(data)
                data = b"".join(self._parts)
                self._parts = None
            if self.protocol.state is not State.OPEN:
                return
            message: str | bytes = data
            if self._text:
                try:
                    message = data.decode()
                except UnicodeDecodeError as exc:
                    self._fail(1007, f"{exc.reason} at position {exc.start}")
                    return
            self.listener.handler.received(self, message)
        elif opcode in _CONTROL:
            if opcode is Opcode.PONG and self.pong_due:
                listener = self.listener
                now = listener.now()
                self.latency = max(0.0, now - self.pong_due + self._pong_wait())
                self.pong_due = 0.0
                if listener.ping_interval:
                    self.ping_at = now + listener.ping_interval
            if not self.listener.handler.control(self):
                self.discarding = True
        # A close frame: the protocol answered it; connection_lost ends the rest.

    def _fail(self, code: int, reason: str) -> None:
        self.protocol.fail(code, reason)
        self.send_data()
        self._close_by(self.listener.now() + CLOSE_TIMEOUT)

    def _close_by(self, when: float) -> None:
        self.deadline = when
        self.due = min(self.due, when)

    def _reschedule(self) -> None:
        due = self.deadline or _NEVER
        if self.pong_due:
            due = min(due, self.pong_due)
        elif self.ping_at:
            due = min(due, self.ping_at)
        if self.paused and self.listener.ping_timeout:
            due = min(due, self.paused_at + self.listener.ping_timeout)
        self.due = due
