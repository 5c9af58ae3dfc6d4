"""A small HTTP server for health and metrics where no client port is served.

``relay ingest`` has no WebSocket port: with ``--metrics-port`` it answers
``/healthz``, ``/readyz`` and ``/metrics`` here. ``relay serve`` answers here on its
own port while it waits for its store at start, so a PaaS health check gets 503
with the reason instead of a refused connection. One request per connection,
answered and closed; anything else is 404, any method but GET and HEAD 405.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import orjson

from relay.obs.metrics import Metrics
from relay.obs.readiness import READY, Readiness

REQUEST_LIMIT = 8192
READ_TIMEOUT = 5.0


class OpsServer:
    def __init__(
        self,
        host: str,
        port: int,
        readiness: Callable[[], Readiness],
        metrics: Metrics | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.readiness = readiness
        self.metrics = metrics
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on host and port, or on ``sock`` (a copy of a socket the caller keeps
        and hands to the real server later: connections waiting in its queue are then
        answered by that server, none is refused in between)."""
        if sock is not None:
            self._server = await asyncio.start_server(self._handle, sock=sock, limit=REQUEST_LIMIT)
        else:
            self._server = await asyncio.start_server(
                self._handle,
                self.host,
                self.requested_port,
                limit=REQUEST_LIMIT,
                reuse_address=True,
            )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def answer(self, method: str, path: str) -> tuple[int, bytes, str]:
        path = path.partition("?")[0]
        if method not in ("GET", "HEAD"):
            return 405, b'{"error":"method not allowed"}', "application/json"
        if path == "/healthz":
            return 200, b'{"status":"ok"}', "application/json"
        if path == "/readyz":
            state = self.readiness()
            body = {"status": state.status, **({"error": state.error} if state.error else {})}
            return (200 if state == READY else 503), orjson.dumps(body), "application/json"
        if path == "/metrics" and self.metrics is not None:
            return 200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8"
        if self.metrics is None:  # a serving process still starting: come back later
            state = self.readiness()
            return (
                503,
                orjson.dumps({"status": state.status, "error": state.error}),
                "application/json",
            )
        return 404, b'{"error":"not found"}', "application/json"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, body, content_type = self.answer(method, path)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (
            OSError,
            ValueError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # a broken or hostile request: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
