"""Server-sent events (``GET /v1/events``): the format on the wire, resume, one stream of
many channels, filters, reset, keep-alive, slow clients, the end of a stream, deletions.

Refusals, tokens, logs and metrics: ``test_sse_access.py``; the access rules on both
transports: ``test_access.py``, ``test_pinned_filters.py``; ``curl``: ``test_sse_curl.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from relay.core.filters import parse_filter
from relay.sources.synth import write_stream
from relay.testing import RelayClient, RelayServer, SseClient
from tests.support import ROOT, UNIT, RelayProcess, counted, stream_line, wait_for

Start = Callable[..., RelayServer]


def _epoch(relay: RelayServer) -> str:
    return str(relay.get("/v1/info")[1]["epoch"])


def _pump(relay: RelayServer, first: int, count: int, stop: threading.Event) -> threading.Thread:
    """Push tweets steadily from another thread (ingest goes on while clients come and go)."""

    def run() -> None:
        for n in range(count):
            if stop.is_set():
                return
            relay.push(stream_line(first + n, f"tweet {n}"))
            if n % 20 == 0:
                time.sleep(0.002)  # pacing only, not synchronisation

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _blocks(data: bytes) -> list[dict[str, str]]:
    """Events of raw stream bytes, by hand: blocks at blank lines, ``field: value`` lines."""
    out = []
    for block in data.split(b"\n\n"):
        fields: dict[str, str] = {}
        for line in block.split(b"\n"):
            if line and not line.startswith(b":"):
                name, _, value = line.partition(b": ")
                fields[name.decode()] = value.decode()
        if fields:
            out.append(fields)
    return out


def test_a_client_with_no_sse_library_reads_the_stream_from_a_socket(pushed: RelayServer) -> None:
    relay = pushed
    relay.push(stream_line(1))
    relay.wait_seq(1)
    epoch = _epoch(relay)
    with socket.create_connection(("127.0.0.1", relay.port), timeout=UNIT) as sock:
        sock.sendall(
            b"GET /v1/events?channel=tweets HTTP/1.1\r\nHost: relay\r\n"
            b"Accept: text/event-stream\r\nAccept-Encoding: gzip, deflate, br\r\n\r\n"
        )
        data = b""
        while data.count(b"\n\n") < 2:  # the retry hint, subscribed (the head ends CRLF CRLF)
            data += sock.recv(65536)
        relay.push(stream_line(2, "two"), stream_line(3, "three"))
        while data.count(b"\n\n") < 4:
            data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in headers and "content-length" not in headers
    retry, hello, *tweets = _blocks(body)
    assert 1000 <= int(retry["retry"]) <= 3000
    # Nothing comes from the store: the reply names the position the stream starts at.
    assert hello["event"] == "subscribed" and hello["id"] == f"{epoch}:1"
    assert orjson.loads(hello["data"]) == {
        "type": "subscribed",
        "channel": "tweets",
        "epoch": epoch,
        "seq": 1,
        "recovered": 0,
    }
    assert [t["id"] for t in tweets] == [f"{epoch}:2", f"{epoch}:3"]
    assert {t["event"] for t in tweets} == {"tweet"}
    data = orjson.loads(tweets[0]["data"])
    assert (data["type"], data["channel"], data["seq"]) == ("tweet", "tweets", 2)
    assert data["channels"] == ["tweets"] and data["tweet"]["text"] == "two"


def test_the_retry_hint_is_drawn_per_stream(pushed: RelayServer) -> None:
    hints = set()
    for _ in range(8):
        with SseClient(pushed.events_url) as client:
            client.next_event()
            assert client.retry is not None and 1000 <= client.retry <= 3000
            hints.add(client.retry)
    assert len(hints) > 1


def test_resume_by_last_event_id_while_ingest_continues_has_no_gap_and_no_duplicate(
    pushed: RelayServer,
) -> None:
    relay = pushed
    client = SseClient(relay.events_url)
    client.next_event()
    stop = threading.Event()
    pump = _pump(relay, 10_000, 2000, stop)
    before = client.tweets(200)
    client = client.resume()  # away while tweets keep coming, back with Last-Event-ID
    pump.join(8 * UNIT)
    relay.wait_seq(2000)
    after = client.tweets(1800)
    client.close()
    seqs = [t["seq"] for t in before + after]
    assert seqs == list(range(1, 2001)), "a gap or a duplicate across the resume"
    assert [t["tweet"]["id"] for t in before + after] == [str(10_000 + n) for n in range(2000)]


def test_since_in_the_query_resumes_and_last_event_id_wins_over_it(pushed: RelayServer) -> None:
    relay = pushed
    relay.push(*(stream_line(n) for n in range(1, 11)))
    relay.wait_seq(10)
    epoch = _epoch(relay)
    with SseClient(relay.events_url, since=(epoch, 4)) as client:
        assert client.next_frame()["recovered"] == 6
        assert [t["seq"] for t in client.tweets(6)] == list(range(5, 11))
    with SseClient(relay.events_url, since=(epoch, 4), last_event_id=f"{epoch}:8") as client:
        assert client.next_frame()["recovered"] == 2
        assert [t["seq"] for t in client.tweets(2)] == [9, 10]
        relay.push(stream_line(11))
        assert client.tweets(1)[0]["seq"] == 11
        assert client.last_event_id == f"{epoch}:11"


TAGS = [("cats",), ("dogs",), ("cats", "dogs"), ("birds",), ("dogs", "birds"), ("cats",)]


def test_one_stream_of_several_channels_sends_each_tweet_once_with_increasing_ids(
    pushed: RelayServer,
) -> None:
    relay = pushed
    relay.push(*(stream_line(n, tags=TAGS[n % len(TAGS)]) for n in range(1, 31)))
    relay.wait_seq(30)
    epoch = _epoch(relay)
    client = SseClient(relay.events_url, ["rule:dogs", "rule:cats", "$stats"], since=(epoch, 0))
    hello = client.next_frame(until=lambda f: f["type"] == "subscribed" and "channels" in f)
    assert hello["channels"] == ["rule:dogs", "rule:cats"] and "channel" not in hello
    assert client.subscribed.keys() >= {"rule:dogs", "rule:cats", "$stats"}
    stored = client.tweets(25)  # 30 stored, 5 of them birds alone
    # Live, while the stream is also half-way: more of each kind.
    relay.push(*(stream_line(n, tags=TAGS[n % len(TAGS)]) for n in range(31, 49)))
    live = client.until_seq(48, channel="rule:cats")
    client.close()
    events = [e for e in client.events if e.event == "tweet"]
    seqs = [int(e.id.split(":")[1]) for e in events if e.id]
    assert len(seqs) == len(events) == len(stored) + len(live)
    assert seqs == sorted(set(seqs)), "ids must strictly increase: one event per tweet"
    expected = [n for n in range(1, 49) if set(TAGS[n % len(TAGS)]) & {"cats", "dogs"}]
    assert seqs == expected
    for frame in stored + live:
        tags = TAGS[int(frame["tweet"]["id"]) % len(TAGS)]
        on = [c for c in ("rule:dogs", "rule:cats") if c.removeprefix("rule:") in tags]
        assert frame["channels"] == on and frame["channel"] == on[0], frame["seq"]


def test_a_stream_of_tweets_and_a_rule_lists_the_rule_where_a_tweet_is_on_it(
    pushed: RelayServer,
) -> None:
    relay = pushed
    relay.push(stream_line(1, tags=("cats",)), stream_line(2, tags=("dogs",)))
    relay.wait_seq(2)
    epoch = _epoch(relay)
    with SseClient(relay.events_url, ["tweets", "rule:cats"], since=(epoch, 0)) as client:
        relay.push(stream_line(3, tags=("cats", "dogs")), stream_line(4, tags=("dogs",)))
        frames = client.tweets(4)
    assert [f["channels"] for f in frames] == [
        ["tweets", "rule:cats"],
        ["tweets"],
        ["tweets", "rule:cats"],
        ["tweets"],
    ]
    assert [f["seq"] for f in frames] == [1, 2, 3, 4]


FILTERS: list[dict[str, Any]] = [
    {"lang": "es"},
    {"lang": ["es", "ja"]},
    {"author": "@USER_u2"},
    {"keyword": "Orange cat"},
    {"has_media": False, "lang": "en"},
]


def _filtered_lines() -> list[bytes]:
    texts = ["an orange cat", "a grey cat", "orange juice", "the cat is orange", "dogs"]
    langs = ["en", "es", "ja", "es", "en"]
    return [
        stream_line(n, texts[n % 5], lang=langs[(n // 2) % 5], author=f"u{n % 3}")
        for n in range(1, 41)
    ]


def test_filters_as_query_parameters_mean_what_the_websocket_subscribe_means(
    pushed: RelayServer,
) -> None:
    relay = pushed
    lines = _filtered_lines()
    relay.push(*lines[:20])
    relay.wait_seq(20)
    epoch = _epoch(relay)
    clients: list[tuple[dict[str, Any], RelayClient, SseClient]] = []
    for filters in FILTERS:  # from the store, then live
        ws = RelayClient(relay.ws_url)
        ws.subscribe("tweets", since=(epoch, 0), filters=filters)
        sse = SseClient(relay.events_url, "tweets", since=(epoch, 0), filters=filters)
        assert sse.next_frame()["filters"] == ws.subscribed["tweets"]["filters"]
        clients.append((filters, ws, sse))
    relay.push(*lines[20:])
    relay.wait_seq(40)
    _, body = relay.get("/v1/objects/tweets?sort=seq&limit=100")
    for filters, ws, sse in clients:
        matching = parse_filter(filters)
        expected = [
            t["seq"]
            for t in body["results"]
            if matching.matches(t["lang"], t["author"]["username"], False, t["text"])
        ]
        assert 0 < len(expected) < 40, filters
        assert [f["seq"] for f in ws.until_seq(expected[-1])] == expected, filters
        assert [f["seq"] for f in sse.until_seq(expected[-1])] == expected, filters
        assert expected[0] <= 20 < expected[-1], "some from the store, some live"
        ws.close()
        sse.close()


def test_a_stale_epoch_or_a_position_ahead_gets_a_reset_carrying_the_id_of_the_head(
    pushed: RelayServer,
) -> None:
    relay = pushed
    relay.push(stream_line(1), stream_line(2))
    relay.wait_seq(2)
    epoch = _epoch(relay)
    ids = iter(range(3, 10))
    for position in ("0123456789abcdef:5", f"{epoch}:99"):
        with SseClient(relay.events_url, last_event_id=position) as client:
            head = relay.head
            reset = client.next_event()
            assert reset.event == "reset" and reset.id == f"{epoch}:{head}"
            assert reset.json() == {
                "type": "reset",
                "channel": "tweets",
                "epoch": epoch,
                "seq": head,
            }
            hello = client.next_event()
            assert hello.event == "subscribed" and hello.id == f"{epoch}:{head}"
            relay.push(stream_line(next(ids)))
            tweet = client.tweets(1)[0]
            assert tweet["seq"] == head + 1 and client.last_event_id == f"{epoch}:{tweet['seq']}"
            assert client.resets == [reset.json()]


def test_keep_alive_comments_keep_an_idle_stream_open(start_relay: Start) -> None:
    relay = start_relay(sse_keepalive=0.05)
    with SseClient(relay.events_url) as client:
        client.next_event()
        wait_for(lambda: client.comments >= 5, 2 * UNIT, "five keep-alive comments")
        relay.push(stream_line(1))
        assert client.tweets(1)[0]["seq"] == 1  # the stream is still open after them
        assert client.closed is None


def test_a_never_reading_stream_is_cut_and_the_others_keep_receiving(start_relay: Start) -> None:
    relay = start_relay(send_buffer=64 * 1024)
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
    stuck.settimeout(UNIT)
    stuck.connect(("127.0.0.1", relay.port))
    stuck.sendall(b"GET /v1/events?channel=tweets HTTP/1.1\r\nHost: relay\r\n\r\n")
    reader = SseClient(relay.events_url)
    reader.next_event()
    hub = relay.relay.hub
    assert hub is not None
    wait_for(lambda: len(hub.sessions) == 2, UNIT, "two streams")
    metrics = relay.relay.metrics
    big = "x" * 20_000
    received: list[dict[str, Any]] = []
    for batch in range(1000):  # at most 40 MB: far past any kernel buffer
        relay.push(*(stream_line(batch * 2 + n, big) for n in range(2)))
        received += reader.tweets(2, timeout=2 * UNIT)  # on time, every batch
        if metrics.slow_consumers._value.get() >= 1:
            break
    assert metrics.slow_consumers._value.get() == 1
    assert [f["seq"] for f in received] == list(range(1, len(received) + 1))
    data = b""
    while chunk := stuck.recv(1 << 16):
        data += chunk
    stuck.close()
    last = _blocks(data.partition(b"\r\n\r\n")[2])[-1]
    assert last["event"] == "close"
    reason = orjson.loads(last["data"])
    assert (reason["reason"], reason["code"]) == ("slow_consumer", 4008)
    assert 0 < reason["seq"] < len(received)
    wait_for(lambda: len(hub.sessions) == 1, 2 * UNIT, "the relay to drop the slow stream")
    assert counted(metrics.sse_closes, reason="slow_consumer") == 1
    relay.push(stream_line(99_999))
    assert reader.tweets(1)[0]["tweet"]["id"] == "99999"
    reader.close()


def test_stopping_the_relay_ends_each_stream_with_a_close_event(start_relay: Start) -> None:
    relay = start_relay()
    relay.push(stream_line(1))
    relay.wait_seq(1)
    one = SseClient(relay.events_url, since=(_epoch(relay), 0))
    two = SseClient(relay.events_url, ["rule:cats", "rule:dogs"])
    one.tweets(1)
    two.next_event()
    relay.stop()
    assert one.wait_closed() == {"type": "close", "reason": "shutdown", "seq": 1, "code": 1001}
    assert two.wait_closed() == {"type": "close", "reason": "shutdown", "seq": 0, "code": 1001}


def test_sigterm_ends_each_stream_with_a_close_event_and_the_relay_exits_0(
    tmp_path: Path,
) -> None:
    recording = tmp_path / "stream.jsonl"
    write_stream(recording, 3000, seed=5)
    relay = RelayProcess(
        tmp_path / "r.log", "--db", str(tmp_path / "r.db"), "--replay", str(recording)
    )
    try:
        client = SseClient(relay.url + "/v1/events")
        last = client.tweets(5)[-1]["seq"]
        relay.proc.send_signal(signal.SIGTERM)
        closed = client.wait_closed(timeout=8 * UNIT)
        last = max([last, *(f["seq"] for f in client.frames if f["type"] == "tweet")])
        assert closed == {"type": "close", "reason": "shutdown", "seq": last, "code": 1001}
        assert relay.proc.wait(10) == 0
    finally:
        relay.close()


def test_a_deletion_reaches_a_stream_of_several_channels_once_and_only_for_its_tweets(
    pushed: RelayServer, tmp_path: Path
) -> None:
    relay = pushed
    relay.push(
        stream_line(1, tags=("cats", "dogs")),
        stream_line(2, tags=("birds",)),
        stream_line(3, tags=("dogs",)),
    )
    relay.wait_seq(3)
    client = SseClient(relay.events_url, ["rule:cats", "rule:dogs"])
    client.next_event()
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n3\n")
    done = subprocess.run(
        [sys.executable, "-m", "relay", "delete", "--from-file", str(ids)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RELAY_DB": relay.relay.settings.db},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    deleted = [client.next_frame(8 * UNIT, until=lambda f: f["type"] == "deleted")]
    deleted.append(client.next_frame(8 * UNIT, until=lambda f: f["type"] == "deleted"))
    assert sorted(d["id"] for d in deleted) == ["1", "3"]  # birds' tweet is not its own
    assert all(d["channels"] == ["rule:cats", "rule:dogs"] for d in deleted)
    relay.push(stream_line(4, tags=("cats",)))
    assert client.tweets(1)[0]["seq"] == 4
    assert [f["id"] for f in client.frames if f["type"] == "deleted"] == [d["id"] for d in deleted]
    client.close()


def test_a_stream_of_several_channels_resumes_in_one_pass_on_both_stores(
    make_store: Any, start_relay: Start
) -> None:
    relay = start_relay(store=make_store.url())
    relay.push(
        *(stream_line(n, lang="en" if n % 4 else "es", tags=TAGS[n % 6]) for n in range(1, 61))
    )
    relay.wait_seq(60)
    epoch = _epoch(relay)
    wanted = ["rule:cats", "rule:birds"]
    expected = [
        n for n in range(1, 61) if n % 4 and set(TAGS[n % 6]) & {"cats", "birds"}
    ]  # lang en only
    client = SseClient(relay.events_url, wanted, since=(epoch, 0), filters={"lang": "en"})
    first = client.tweets(len(expected) // 2)
    client = client.resume()
    rest = client.tweets(len(expected) - len(first))
    client.close()
    frames = first + rest
    assert [f["seq"] for f in frames] == expected
    for frame in frames:
        on = [c for c in wanted if c.removeprefix("rule:") in TAGS[frame["seq"] % 6]]
        assert frame["channels"] == on and frame["tweet"]["lang"] == "en"


def test_resume_after_a_kill_9_of_the_relay_misses_nothing_it_committed(tmp_path: Path) -> None:
    recording = tmp_path / "stream.jsonl"
    write_stream(recording, 3000, seed=5)
    db = str(tmp_path / "r.db")
    first = RelayProcess(
        tmp_path / "1.log", "--db", db, "--replay", str(recording), "--speed", "50"
    )
    try:
        client = SseClient(first.url + "/v1/events")
        last = client.tweets(20)[-1]["seq"]
        last_id = client.last_event_id
        first.proc.kill()  # no drain, no last event: the stream just stops
        first.proc.wait(UNIT)
        assert client.closed is None
        client.close()
    finally:
        first.close()
    second = RelayProcess(tmp_path / "2.log", "--db", db, "--replay", str(recording))
    try:
        head = int(second.get("/v1/info")["seq"])  # type: ignore[call-overload]
        assert head > last
        with SseClient(second.url + "/v1/events", last_event_id=last_id) as client:
            resumed = client.until_seq(head, timeout=8 * UNIT)
        seqs = [f["seq"] for f in resumed]
        assert seqs[: head - last] == list(range(last + 1, head + 1)), "a gap or a duplicate"
    finally:
        second.stop()


def test_a_slow_stream_gets_what_came_while_it_pushed_back_in_one_write(
    start_relay: Start,
) -> None:
    import asyncio

    from relay.store import StoredTweet

    relay = start_relay()  # the default send buffer: 1 MiB
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
    slow.settimeout(UNIT)
    slow.connect(("127.0.0.1", relay.port))
    slow.sendall(b"GET /v1/events?channel=tweets HTTP/1.1\r\nHost: relay\r\n\r\n")
    hub = relay.relay.hub
    assert hub is not None
    wait_for(lambda: sum(len(s.subscriptions) for s in hub.sessions) == 1, UNIT, "the stream")
    (session,) = hub.sessions
    writes_total = relay.relay.metrics.stream_writes

    async def publish(count: int) -> tuple[int, bool, int, float]:
        first = hub.head + 1
        hub.publish(
            [
                StoredTweet(seq, ("tweets",), orjson.dumps({"id": str(seq), "text": "x" * 2000}))
                for seq in range(first, first + count)
            ]
        )
        await asyncio.sleep(0)  # the hub's flush: a write, or the frames held back
        await asyncio.sleep(0)
        return first + count - 1, session.held_back, session.writes, writes_total._value.get()

    held = False
    for _ in range(5000):  # at most 10 MB: past any kernel buffer
        last, held, writes, all_writes = relay.call(publish(1))
        if held:
            break
    assert held and not session.closed
    for _ in range(40):  # 120 tweets while the stream pushes back: no write at all
        last, held, *counts = relay.call(publish(3))
        assert held and counts == [writes, all_writes]
    end = f"id: {hub.epoch}:{last}\n".encode()
    data = b""
    while not (end in data[-16384:] and data.endswith(b"\n\n")):  # the last event whole
        data += slow.recv(1 << 16)
    slow.close()
    events = _blocks(data.partition(b"\r\n\r\n")[2])
    seqs = [int(e["id"].rpartition(":")[2]) for e in events if e.get("event") == "tweet"]
    assert seqs == list(range(1, last + 1))  # every tweet, in order, once

    async def counts() -> tuple[int, float]:
        return session.writes, writes_total._value.get()

    assert relay.call(counts()) == (writes + 1, all_writes + 1)
    assert relay.relay.metrics.slow_consumers._value.get() == 0
