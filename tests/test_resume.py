"""Gap-free resume, slow consumers, and the live path under load."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close
from websockets.protocol import State
from websockets.uri import parse_uri

from relay.testing import RelayServer
from tests.support import (
    UNIT,
    receive_tweets,
    stream_line,
    subscribe,
    wait_for,
)


def _pump(
    relay: RelayServer,
    first_id: int,
    count: int,
    stop: threading.Event,
    tags: tuple[str, ...] = ("cats",),
) -> threading.Thread:
    """Push tweets steadily from another thread until ``count`` are sent or ``stop``."""

    def run() -> None:
        for n in range(count):
            if stop.is_set():
                return
            relay.push(stream_line(first_id + n, f"tweet {n}", tags=tags))
            if n % 20 == 0:
                time.sleep(0.002)  # pacing only, not synchronisation: keep ingest ongoing

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("coalesce_ms", [0.0, 5.0])
def test_resume_after_a_disconnect_while_ingest_continues_has_no_gap_and_no_duplicate(
    start_relay: Callable[..., RelayServer], coalesce_ms: float
) -> None:
    # With the window too: held live frames and pending ones hand over without a gap.
    relay = start_relay(send_buffer=256 * 1024, coalesce_ms=coalesce_ms)
    ws, hello = subscribe(relay.ws_url, "tweets")
    epoch = hello["epoch"]
    stop = threading.Event()
    pump = _pump(relay, 10_000, 3000, stop)
    before = receive_tweets(ws, 200)
    ws.close()  # the client goes away while tweets keep coming
    last = before[-1]["seq"]

    ws, hello = subscribe(relay.ws_url, "tweets", since={"epoch": epoch, "seq": last})
    assert hello["recovered"] >= 0
    pump.join(8 * UNIT)
    relay.wait_seq(3000)
    after = receive_tweets(ws, 3000 - 200)
    seqs = [f["seq"] for f in before + after]
    assert seqs == list(range(seqs[0], seqs[0] + 3000)), "gap or duplicate across the resume"
    assert [f["tweet"]["id"] for f in before + after] == [str(10_000 + n) for n in range(3000)]
    ws.close()


def test_resume_on_a_rule_channel_replays_only_that_rule(
    pushed: RelayServer,
) -> None:
    relay = pushed
    for n in range(30):
        relay.push(stream_line(500 + n, tags=("cats",) if n % 3 == 0 else ("dogs",)))
    relay.wait_seq(30)
    epoch = relay.get("/v1/info")[1]["epoch"]
    ws, hello = subscribe(relay.ws_url, "rule:cats", since={"epoch": epoch, "seq": 0})
    assert hello["recovered"] == 10
    frames = receive_tweets(ws, 10)
    assert [f["tweet"]["id"] for f in frames] == [str(500 + n) for n in range(0, 30, 3)]
    relay.push(stream_line(900, tags=("dogs",)), stream_line(901, tags=("cats",)))
    (live,) = receive_tweets(ws, 1)
    assert live["tweet"]["id"] == "901"
    ws.close()


def test_a_stale_epoch_gets_a_reset_and_then_live_tweets(
    pushed: RelayServer,
) -> None:
    relay = pushed
    relay.push(stream_line(1))
    relay.wait_seq(1)
    ws, hello = subscribe(relay.ws_url, "tweets", since={"epoch": "not-this-one", "seq": 5})
    (reset,) = hello["_before"]
    assert reset["type"] == "reset"
    assert reset["epoch"] == hello["epoch"] != "not-this-one"
    assert reset["seq"] == 1
    relay.push(stream_line(2))
    (frame,) = receive_tweets(ws, 1)
    assert frame["tweet"]["id"] == "2" and frame["seq"] == 2
    ws.close()


def test_a_position_ahead_of_the_store_gets_a_reset(
    pushed: RelayServer,
) -> None:
    relay = pushed
    epoch = relay.get("/v1/info")[1]["epoch"]
    ws, hello = subscribe(relay.ws_url, "tweets", since={"epoch": epoch, "seq": 99})
    assert hello["_before"][0]["type"] == "reset"
    ws.close()


class StuckClient:
    """A real WebSocket client on a raw socket with a tiny receive window that stops reading.

    It uses the library's sans-I/O protocol, so the bytes are real WebSocket; only the
    reading is under the test's control, which the threaded client does not allow.
    """

    def __init__(self, ws_url: str) -> None:
        self.protocol = ClientProtocol(parse_uri(ws_url))
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        self.sock.settimeout(UNIT)
        self.sock.connect(("127.0.0.1", int(ws_url.split(":")[2].split("/")[0])))
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        while self.protocol.state is not State.OPEN:
            self.protocol.receive_data(self.sock.recv(4096))
        self.protocol.send_text(b'{"op":"subscribe","channel":"tweets"}')
        self._flush()

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def read_until_closed(self) -> Close | None:
        """Read everything in flight; the close frame the server sent, if it got through."""
        while data := self.sock.recv(1 << 16):
            self.protocol.receive_data(data)
            if self.protocol.close_rcvd is not None:
                break
        self.sock.close()
        return self.protocol.close_rcvd


@pytest.mark.parametrize("coalesce_ms", [0.0, 5.0])
def test_a_client_that_never_reads_is_closed_with_4008_and_others_keep_receiving(
    start_relay: Callable[..., RelayServer], coalesce_ms: float
) -> None:
    relay = start_relay(send_buffer=64 * 1024, coalesce_ms=coalesce_ms)
    stuck = StuckClient(relay.ws_url)
    reader, _ = subscribe(relay.ws_url, "tweets")
    hub = relay.relay.hub
    assert hub is not None
    wait_for(lambda: sum(len(s.subscriptions) for s in hub.sessions) == 2, UNIT, "2 subscribers")
    big = "x" * 20_000
    received: list[dict[str, object]] = []
    for batch in range(1000):  # at most 40 MB: far past any kernel buffer
        relay.push(*(stream_line(batch * 2 + n, big) for n in range(2)))
        received += receive_tweets(reader, 2, timeout=2 * UNIT)  # on time, every batch
        if relay.relay.metrics.slow_consumers._value.get() >= 1:
            break
    assert relay.relay.metrics.slow_consumers._value.get() == 1
    assert [f["seq"] for f in received] == list(range(1, len(received) + 1))
    close = stuck.read_until_closed()
    assert close is not None and close.code == 4008
    reason = orjson.loads(close.reason)
    assert reason["reason"] == "slow_consumer" and 0 < reason["seq"] < len(received)
    wait_for(lambda: len(hub.sessions) == 1, 2 * UNIT, "the server to drop the slow consumer")
    # The reading client is still served.
    relay.push(stream_line(99_999))
    assert receive_tweets(reader, 1)[0]["tweet"]["id"] == "99999"
    reader.close()


def test_keepalive_pings_are_answered_by_clients_and_the_connection_stays_up(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(ping_interval=0.05, ping_timeout=UNIT)
    ws, _ = subscribe(relay.ws_url, "tweets")
    hub = relay.relay.hub
    assert hub is not None
    (session,) = hub.sessions
    # The server measures latency from its keepalive pings; the client library answers them.
    wait_for(lambda: session.transport.latency > 0, 2 * UNIT, "a keepalive ping round trip")
    relay.push(stream_line(1))
    assert receive_tweets(ws, 1)[0]["seq"] == 1
    ws.close()
