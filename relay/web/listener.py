"""The listening socket, its connections, and the one timer they all share.

websockets' asyncio server keeps a keepalive task per connection and a timeout per
handshake and per close. Here one sweep, every ``tick`` seconds, walks the open
connections and checks the deadlines of each whose ``due`` time is past:
opening handshake and close timeouts, keepalive pings and their pongs, the keep-alive
bytes of streamed answers, writes that do not move. A connection with nothing due costs
one comparison per sweep.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Any

from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.protocol import State

from relay.errors import CLOSE_GOING_AWAY
from relay.obs.sampling import LogSampler
from relay.web.connection import CLOSE_TIMEOUT, StreamConnection

if TYPE_CHECKING:
    from relay.obs.metrics import Metrics
    from relay.web.roles import Handler
    from relay.web.sockets import SocketCount

log = logging.getLogger(__name__)

SWEEP_BATCH = 500
"""Most connections whose timers are handled in one sweep."""


class Listener:
    """Accepts connections for a :class:`~relay.web.roles.Handler`; keeps their timers in
    one sweep. It is their :class:`~relay.web.roles.Host`."""

    def __init__(
        self,
        handler: Handler[StreamConnection],
        *,
        sockets: SocketCount,
        metrics: Metrics,
        max_size: int,
        send_buffer: int,
        compression: bool,
        ping_interval: float,
        ping_timeout: float,
        open_timeout: float,
        keepalive: float = 0.0,
    ) -> None:
        self.handler = handler
        self.sockets = sockets
        self.metrics = metrics
        self.max_size = max_size
        self.send_buffer = send_buffer
        """Bytes a client may leave untaken (:mod:`relay.stream.session`): the connection's
        bounds and its transport's high-water mark follow from it."""
        self.extensions: list[ServerExtensionFactory] | None = (
            list(enable_server_permessage_deflate(None)) if compression else None
        )
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.keepalive = keepalive
        """Seconds between keep-alive bytes of a streamed answer (0: none)."""
        self.ws_logger = logging.getLogger("websockets.server")
        self.logged = LogSampler(what="connections timed out")
        self.failures = LogSampler(what="failed answers")
        self.connections: set[StreamConnection] = set()
        self.serving = False
        self.server: asyncio.Server | None = None
        timers = (ping_interval, ping_timeout, open_timeout, CLOSE_TIMEOUT, keepalive)
        periods = [p for p in timers if p > 0]
        # A deadline is kept to within a quarter of the shortest period (at most 1 s late).
        self.tick = min(1.0, max(0.02, min(periods) / 4))
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, sock: socket.socket | None = None, host: str = "", port: int = 0) -> None:
        loop = self._loop = asyncio.get_running_loop()
        where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": host, "port": port}
        self.server = await loop.create_server(lambda: StreamConnection(self), **where)
        self.serving = True
        self._timer = loop.call_later(self.tick, self._sweep)

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    @property
    def port(self) -> int:
        assert self.server is not None
        sockname: tuple[Any, ...] = self.server.sockets[0].getsockname()
        return int(sockname[1])

    def _sweep(self) -> None:
        now = self.now()
        due = [conn for conn in self.connections if conn.due <= now]
        # Bounded work per sweep (a ping is a few µs): the rest, still due, go next time,
        # so 10,000 connections opened together do not stall the loop when their pings fall due.
        for conn in due[:SWEEP_BATCH]:
            try:
                self._timers(conn, now)
            except Exception:  # one connection's bug must not stop everyone's timers
                log.exception("the timer of %s failed", conn.remote_address)
                conn.transport.abort()
        assert self._loop is not None
        self._timer = self._loop.call_later(self.tick, self._sweep)

    def _timers(self, conn: StreamConnection, now: float) -> None:
        """One connection's timers, once its ``due`` is past: deadlines, keepalive pings,
        keep-alive bytes, writes that do not move."""
        self._check(conn, now)
        conn.reschedule()

    def _check(self, conn: StreamConnection, now: float) -> None:
        if conn.paused and self.ping_timeout and now - conn.paused_at >= self.ping_timeout:
            conn.write_timed_out()  # the client took too little to unpause us: reads nothing
            return
        if conn.deadline and now >= conn.deadline:
            unsent = conn.backlog()
            if unsent and not conn.opened:
                if not conn.unsent or unsent < conn.unsent:
                    # An answer is still going out: the client has the close timeout from
                    # when it has everything, as long as it takes some of it each timeout.
                    conn.unsent = unsent
                    conn.deadline = now + CLOSE_TIMEOUT
                else:
                    conn.write_timed_out()
                return
            ws = conn.protocol
            if not conn.opened and ws.state is State.CONNECTING and not ws.eof_sent:
                self.metrics.refused.labels("handshake_timeout").inc()
            conn.deadline = 0.0
            conn.transport.abort()
            return
        if conn.beat_at and now >= conn.beat_at:
            # A streamed answer's keep-alive: bytes now and then, so that proxies and
            # routers that cut an idle connection (Heroku at 55 s) leave it open.
            conn.transport.write(conn.beat)
            conn.beat_at = now + self.keepalive
        if not conn.opened or conn.protocol.state is not State.OPEN:
            return
        if conn.pong_due:
            if now >= conn.pong_due:
                if conn.backlog():  # the ping itself is not out yet: the client reads nothing
                    conn.write_timed_out()
                else:
                    self.metrics.refused.labels("keepalive_timeout").inc()
                    conn.close(1011, "keepalive ping timeout")
        elif conn.ping_at and now >= conn.ping_at:
            conn.protocol.send_ping(b"")
            conn.send_data()
            conn.pong_due = now + conn.pong_wait()

    async def stop_accepting(self) -> None:
        """Stop listening. A connection the loop accepted but has not handed over yet gets
        in first (and is closed at once, since nothing is served any more): on Python
        3.11 closing the server under it fails its transport's creation and leaks its
        socket (``Server._attach`` asserts on a closed server)."""
        self.serving = False
        if self.server is None:
            return
        loop = asyncio.get_running_loop()
        for sock in self.server.sockets:
            loop.remove_reader(sock.fileno())  # accept nothing more
        for _ in range(3):  # each accepted socket: its task, then its transport's calls
            await asyncio.sleep(0)
        self.server.close()

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Stop listening; close every connection with 1001 (aborted past ``timeout``)."""
        await self.stop_accepting()
        for conn in tuple(self.connections):
            if conn.opened:  # the others finish their answer (an upgrade gets 503)
                conn.close(CLOSE_GOING_AWAY)
        waiting = [asyncio.ensure_future(c.wait_closed()) for c in tuple(self.connections)]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=timeout)
            for task in late:
                task.cancel()
        for conn in tuple(self.connections):
            conn.transport.abort()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.server is not None:
            await self.server.wait_closed()
