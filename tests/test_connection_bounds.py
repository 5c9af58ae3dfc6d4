"""Every connection and every client bounded: handshakes, control frames, backlog, catch-ups.

The misbehaving clients here speak real WebSocket through the library's sans-I/O
protocol on a raw socket, so the test decides when (and whether) they read; the
threaded client library would read and answer pings on its own.
"""

from __future__ import annotations

import gc
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from relay.core.auth import issue_token
from relay.core.filters import TweetFilter
from relay.testing import RelayServer
from relay.web.connection import StreamConnection
from tests.fake_x import FakeTime
from tests.support import (
    UNIT,
    RelayProcess,
    receive_tweets,
    stream_line,
    subscribe,
    wait_for,
    ws_connect,
)
from tests.test_access import SECRET, token

Start = Callable[..., RelayServer]
MB = 1 << 20


class RawClient:
    """A WebSocket client whose reading the test controls (``rcvbuf``: a small window)."""

    def __init__(self, ws_url: str, *, rcvbuf: int | None = None, query: str = "") -> None:
        self.protocol = ClientProtocol(parse_uri(ws_url + query))
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect
        self.sock.settimeout(UNIT)
        self.sock.connect(("127.0.0.1", int(ws_url.split(":")[2].split("/")[0])))
        self.protocol.send_request(self.protocol.connect())
        self.flush()
        while self.protocol.state is not State.OPEN:
            self.protocol.receive_data(self.sock.recv(4096))

    def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def send(self, op: dict[str, Any]) -> None:
        self.protocol.send_text(orjson.dumps(op))
        self.flush()

    def pings(self, count: int) -> bytes:
        """``count`` masked 125-byte pings, ready to send (the largest control frame)."""
        for _ in range(count):
            self.protocol.send_ping(b"p" * 125)
        return b"".join(self.protocol.data_to_send())

    def read(self) -> Iterator[Frame]:
        """Frames as they come, until the server's close frame or the end of the stream."""
        while self.protocol.close_rcvd is None:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return
            if not data:
                return
            self.protocol.receive_data(data)
            for event in self.protocol.events_received():
                if isinstance(event, Frame):
                    yield event

    def texts(self) -> Iterator[dict[str, Any]]:
        for frame in self.read():
            if frame.opcode is Opcode.TEXT:
                yield orjson.loads(frame.data)

    def close_code(self) -> Close | None:
        for _ in self.read():
            pass
        return self.protocol.close_rcvd

    def close(self) -> None:
        self.sock.close()


def rss_kb(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _session_count(relay: RelayServer) -> int:
    assert relay.relay.hub is not None
    return len(relay.relay.hub.sessions)


def _refused(relay: RelayServer, reason: str) -> float:
    value: float = relay.relay.metrics.refused.labels(reason)._value.get()
    return value


# -- point 1: failed handshakes -------------------------------------------------


def _failed_handshake(port: int, query: str = "") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=UNIT) as sock:
        sock.sendall(f"GET /v1/stream{query} HTTP/1.1\r\nHost: relay\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(1 << 16):
            answer += chunk
    return answer


def _live_connections() -> int:
    gc.collect()
    return sum(isinstance(o, StreamConnection) for o in gc.get_objects())


@pytest.mark.parametrize("private", [False, True], ids=["open", "private-with-token"])
def test_failed_handshakes_leave_nothing_behind(private: bool, start_relay: Start) -> None:
    values: dict[str, Any] = {"secret": SECRET, "public_channels": []} if private else {}
    relay = start_relay(**values)
    query = "?token=" + token(["tweets"]) if private else ""
    # Warm up caches and allocator pools before measuring.
    assert _failed_handshake(relay.port, query).startswith(b"HTTP/1.1 426 ")
    for _ in range(200):
        _failed_handshake(relay.port, query)
    before_objects, before_rss = _live_connections(), rss_kb()
    for _ in range(3000):
        _failed_handshake(relay.port, query)
    # Each one used to keep its connection (~9 KB) in a dict for good: 3000 of them, ~27 MB.
    assert _live_connections() - before_objects < 50
    assert rss_kb() - before_rss < 8 * 1024
    assert relay.get("/healthz")[0] == 200


# -- point 2: control frames and one bound on outbound bytes ---------------------


def test_pings_count_against_the_rate_limit_and_a_flood_is_closed_with_4029(
    start_relay: Start,
) -> None:
    relay = start_relay(ops_per_second=20.0, ops_burst=40)
    calm, _ = subscribe(relay.ws_url)
    flood = RawClient(relay.ws_url)
    flood.sock.sendall(flood.pings(400))  # 10 times the burst, in one go, reading nothing
    close = flood.close_code()
    assert close is not None and close.code == 4029
    assert orjson.loads(close.reason)["reason"] == "rate_limited"
    assert _refused(relay, "rate_limited") == 1
    wait_for(lambda: _session_count(relay) == 1, 2 * UNIT, "the flooder to be dropped")
    calm.send('{"op":"ping","id":7}')
    assert orjson.loads(calm.recv(timeout=UNIT)) == {"type": "pong", "id": 7}
    calm.close()
    flood.close()


def _flood(ws_url: str, budget: int, outcome: list[int]) -> None:
    """Send pings without ever reading, up to ``budget`` bytes; record how many went out."""
    client = RawClient(ws_url, rcvbuf=4096)
    blob = client.pings(1000)
    sent = 0
    try:
        while sent < budget:
            client.sock.sendall(blob)
            sent += len(blob)
    except OSError:  # the relay cut us off
        pass
    finally:
        outcome.append(sent)
        client.close()


def test_a_ping_flood_within_the_rate_cannot_grow_the_relay(
    tmp_path: Path, processes: list[RelayProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rate limits out of the way: only the outbound bound can stop this flood.
    monkeypatch.setenv("RELAY_OPS_PER_SECOND", "1000000")
    monkeypatch.setenv("RELAY_OPS_BURST", "1000000")
    monkeypatch.setenv("RELAY_SEND_BUFFER", str(64 * 1024))
    replay = tmp_path / "one.jsonl"
    replay.write_bytes(stream_line(1) + b"\n")
    relay = RelayProcess(
        tmp_path / "relay.log", "--db", str(tmp_path / "r.db"), "--replay", str(replay)
    )
    processes.append(relay)
    before = rss_kb(relay.proc.pid)
    budget = 32 * MB
    outcome: list[int] = []
    threads = [
        threading.Thread(target=_flood, args=(relay.ws_url, budget, outcome)) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(8 * UNIT)
    grown = rss_kb(relay.proc.pid) - before
    print(f"flood: relay grew {grown} KB; sent {outcome}")
    # Old relays answered every ping into an unbounded write buffer: ~16 MB each.
    assert len(outcome) == 3 and all(sent < budget for sent in outcome), outcome
    assert grown < 20 * 1024, f"the relay grew by {grown} KB"
    assert "slow consumer" in (tmp_path / "relay.log").read_text()
    assert relay.get("/healthz")["status"] == "ok"
    assert relay.stop() == 0


def test_a_client_that_reads_nothing_is_closed_within_the_ping_timeout(start_relay: Start) -> None:
    # A send buffer so large that it never overflows here: only a write that cannot
    # complete (the keepalive ping's, or a frame's) can notice this client.
    relay = start_relay(send_buffer=64 * MB, ping_interval=0.2, ping_timeout=2.0)
    hub = relay.relay.hub
    assert hub is not None
    reader, _ = subscribe(relay.ws_url)
    stuck = RawClient(relay.ws_url, rcvbuf=4096)
    stuck.send({"op": "subscribe", "channel": "tweets"})
    wait_for(lambda: sum(len(s.subscriptions) for s in hub.sessions) == 2, UNIT, "2 subscribers")
    # 8 MB, more than the kernel's buffers hold: the stuck client's writes block.
    for batch in range(20):
        relay.push(*(stream_line(batch * 100 + n, "x" * 4000) for n in range(1, 101)))
        assert len(receive_tweets(reader, 100)) == 100
    wait_for(lambda: len(hub.sessions) == 1, 4 * UNIT, "the stuck client to be dropped")
    assert relay.relay.metrics.slow_consumers._value.get() == 0
    assert _refused(relay, "write_timeout") >= 1
    # The reading client, answering keepalive pings, stays.
    relay.push(stream_line(5000))
    assert receive_tweets(reader, 1)[0]["seq"] == 2001
    reader.close()
    stuck.close()


# -- point 7: a large publish is not a slow client -------------------------------


def test_one_publish_larger_than_the_send_buffer_reaches_a_fast_client(start_relay: Start) -> None:
    relay = start_relay(send_buffer=64 * 1024)
    ws, _ = subscribe(relay.ws_url)
    # 300 tweets of ~2.1 KB committed together: ten times the send buffer in one publish.
    relay.push(*(stream_line(n, "y" * 2000) for n in range(1, 301)))
    frames = receive_tweets(ws, 300)
    assert [f["seq"] for f in frames] == list(range(1, 301))
    assert relay.relay.metrics.slow_consumers._value.get() == 0
    ws.close()


def test_a_failure_for_one_session_closes_it_and_the_others_are_served(start_relay: Start) -> None:
    class Broken(TweetFilter):
        def matches(self, lang: str | None, author: str | None, has_media: bool, text: str) -> bool:
            raise RuntimeError("a filter bug")

    relay = start_relay()
    healthy, _ = subscribe(relay.ws_url)
    victim, _ = subscribe(relay.ws_url)
    hub = relay.relay.hub
    assert hub is not None
    # The one test-made part: a subscription whose filter raises (a bug, bad data).
    victim_port = victim.socket.getsockname()[1]
    (broken,) = [s for s in hub.sessions if s.peer.endswith(f":{victim_port}")]
    broken.refilter("tweets", Broken())
    relay.push(stream_line(1), stream_line(2))
    assert [f["seq"] for f in receive_tweets(healthy, 2)] == [1, 2]
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            victim.recv(timeout=UNIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    relay.push(stream_line(3))  # the publisher lives on
    assert receive_tweets(healthy, 1)[0]["seq"] == 3
    healthy.close()


# -- point 6: catch-ups ---------------------------------------------------------


def test_recovered_is_counted_up_to_the_cap_and_every_tweet_still_comes(start_relay: Start) -> None:
    relay = start_relay()  # the default cap: 1000
    count = 1100
    relay.push(*(stream_line(n, tags=("cats",)) for n in range(1, count + 1)))
    relay.wait_seq(count)
    epoch = relay.get("/v1/info")[1]["epoch"]
    for channel in ("tweets", "rule:cats"):
        ws, hello = subscribe(relay.ws_url, channel, since={"epoch": epoch, "seq": 0})
        assert hello["recovered"] == 1000 and hello["recovered_capped"] is True
        assert [f["seq"] for f in receive_tweets(ws, count)] == list(range(1, count + 1))
        ws.close()
    ws, hello = subscribe(relay.ws_url, "tweets", since={"epoch": epoch, "seq": count - 3})
    assert hello["recovered"] == 3 and "recovered_capped" not in hello
    ws.close()


def test_catch_ups_of_one_connection_run_one_at_a_time_in_order(start_relay: Start) -> None:
    relay = start_relay(send_buffer=64 * 1024)
    count = 2000  # 8 MB: far more than the send buffer and the kernel's buffers
    relay.push(*(stream_line(n, "z" * 4000, tags=("cats", "dogs")) for n in range(1, count + 1)))
    relay.wait_seq(count)
    epoch = relay.get("/v1/info")[1]["epoch"]
    client = RawClient(relay.ws_url, rcvbuf=4096)
    hub = relay.relay.hub
    assert hub is not None
    since = {"epoch": epoch, "seq": 0}
    client.send({"op": "subscribe", "channel": "rule:cats", "since": since, "id": 1})
    wait_for(lambda: len(hub.sessions) == 1, UNIT, "the connection")
    (session,) = hub.sessions

    def unsent() -> int:
        return session.backlog()

    wait_for(lambda: unsent() > 32 * 1024, UNIT, "rule:cats's catch-up to wait for the client")
    client.send({"op": "subscribe", "channel": "rule:dogs", "since": since, "id": 2})

    def dogs_waits() -> bool:
        return "rule:dogs" in session.subscriptions and session.catch_up_turn.locked()

    wait_for(dogs_waits, UNIT, "rule:dogs registered")
    client.send({"op": "unsubscribe", "channel": "rule:cats", "id": 3})
    seen: list[tuple[str, Any]] = []
    dogs: list[int] = []
    for frame in client.texts():
        if frame["type"] == "tweet":
            if frame["channel"] == "rule:dogs":
                dogs.append(frame["seq"])
                if len(dogs) == count:
                    break
            continue
        seen.append((frame["type"], frame.get("id")))
    # rule:dogs waited for rule:cats's turn, which its unsubscribe ended at once.
    assert seen == [("subscribed", 1), ("unsubscribed", 3), ("subscribed", 2)]
    assert dogs == list(range(1, count + 1))
    client.close()


def test_live_tweets_held_for_waiting_resumes_stay_within_one_send_buffer(
    start_relay: Start,
) -> None:
    limit = 64 * 1024
    relay = start_relay(send_buffer=limit)
    tags = ("a", "b", "c", "d", "e")
    count = 2000  # 8 MB of backlog for a client that reads nothing
    relay.push(*(stream_line(n, "z" * 4000, tags=tags) for n in range(1, count + 1)))
    relay.wait_seq(count)
    epoch = relay.get("/v1/info")[1]["epoch"]
    hub = relay.relay.hub
    assert hub is not None
    client = RawClient(relay.ws_url, rcvbuf=4096)
    for tag in tags:
        client.send(
            {"op": "subscribe", "channel": f"rule:{tag}", "since": {"epoch": epoch, "seq": 0}}
        )
    wait_for(
        lambda: len(hub.sessions) == 1 and len(next(iter(hub.sessions)).subscriptions) == len(tags),
        UNIT,
        "5 subscriptions",
    )
    (session,) = hub.sessions
    # 400 KB of live tweets for each of the 5 channels while their resumes wait.
    relay.push(*(stream_line(n, "z" * 4000, tags=tags) for n in range(count + 1, count + 101)))
    relay.wait_seq(count + 100)
    held = sum(sub.held_bytes for sub in session.subscriptions.values())
    assert held <= limit + 5000, held
    client.close()


def _write_replay(path: Path, count: int, tags: tuple[str, ...]) -> None:
    with path.open("wb") as out:
        for n in range(1, count + 1):
            out.write(stream_line(n, "w" * 2000, tags=tags) + b"\n")


def test_many_resumes_that_never_read_hold_bounded_memory(
    tmp_path: Path, processes: list[RelayProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_SEND_BUFFER", str(64 * 1024))
    tags = tuple(f"t{i}" for i in range(7))
    count = 2000
    replay = tmp_path / "backlog.jsonl"
    _write_replay(replay, count, tags)
    relay = RelayProcess(
        tmp_path / "relay.log",
        "--db",
        str(tmp_path / "r.db"),
        "--replay",
        str(replay),
        "--speed",
        "max",
        "--no-loop",
    )
    processes.append(relay)
    wait_for(lambda: relay.count() == count, 4 * UNIT, "the backlog stored")
    epoch = relay.get("/v1/info")["epoch"]
    before = rss_kb(relay.proc.pid)
    clients = [RawClient(relay.ws_url, rcvbuf=4096) for _ in range(40)]
    for client in clients:
        for tag in tags:
            client.send(
                {"op": "subscribe", "channel": f"rule:{tag}", "since": {"epoch": epoch, "seq": 0}}
            )
    # Let the catch-ups run as far as the clients' (non-)reading lets them.
    peak = before
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        peak = max(peak, rss_kb(relay.proc.pid))
        time.sleep(0.05)
    print(f"never-reading resumes: relay grew {peak - before} KB")
    # Old relays held a 200-tweet page per catch-up: 280 of them, ~300 MB.
    assert peak - before < 60 * 1024, f"the relay grew by {peak - before} KB"
    assert relay.count() == count  # the object API still answers
    for client in clients:
        client.close()
    assert relay.stop() == 0


# -- point 10: refresh and the subject's limits and pins --------------------------


def test_refreshing_an_anonymous_connection_counts_against_the_subject(start_relay: Start) -> None:
    relay = start_relay(secret=SECRET, max_connections_per_subject=1)
    alice = {"additional_headers": {"Authorization": "Bearer " + token(["tweets"])}}
    first, _ = subscribe(relay.ws_url, **alice)
    anonymous, _ = subscribe(relay.ws_url)
    anonymous.send(orjson.dumps({"op": "refresh", "token": token(["tweets"]), "id": 1}).decode())
    refused = orjson.loads(anonymous.recv(timeout=UNIT))
    assert refused["type"] == "error" and refused["code"] == "forbidden" and refused["id"] == 1
    relay.push(stream_line(1))  # the refused connection goes on as it was
    assert receive_tweets(anonymous, 1)[0]["seq"] == 1
    first.close()
    wait_for(lambda: _session_count(relay) == 1, UNIT, "alice's connection to end")
    anonymous.send(orjson.dumps({"op": "refresh", "token": token(["tweets"]), "id": 2}).decode())
    assert orjson.loads(anonymous.recv(timeout=UNIT))["type"] == "refreshed"
    # Now it is alice's one connection: another one of hers is refused...
    again = ws_connect(relay.ws_url, **alice)
    with pytest.raises(ConnectionClosed) as closed:
        again.recv(timeout=UNIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # ...until it closes and is uncounted.
    anonymous.close()
    wait_for(lambda: _session_count(relay) == 0, UNIT, "the refreshed connection to end")
    later, _ = subscribe(relay.ws_url, **alice)
    later.close()


def test_a_refresh_to_a_pinned_token_bounds_the_existing_subscriptions(start_relay: Start) -> None:
    relay = start_relay(secret=SECRET)
    ws = ws_connect(relay.ws_url)
    ws.send('{"op":"subscribe","channel":"tweets"}')
    ws.send('{"op":"subscribe","channel":"rule:cats","filters":{"lang":"en"}}')
    assert [orjson.loads(ws.recv(timeout=UNIT))["type"] for _ in range(2)] == ["subscribed"] * 2
    pinned = token(["tweets", "rule:*"], filters={"lang": "ja"})
    ws.send(orjson.dumps({"op": "refresh", "token": pinned, "id": 1}).decode())
    replies = [orjson.loads(ws.recv(timeout=UNIT)) for _ in range(3)]
    assert replies[0]["type"] == "refreshed"
    # rule:cats asked for English only: outside the new pin, so it ends.
    assert {"type": "unsubscribed", "channel": "rule:cats"} in replies
    (error,) = [r for r in replies if r["type"] == "error"]
    assert error["code"] == "forbidden" and "rule:cats" in error["message"]
    relay.push(
        stream_line(1, lang="en"),
        stream_line(2, lang="ja"),
        stream_line(3, lang="en"),
        stream_line(4, lang="ja"),
    )
    frames = receive_tweets(ws, 2)
    assert [(f["channel"], f["seq"]) for f in frames] == [("tweets", 2), ("tweets", 4)]
    relay.push(stream_line(5, lang="ja"))
    assert receive_tweets(ws, 1)[0]["seq"] == 5  # and nothing English came in between
    ws.close()


def test_a_refresh_applies_the_new_tokens_rate_and_subscription_limit(start_relay: Start) -> None:
    clock = FakeTime()  # the rate limit's clock: moved by the test only
    relay = start_relay(
        secret=SECRET, ops_per_second=100, ops_burst=4, max_subscriptions=3, wall_clock=clock.clock
    )

    def alice(**limits: float) -> str:
        return issue_token(
            SECRET, subject="alice", channels=["rule:*"], ttl=600, now=clock.now, limits=limits
        )

    def reply(op: dict[str, Any]) -> dict[str, Any]:
        ws.send(orjson.dumps(op).decode())
        answer: dict[str, Any] = orjson.loads(ws.recv(timeout=UNIT))
        return answer

    ws = ws_connect(
        relay.ws_url,
        ping_interval=None,  # no pings of our own: every frame here is counted on purpose
        additional_headers={"Authorization": "Bearer " + alice()},
    )
    for channel in ("rule:a", "rule:b"):
        assert reply({"op": "subscribe", "channel": channel})["type"] == "subscribed"
    slower = alice(ops_per_second=1, max_subscriptions=1)
    assert reply({"op": "refresh", "token": slower, "id": 1})["type"] == "refreshed"
    # The two subscriptions past the new limit stay; a new one is refused.
    refused = reply({"op": "subscribe", "channel": "rule:c"})
    assert refused["type"] == "error" and refused["code"] == "too_many_subscriptions"
    # Four ops took the burst. A second at the old rate would refill it; at the new, one op.
    clock.now += 1.0
    assert reply({"op": "ping"})["type"] == "pong"
    ws.send('{"op":"ping"}')
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=UNIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4029


def test_a_fast_client_keeps_up_with_a_burst_of_large_publishes(
    tmp_path: Path, processes: list[RelayProcess]
) -> None:
    count = 3000  # batches of 500 tweets of ~2.1 KB: each publish past the 1 MiB send buffer
    replay = tmp_path / "burst.jsonl"
    with replay.open("wb") as out:
        # One tweet, a recorded pause of 2 s for the client to subscribe, then a burst
        # with no pause at all: the relay publishes as fast as it commits.
        for n in range(1, count + 1):
            line = orjson.loads(stream_line(n, "w" * 2000))
            line["__relay"] = {"received_at": 1_700_000_000.0 + (0 if n == 1 else 2)}
            out.write(orjson.dumps(line) + b"\n")
    args = ("--db", str(tmp_path / "r.db"), "--replay", str(replay), "--no-loop")
    relay = RelayProcess(tmp_path / "relay.log", *args, "--speed", "1")
    processes.append(relay)
    ws, hello = subscribe(relay.ws_url, "tweets")
    assert count - hello["seq"] > 2000, "the burst came before the client subscribed"
    frames = receive_tweets(ws, count - hello["seq"], timeout=8 * UNIT)
    assert [f["seq"] for f in frames] == list(range(hello["seq"] + 1, count + 1))
    assert "slow consumer" not in (tmp_path / "relay.log").read_text()
    ws.close()
    assert relay.stop() == 0


@pytest.mark.parametrize("enabled", [False, True])
def test_permessage_deflate_is_negotiated_only_when_the_operator_turns_it_on(
    start_relay: Callable[..., RelayServer],
    enabled: bool,
) -> None:
    # Every browser offers deflate: by default it must cost the relay no zlib state and no
    # per-client compression; an operator can still choose it.
    relay = start_relay(compression=enabled)
    ws = ws_connect(relay.ws_url)  # the websockets client offers permessage-deflate
    try:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response else None
        assert (extensions is not None and "permessage-deflate" in extensions) is enabled
        ws.send('{"op":"ping"}')
        assert orjson.loads(ws.recv(timeout=UNIT))["type"] == "pong"
    finally:
        ws.close()
