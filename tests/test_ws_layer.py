"""The relay's own WebSocket layer (relay.web.connection, relay.web.listener) keeps its promises.

No task per idle connection; one shared timer for keepalive pings, the opening
handshake and the close; whole messages from fragments; frames that came with the
upgrade request; compression still working when the operator turns it on.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from relay.testing import RelayServer
from tests.support import UNIT, counted, receive_tweets, stream_line, subscribe, wait_for
from tests.test_connection_bounds import RawClient

Start = Callable[..., RelayServer]


def _tasks(relay: RelayServer) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    return relay.call(count())


def _subscribers(relay: RelayServer) -> int:
    hub = relay.relay.hub
    assert hub is not None
    return sum(len(s.subscriptions) for s in hub.sessions)


def test_idle_subscribers_run_no_task(start_relay: Start) -> None:
    relay = start_relay()
    before = _tasks(relay)
    clients = [RawClient(relay.ws_url) for _ in range(30)]
    for client in clients:
        client.send({"op": "subscribe", "channel": "tweets", "filters": {"lang": "xx"}})
    wait_for(lambda: _subscribers(relay) == 30, 2 * UNIT, "30 subscribers")
    # websockets' own server ran a handler task and a keepalive task for each of them.
    assert _tasks(relay) - before < 5
    for client in clients:
        client.close()


def test_keepalive_pings_keep_an_answering_client_and_close_a_silent_one(
    start_relay: Start,
) -> None:
    relay = start_relay(ping_interval=0.1, ping_timeout=0.3)
    silent = RawClient(relay.ws_url)  # its pongs are queued by its protocol, never sent
    answering = RawClient(relay.ws_url)
    pings = 0
    for frame in answering.read():
        if frame.opcode is Opcode.PING:
            answering.flush()  # the pong its protocol queued
            pings += 1
            if pings == 4:
                break
    # Each ping after the first came only once the previous one was answered.
    assert pings == 4
    close = silent.close_code()
    assert close is not None and close.code == 1011
    assert counted(relay.relay.metrics.refused, reason="keepalive_timeout") == 1
    answering.send({"op": "ping", "id": 9})
    for frame in answering.read():
        if frame.opcode is Opcode.PING:
            answering.flush()
        elif frame.opcode is Opcode.TEXT:
            assert orjson.loads(frame.data) == {"type": "pong", "id": 9}
            break
    else:
        raise AssertionError("the answering client was closed")
    answering.close()
    silent.close()


def test_a_connection_that_never_finishes_its_request_is_cut_after_the_open_timeout(
    start_relay: Start,
) -> None:
    relay = start_relay(open_timeout=0.3)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=2 * UNIT) as sock:
        sock.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: relay\r\n")  # no blank line, ever
        with contextlib.suppress(ConnectionResetError):  # cut, not answered: either way
            assert sock.recv(1024) == b""
    assert counted(relay.relay.metrics.refused, reason="handshake_timeout") == 1
    server = relay.relay.server
    assert server is not None
    wait_for(lambda: not server.sockets.open, UNIT, "the socket to be uncounted")


def _upgrade_with_a_frame(port: int, frame: bytes) -> list[Frame | Response]:
    client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/v1/stream"))
    client.send_request(client.connect())
    with socket.create_connection(("127.0.0.1", port), timeout=UNIT) as sock:
        sock.sendall(b"".join(client.data_to_send()) + frame)  # one write: request and frame
        events: list[Frame | Response] = []
        while not any(isinstance(e, Frame) and e.opcode is Opcode.TEXT for e in events):
            client.receive_data(sock.recv(1 << 16))
            events.extend(e for e in client.events_received())
    return events


def test_a_frame_sent_with_the_upgrade_request_is_not_lost(start_relay: Start) -> None:
    relay = start_relay()
    op = Frame(Opcode.TEXT, b'{"op":"ping","id":"early"}').serialize(mask=True, extensions=[])
    events = _upgrade_with_a_frame(relay.port, op)
    assert isinstance(events[0], Response) and events[0].status_code == 101
    texts = [orjson.loads(e.data) for e in events if isinstance(e, Frame)]
    assert texts == [{"type": "pong", "id": "early"}]


def test_a_fragmented_message_is_one_operation_and_bad_utf8_closes_with_1007(
    start_relay: Start,
) -> None:
    relay = start_relay()
    client = RawClient(relay.ws_url)
    client.protocol.send_text(b'{"op":"pi', fin=False)
    client.protocol.send_continuation(b'ng","id":', fin=False)
    client.protocol.send_continuation(b"5}", fin=True)
    client.flush()
    assert next(client.texts()) == {"type": "pong", "id": 5}
    client.protocol.send_text(b'{"op":"\xff"}')
    client.flush()
    close = client.close_code()
    assert close is not None and close.code == 1007
    client.close()


@pytest.mark.parametrize("compression", [False, True])
def test_tweets_reach_clients_with_and_without_compression(
    start_relay: Start, compression: bool
) -> None:
    relay = start_relay(compression=compression)
    ws, _ = subscribe(relay.ws_url)  # the websockets client offers permessage-deflate
    extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "") if ws.response else ""
    assert ("permessage-deflate" in extensions) is compression
    relay.push(*(stream_line(n, "d" * 3000) for n in range(1, 51)))
    tweets = receive_tweets(ws, 50)
    assert [t["seq"] for t in tweets] == list(range(1, 51))
    assert tweets[-1]["tweet"]["text"].endswith("d" * 3000)
    ws.close()
