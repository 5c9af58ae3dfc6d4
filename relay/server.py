"""The WebSocket server: one port, upgrade on ``/v1/stream``, plain GET for the rest.

It only moves data between the socket and the sans-I/O parts: frames go through
:mod:`relay.protocol`, subscriptions through the hub, outbound frames through
each connection's :class:`~relay.session.Session`.
"""

from __future__ import annotations

import http
import logging
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from relay import protocol
from relay.config import Settings
from relay.http import STREAM_PATH, HttpApi, Reply
from relay.hub import Hub
from relay.metrics import Metrics
from relay.protocol import ProtocolError
from relay.session import Session

log = logging.getLogger(__name__)


class StreamServer:
    def __init__(self, settings: Settings, hub: Hub, api: HttpApi, metrics: Metrics) -> None:
        self.settings = settings
        self.hub = hub
        self.api = api
        self.metrics = metrics
        self.server: Server | None = None

    async def start(self) -> None:
        self.server = await serve(
            self._handle,
            self.settings.host,
            self.settings.port,
            process_request=self._process_request,
            max_size=self.settings.max_frame,
            ping_interval=self.settings.ping_interval,
            ping_timeout=self.settings.ping_timeout,
            # Our own bounded buffer does the flow control; keep the library's small.
            write_limit=64 * 1024,
            close_timeout=2,
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        sockname: tuple[Any, ...] = next(iter(self.server.sockets)).getsockname()
        return int(sockname[1])

    async def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close(close_connections=False)

    async def wait_closed(self) -> None:
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == STREAM_PATH:
            return None  # the upgrade proceeds
        reply = await self.api.handle(request.path, _plain_headers(request.headers))
        return _response(reply)

    async def _handle(self, conn: ServerConnection) -> None:
        peer = _peer(conn)
        session = Session(
            conn, send_buffer=self.settings.send_buffer, metrics=self.metrics, peer=peer
        )
        self.hub.add(session)
        session.start()
        log.debug("connection from %s", peer)
        try:
            async for message in conn:
                self._on_frame(session, message)
        except ConnectionClosed:
            pass
        finally:
            self.hub.remove(session)
            log.debug("connection from %s closed (%s)", peer, conn.close_code)

    def _on_frame(self, session: Session, message: str | bytes) -> None:
        try:
            op = protocol.decode(message)
        except ProtocolError as exc:
            self.metrics.bad_frames.labels(exc.code).inc()
            log.info("bad frame from %s: %s", session.peer, exc.message)
            session.push(protocol.error_for(exc))
            return
        if op.op == "ping":
            session.push(protocol.pong(op.ref))
        elif op.op == "subscribe":
            assert op.channel is not None
            self.hub.subscribe(session, op.channel, op.since, op.ref)
        elif op.op == "unsubscribe":
            assert op.channel is not None
            self.hub.unsubscribe(session, op.channel, op.ref)


def _peer(conn: ServerConnection) -> str:
    address = conn.remote_address
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


def _plain_headers(headers: Headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.raw_items()}


def _response(reply: Reply) -> Response:
    headers = Headers()
    headers["Content-Type"] = reply.content_type
    headers["Content-Length"] = str(len(reply.body))
    headers["Access-Control-Allow-Origin"] = "*"
    for name, value in reply.headers.items():
        headers[name] = value
    reason = http.HTTPStatus(reply.status).phrase
    return Response(reply.status, reason, headers, reply.body)
