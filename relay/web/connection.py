"""One connection of the shared port: an asyncio protocol over websockets' sans-I/O protocol.

websockets' asyncio layer runs a handler task and a keepalive task per connection,
with their buffers; at 10,000 idle subscribers that was most of the relay's memory.
Here a connection is one small object with slots over the library's
``ServerProtocol`` (which parses, frames, negotiates extensions and answers pings):
no task while nothing is queued, and the timers of every connection (the opening
handshake's, the close's, keepalive pings, a streamed answer's keep-alive, stalled
writes) are kept by one shared sweep in :mod:`relay.web.listener`.

It is where the relay sees every byte, frame and write, so nothing a client does
escapes the connection's bounds: the socket count per address (from the accept,
before any byte is read), the frame rate (control frames included), the largest
frame, and the outbound bound (the transport's write buffer, see
:mod:`relay.stream.session`). The server (its :class:`~relay.web.roles.Handler`) sees the
opening request, which it answers on the raw transport (:meth:`StreamConnection.respond`:
whole, or streamed) or has upgraded, then whole messages and the end. Upgraded, the
connection is the WebSocket :class:`~relay.stream.transport.Transport` of a session;
:meth:`StreamConnection.close` is the one way it is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, cast

from websockets.frames import Frame, Opcode
from websockets.http11 import SERVER, Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from relay.errors import CLOSE_ABNORMAL, CLOSE_SLOW_CONSUMER
from relay.stream.session import LAG_ALLOWANCE
from relay.web import http_wire, ws_frames
from relay.web.sockets import socket_name

if TYPE_CHECKING:
    from relay.stream.transport import Framing
    from relay.web.clients import Client
    from relay.web.roles import Host

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 2.0
"""Seconds a client gets to take the close (a close frame, the end of an answer) before
the connection is cut."""
LIBRARY_WRITE_LIMIT = 64 * 1024
"""The transport's default high-water mark (asyncio's), above which it pauses our writes."""
_NEVER = float("inf")
_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
_CONTROL = (Opcode.PING, Opcode.PONG)


class StreamConnection(asyncio.Protocol):
    """One TCP connection: its opening request, then WebSocket frames or one HTTP answer.

    The library's ``ServerProtocol`` does the parsing and framing; this object moves
    bytes between it and the transport and keeps the deadlines that the listener's
    sweep checks (:mod:`relay.web.listener`). Nothing runs for it while it is idle.
    """

    __slots__ = (
        "_drained",
        "_early",
        "_handshake",
        "_lost",
        "_parts",
        "_text",
        "beat",
        "beat_at",
        "client",
        "counted_as",
        "deadline",
        "discarding",
        "due",
        "latency",
        "listener",
        "opened",
        "paused",
        "paused_at",
        "ping_at",
        "pong_due",
        "protocol",
        "remote_address",
        "transport",
        "unsent",
    )

    protocol: ServerProtocol
    transport: asyncio.Transport
    framing: Framing = ws_frames.WEBSOCKET
    """What a session writes here: WebSocket frames."""

    def __init__(self, listener: Host[StreamConnection]) -> None:
        self.listener = listener
        self.remote_address: Any = None
        self.counted_as: str | None = None
        """The socket address this connection is counted under, while it is open."""
        self.client: Client | None = None
        """The server's record of the stream client, once its request is authorised."""
        self.opened = False
        """The upgrade succeeded (or an answer streams) and the server has not yet seen
        the end."""
        self.discarding = False
        """Input is dropped (a flooding client is being cut off)."""
        self.paused = False
        self.paused_at = 0.0
        self.unsent = 0
        """Bytes of an answer still unsent at its close deadline (to tell they move)."""
        self.deadline = 0.0
        """Loop time past which the connection is cut (opening or closing); 0: none."""
        self.due = _NEVER
        """The earliest loop time at which the sweep has something to do for it."""
        self.ping_at = 0.0
        self.pong_due = 0.0
        self.latency = 0.0
        """Seconds of the last keepalive ping's round trip (0: none yet)."""
        self.beat_at = 0.0
        """When a streamed answer next gets its keep-alive bytes (0: none)."""
        self.beat = b""
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
        if not listener.serving:
            # Accepted in the last moment before the listener stopped: nothing will
            # answer it, nor close it with the others.
            self.transport.abort()
            return
        address = socket_name(self.remote_address).rsplit(":", 1)[0]
        sockets = listener.sockets
        if not sockets.add(address):
            if sockets.logged.allow(time.monotonic()):
                log.info(
                    "refused a connection from %s: %d sockets open from that address",
                    address,
                    sockets.open[address],
                )
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
        limit = self.listener.send_buffer
        if self.discarding or (self.protocol.close_sent is not None and self.backlog() > limit):
            # A client being cut off gets no more answers (pongs) to pile up; not reading
            # pushes back on its sending until the close times out and aborts.
            self.transport.pause_reading()
            return
        self.protocol.receive_data(data)
        self._step()
        session = self.client.session if self.client is not None else None
        if session is not None and self.backlog() > LAG_ALLOWANCE * limit:
            # Pongs for the client's pings go straight to the transport, after our frames;
            # a publish may leave up to its own size there, so only the connection's hard
            # bound applies here (publishes check the send buffer).
            session.close(CLOSE_SLOW_CONSUMER, "slow_consumer")

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
        session = self.client.session if self.client is not None else None
        if session is not None:
            session.drained()  # frames held back while we pushed back go out now

    # -- the WebSocket transport of a session, and the answers of the server ----------

    @property
    def lost(self) -> bool:
        return self.counted_as is None

    def write(self, data: bytes) -> bool:
        """Write complete frames built by :mod:`relay.web.ws_frames` as one write; False
        once the connection is closing (the library answered a close) or gone."""
        ws = self.protocol
        if ws.state is not State.OPEN:
            return False
        if ws.extensions:
            # Compressed per connection: the library's own framing, still synchronous.
            for payload in ws_frames.payloads(data):
                ws.send_text(payload)
            self.send_data()
        else:
            # Whole frames only: the library's own writes (pongs, pings, close) land
            # between ours, never inside one.
            self.transport.write(data)
        return True

    def backlog(self) -> int:
        """Bytes written and not yet taken by the client."""
        return self.transport.get_write_buffer_size()

    def pushing_back(self) -> bool:
        """The transport paused our writes (its buffer is past the high-water mark)."""
        return self.paused

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

    def close(self, code: int, reason: str = "", *, at_once: bool = False) -> None:
        """End the connection: the one way it is closed, whatever the reason.

        An open WebSocket gets a close frame with ``code`` and ``reason`` after what was
        written; the client has ``CLOSE_TIMEOUT`` to answer it before it is cut.
        ``at_once``: the client broke the protocol (RFC 6455 7.1.7), our side ends now and
        what it sends next is not read. ``CLOSE_ABNORMAL``, or a connection not upgraded,
        is cut at once (an answer already ending is left to end). Once closing or gone,
        nothing happens.
        """
        if self.lost:
            return
        ws = self.protocol
        if ws.state is State.OPEN and code != CLOSE_ABNORMAL:
            if at_once:
                ws.fail(code, reason)
            else:
                ws.send_close(code, reason)
            self.send_data()
            self._close_by(self.listener.now() + CLOSE_TIMEOUT)
        elif ws.state is State.OPEN or (ws.state is State.CONNECTING and not ws.eof_sent):
            self.transport.abort()

    async def wait_closed(self) -> None:
        if self.lost:
            return
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._lost)

    def respond(
        self,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes = b"",
        *,
        streamed: bool = False,
        keepalive: bytes = b"",
    ) -> bool:
        """Answer the opening request on the raw transport: the head (``Server`` added) and
        ``body`` in one write, then the end: a half-close, and the client has the close
        timeout to hang up. ``streamed``: no end yet; the body goes on by writes to
        :attr:`transport` until :meth:`end_response` (a stream of events), and meanwhile
        the connection is open (its handler hears ``closed`` at its end), its writes
        bounded as a WebSocket's, and ``keepalive`` (whole units of the body, such as a
        comment line) is written every ``keepalive`` seconds of the host, from its sweep.
        False when nothing was sent: the connection is gone, or answered already."""
        ws = self.protocol
        if self.lost or self.opened or ws.state is not State.CONNECTING or ws.eof_sent:
            return False  # gone while the handler was answering, or answered already
        self.transport.write(http_wire.response_head(status, [*headers, ("Server", SERVER)]) + body)
        if not streamed:
            self.end_response()
            return True
        http_wire.answered(ws, end=False)
        self.deadline = 0.0
        self.opened = True
        every = self.listener.keepalive
        if keepalive and every > 0:
            self.beat = keepalive
            self.beat_at = self.listener.now() + every
        self._limit_writes()
        self.reschedule()
        return True

    def end_response(self) -> None:
        """End a streamed answer: a half-close; the client has the close timeout to hang up."""
        self.beat_at = 0.0
        if self.lost or self.protocol.eof_sent:
            return
        http_wire.answered(self.protocol, end=True)
        self.send_data()
        self._close_by(self.listener.now() + CLOSE_TIMEOUT)

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

    def pong_wait(self) -> float:
        """Seconds a keepalive ping waits for its pong."""
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
        """The opening request: the handler answers it, or it is upgraded."""
        listener, ws = self.listener, self.protocol
        try:
            upgrade = await listener.handler.process_request(self, request)
        except Exception as exc:
            upgrade = False
            ws.handshake_exc = exc
            if listener.failures.allow(time.monotonic()):  # anyone can repeat the request
                log.error("answering a request failed", exc_info=True)
            failed = ws.reject(500, "Failed to open a WebSocket connection.\nSee the server log.\n")
            self.respond(failed.status_code, list(failed.headers.raw_items()), bytes(failed.body))
        finally:
            self._handshake = None
        if not upgrade or self.lost or ws.state is not State.CONNECTING:
            return  # answered, or gone while we were answering
        response = ws.accept(request)  # 101, or the library's refusal (not an upgrade: 426)
        response.headers["Server"] = SERVER
        if response.status_code == 101 and not listener.serving:
            response = ws.reject(503, "Server is shutting down.\n")
        ws.send_response(response)
        self.send_data()
        if response.status_code != 101:
            # Answered and half-closed: the client has the close timeout to hang up.
            self._close_by(listener.now() + CLOSE_TIMEOUT)
            return
        self.deadline = 0.0
        if listener.ping_interval:
            self.ping_at = listener.now() + listener.ping_interval
        self.reschedule()
        self.opened = True
        self._limit_writes()
        listener.handler.opened(self)
        early, self._early = self._early, None
        for frame in early or ():
            if self.opened:
                self._frame(frame)

    def _limit_writes(self) -> None:
        low = self.listener.send_buffer // 4
        if low < LIBRARY_WRITE_LIMIT:
            # Not paused must mean "at most a quarter of the send buffer unsent", so that a
            # waiting catch-up can sleep in drain() instead of polling.
            with contextlib.suppress(Exception):
                self.transport.set_write_buffer_limits(high=max(1, low))

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
                    self.close(1007, f"{exc.reason} at position {exc.start}", at_once=True)
                    return
            self.listener.handler.received(self, message)
        elif opcode in _CONTROL:
            if opcode is Opcode.PONG and self.pong_due:
                listener = self.listener
                now = listener.now()
                self.latency = max(0.0, now - self.pong_due + self.pong_wait())
                self.pong_due = 0.0
                if listener.ping_interval:
                    self.ping_at = now + listener.ping_interval
            if not self.listener.handler.control(self):
                self.discarding = True
        # A close frame: the protocol answered it; connection_lost ends the rest.

    def _close_by(self, when: float) -> None:
        self.deadline = when
        self.due = min(self.due, when)

    def reschedule(self) -> None:
        """``due`` from the connection's timers, after any of them changed."""
        due = self.deadline or _NEVER
        if self.beat_at:
            due = min(due, self.beat_at)
        if self.pong_due:
            due = min(due, self.pong_due)
        elif self.ping_at:
            due = min(due, self.ping_at)
        if self.paused and self.listener.ping_timeout:
            due = min(due, self.paused_at + self.listener.ping_timeout)
        self.due = due
