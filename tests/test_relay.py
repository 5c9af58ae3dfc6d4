"""The embedded relay end to end: recorded stream -> SQLite -> WebSocket clients and object API."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.core.tweets import parse_line
from relay.sources.synth import write_stream
from relay.testing import RelayServer
from tests.support import receive_tweets, subscribe, wait_for

COUNT = 600


def _recording(tmp_path: Path) -> tuple[Path, list[dict[str, object]]]:
    path = tmp_path / "stream.jsonl"
    write_stream(path, COUNT, seed=11)
    tweets = [
        t.object | {"channels": t.channels}
        for line in path.read_bytes().splitlines()
        for t in parse_line(line).tweets
    ]
    return path, tweets


def test_a_replayed_stream_reaches_every_subscriber_in_order_and_is_stored_once(
    tmp_path: Path,
    start_relay: Callable[..., RelayServer],
) -> None:
    path, expected = _recording(tmp_path)
    rule = next(c for c in expected[0]["channels"] if c.startswith("rule:"))  # type: ignore[attr-defined]
    in_rule = [t["id"] for t in expected if rule in t["channels"]]  # type: ignore[operator]

    relay = start_relay(replay=path, speed=200.0)
    # Clients join while the replay runs; resuming from seq 0 of this epoch gives them the
    # tweets stored before they joined, then the live ones.
    start = {"epoch": relay.get("/v1/info")[1]["epoch"], "seq": 0}
    # The test reads one client at a time: the others buffer on their side meanwhile.
    clients = [subscribe(relay.ws_url, "tweets", since=start, max_queue=None) for _ in range(3)]
    rule_client, _ = subscribe(relay.ws_url, rule, since=start, max_queue=None)
    got = [receive_tweets(ws, COUNT) for ws, _ in clients]
    got_rule = receive_tweets(rule_client, len(in_rule))

    stored = relay.all_tweets()
    assert [t["id"] for t in stored] == [t["id"] for t in expected]
    seqs = [t["seq"] for t in stored]
    assert seqs == sorted(set(seqs))
    for frames in got:
        assert [f["tweet"]["id"] for f in frames] == [t["id"] for t in expected]
        assert [f["seq"] for f in frames] == seqs
        assert [f["tweet"] for f in frames] == stored
    assert [f["tweet"]["id"] for f in got_rule] == in_rule
    assert all(f["channel"] == rule for f in got_rule)
    for ws, _ in [*clients, (rule_client, None)]:
        ws.close()


def test_replaying_the_same_file_twice_stores_nothing_new(
    tmp_path: Path,
    start_relay: Callable[..., RelayServer],
) -> None:
    path, _ = _recording(tmp_path)
    first = start_relay(replay=path)
    first.wait_seq(COUNT)
    wait_for(
        lambda: first.relay.ingest is not None and first.relay.ingest.finished.is_set(),
        20,
        "the first replay to finish",
    )
    before = first.all_tweets()
    first.stop()

    second = start_relay(replay=path)
    wait_for(
        lambda: second.relay.ingest is not None and second.relay.ingest.finished.is_set(),
        20,
        "the second replay to finish",
    )
    assert second.relay.metrics.duplicates._value.get() == COUNT
    assert second.all_tweets() == before
    assert second.relay.hub is not None and second.relay.hub.head == before[-1]["seq"]


@pytest.fixture
def replayed(
    tmp_path: Path,
    start_relay: Callable[..., RelayServer],
) -> tuple[RelayServer, list[dict[str, object]]]:
    """A relay that has stored the whole recording, and the tweets it holds."""
    path, expected = _recording(tmp_path)
    relay = start_relay(replay=path)
    relay.wait_seq(COUNT)
    return relay, expected


def test_the_object_api_serves_single_tweets_and_users(
    replayed: tuple[RelayServer, list[dict[str, object]]],
) -> None:
    relay, expected = replayed
    seq, first = next((n, t) for n, t in enumerate(expected, 1) if t["author"])
    status, body = relay.get(f"/v1/objects/tweets/{first['id']}")
    assert status == 200
    assert body["id"] == first["id"] and body["objectType"] == "objects.tweets"
    assert body["seq"] == seq
    assert body["text"] == first["text"]
    author = first["author"]
    assert isinstance(author, dict)
    status, user = relay.get(f"/v1/objects/users/{author['id']}")
    assert status == 200
    assert user["username"] == author["username"]
    assert user["objectType"] == "objects.users"
    status, body = relay.get("/v1/objects/tweets/0")
    assert status == 404 and body["errors"][0]["reason"] == "notFound"


def test_info_tells_clients_where_the_stream_lives(
    replayed: tuple[RelayServer, list[dict[str, object]]],
) -> None:
    relay, expected = replayed
    status, info = relay.get("/v1/info")
    assert status == 200
    assert info["stream_url"] == relay.ws_url
    assert info["epoch"] == relay.relay.store.epoch  # type: ignore[union-attr]
    assert info["seq"] == COUNT
    rules = {c for t in expected for c in t["channels"]}  # type: ignore[attr-defined]
    assert set(info["channels"]) == rules
    assert relay.get("/healthz") == (200, {"status": "ok"})
    assert relay.get("/readyz") == (200, {"status": "ready"})


def test_metrics_count_what_flowed(
    replayed: tuple[RelayServer, list[dict[str, object]]],
) -> None:
    relay, _ = replayed
    with urllib.request.urlopen(relay.url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    assert f"relay_tweets_stored_total {COUNT}.0" in text
    assert "_created" not in text  # one series a counter: no creation timestamps
