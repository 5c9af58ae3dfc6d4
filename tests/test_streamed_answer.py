"""A handler answers on the raw transport, and an answer can stream: the seam a transport
over plain HTTP (server-sent events) plugs into (docs/architecture.md, "The transport seam").

The connection layer (relay.web.listener, relay.web.connection) runs on its own here,
under a handler that streams every answer, on a real socket.
"""

from __future__ import annotations

import asyncio

from websockets.http11 import SERVER, Request

from relay.obs.metrics import Metrics
from relay.web.connection import StreamConnection
from relay.web.http_wire import Refusal
from relay.web.listener import Listener
from relay.web.sockets import SocketCount
from tests.support import UNIT

OPEN_TIMEOUT = 0.2
"""Short: a streamed answer must outlive the deadline of its opening request."""


class Streaming:
    """A handler that answers each request with a head and a first event, then streams."""

    def __init__(self) -> None:
        self.streams: list[StreamConnection] = []
        self.ended = asyncio.Event()

    async def process_request(self, conn: StreamConnection, request: Request) -> bool:
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        conn.respond(200, headers, b": open\n\n", streamed=True)
        self.streams.append(conn)
        return False

    def opened(self, conn: StreamConnection) -> None:
        raise AssertionError("nothing is upgraded here")

    def malformed(self, conn: StreamConnection, refusal: Refusal) -> None:
        raise AssertionError(f"a well-formed request was refused: {refusal}")

    def received(self, conn: StreamConnection, message: str | bytes) -> None:
        raise AssertionError("no frames come over plain HTTP")

    def control(self, conn: StreamConnection) -> bool:
        raise AssertionError("no frames come over plain HTTP")

    def closed(self, conn: StreamConnection) -> None:
        self.ended.set()


async def _streamed() -> None:
    handler = Streaming()
    metrics = Metrics()
    listener = Listener(
        handler,
        sockets=SocketCount(0, metrics),
        metrics=metrics,
        max_size=1 << 16,
        send_buffer=1 << 20,
        compression=False,
        ping_interval=0.05,
        ping_timeout=UNIT,
        open_timeout=OPEN_TIMEOUT,
    )
    await listener.start(None, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET /v1/events HTTP/1.1\r\nHost: relay\r\n\r\n")
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            f"Server: {SERVER}\r\n\r\n: open\n\n"
        ).encode()
        assert await asyncio.wait_for(reader.readexactly(len(head)), UNIT) == head
        # Past the opening request's deadline and several keepalive periods: the answer
        # streams on, and no ping is written into it.
        await asyncio.sleep(3 * OPEN_TIMEOUT)
        (conn,) = handler.streams
        conn.transport.write(b"data: 1\n\n")
        assert await asyncio.wait_for(reader.readexactly(9), UNIT) == b"data: 1\n\n"
        conn.end_response()
        assert await asyncio.wait_for(reader.read(), UNIT) == b""  # the end: a half-close
        writer.close()
        await asyncio.wait_for(handler.ended.wait(), UNIT)  # the handler hears the end
    finally:
        await listener.close()


def test_an_answer_streams_on_the_raw_transport_until_the_handler_ends_it() -> None:
    asyncio.run(_streamed())
