"""Server-sent events under the WebSocket endpoint's rules: every refusal a status with a
JSON body before the stream starts, the token's end ending the stream with a last event,
the token never in a log line, and the counts by transport.

The access rules on both transports side by side: ``test_access.py`` and
``test_pinned_filters.py``.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from relay.core.auth import issue_token
from relay.testing import RelayClient, RelayClientError, RelayServer, SseClient
from tests.support import UNIT, bundled_sample, counted, stream_line, wait_for
from tests.test_auth import SECRET

Start = Callable[..., RelayServer]


def token(channels: list[str], ttl: float = 24 * 3600, sub: str = "alice", **extra: Any) -> str:
    return issue_token(SECRET, subject=sub, channels=channels, ttl=ttl, now=time.time(), **extra)


@pytest.fixture
def private(start_relay: Start) -> Callable[..., RelayServer]:
    def start(**values: Any) -> RelayServer:
        relay = start_relay(secret=SECRET, public_channels=[], **values)
        relay.push(stream_line(1, tags=("cats",)), stream_line(2, tags=("dogs",)))
        relay.wait_seq(2)
        return relay

    return start


def ask(
    relay: RelayServer, query: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], Any]:
    """One request to ``/v1/events?query``: status, headers, the JSON body of a refusal."""
    request = urllib.request.Request(f"{relay.events_url}?{query}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=UNIT) as answer:
            return answer.status, dict(answer.headers), None  # a stream: not read here
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, dict(refused.headers), orjson.loads(refused.read())


# Made once, when the module is imported (the table below names it): valid for the whole
# run however long it takes (a suite on a busy machine reaches this module after minutes).
GOOD = token(["tweets", "rule:*"], ttl=7 * 24 * 3600)
REFUSALS: list[tuple[str, str, dict[str, str], int, str]] = [
    # (what, query, headers, status, a word of the message)
    ("no channel", "", {}, 400, "name a channel"),
    ("a bad channel name", "channel=nonsense", {}, 400, "unknown channel"),
    ("an unknown parameter", "channel=tweets&chanel=x", {}, 400, "unknown parameter"),
    ("since twice", "channel=tweets&since=e:1&since=e:2", {}, 400, "more than once"),
    ("a since without a seq", "channel=tweets&since=e1", {}, 400, "<epoch>:<seq>"),
    ("a seq past 63 bits", f"channel=tweets&since=e:{2**63}", {}, 400, "largest"),
    ("a seq of 20 digits", f"channel=tweets&since=e:{2**64}", {}, 400, "<epoch>:<seq>"),
    ("a negative seq", "channel=tweets&since=e:-1", {}, 400, "<epoch>:<seq>"),
    ("a bad Last-Event-ID", "channel=tweets", {"Last-Event-ID": "x:y"}, 400, "Last-Event-ID"),
    ("since and since_time", "channel=tweets&since=e:1&since_time=-1h", {}, 400, "not both"),
    ("a bad since_time", "channel=tweets&since_time=yesterday", {}, 400, "since_time"),
    ("a pace without a rewind", "channel=tweets&pace=2", {}, 400, "pace needs"),
    ("a pace of 1", "channel=tweets&since_time=-1h&pace=1", {}, 400, "above 1"),
    ("a pace not a number", "channel=tweets&since_time=-1h&pace=fast", {}, 400, "number"),
    ("has_media not a flag", "channel=tweets&has_media=maybe", {}, 400, "true or false"),
    ("an empty lang", "channel=tweets&lang=", {}, 400, "lang"),
    ("filters on $stats alone", "channel=$stats&lang=en", {}, 400, "$stats takes none"),
    ("since on $stats alone", "channel=$stats&since=e:1", {}, 400, "no history"),
    ("no token", "channel=tweets", {"Authorization": ""}, 401, "needs a token"),
    ("a bad token", "channel=tweets&token=abc.def.ghi", {"Authorization": ""}, 401, ""),
    (
        "a channel not granted",
        "channel=rule:cats",
        {"Authorization": "Bearer " + token(["rule:dogs"])},
        403,
        "rule:cats",
    ),
    (
        "one of several not granted",
        "channel=rule:dogs&channel=rule:cats",
        {"Authorization": "Bearer " + token(["rule:dogs"])},
        403,
        "rule:cats",
    ),
    (
        "a filter wider than the pins",
        "channel=tweets&lang=es",
        {"Authorization": "Bearer " + token(["tweets"], filters={"lang": "en"})},
        403,
        "pins",
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[case[0] for case in REFUSALS])
def test_each_refusal_is_its_status_with_a_json_body_before_the_stream(
    private: Callable[..., RelayServer], case: tuple[str, str, dict[str, str], int, str]
) -> None:
    relay = private()
    _, query, headers, status, words = case
    headers = {"Authorization": f"Bearer {GOOD}", **headers}
    if not headers["Authorization"]:
        del headers["Authorization"]
    got, answer, body = ask(relay, query, **headers)
    assert got == status, body
    assert answer["Content-Type"] == "application/json"
    ((error,),) = body.values()
    assert words in error["message"]
    # A refusal about one of the channels names it, so a client following several knows.
    about = {"channel": "rule:cats"} if "not granted" in case[0] else {}
    assert {k: v for k, v in error.items() if k not in ("message", "reason")} == about
    assert counted(relay.relay.metrics.http_requests, route="/v1/events", status=str(status)) == 1
    hub = relay.relay.hub
    assert hub is not None and not hub.sessions  # nothing of the stream was made


def test_more_channels_than_the_subscription_limit_is_400(
    private: Callable[..., RelayServer],
) -> None:
    relay = private(max_subscriptions=2)
    auth = {"Authorization": f"Bearer {GOOD}"}
    status, _, body = ask(relay, "channel=rule:a&channel=rule:b&channel=$stats", **auth)
    assert status == 400 and "at most 2" in body["errors"][0]["message"]
    with SseClient(relay.events_url, ["rule:a", "rule:b"], token=GOOD) as client:
        assert client.next_frame()["channels"] == ["rule:a", "rule:b"]


def test_other_methods_are_405_and_a_preflight_is_answered(
    private: Callable[..., RelayServer],
) -> None:
    relay = private()
    for method in ("POST", "HEAD", "PUT"):
        status, headers, _ = (
            ask(relay, "channel=tweets", method) if method != "HEAD" else _head(relay)
        )
        assert status == 405 and headers["Allow"] == "GET, OPTIONS", method
    status, headers, _ = ask(
        relay,
        "channel=tweets",
        "OPTIONS",
        Origin="https://example.org",
        **{"Access-Control-Request-Headers": "last-event-id, authorization"},
    )
    assert status == 204 and "Last-Event-ID" in headers["Access-Control-Allow-Headers"]


def _head(relay: RelayServer) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(f"{relay.events_url}?channel=tweets", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=UNIT).close()
    except urllib.error.HTTPError as refused:
        with refused:
            return refused.code, dict(refused.headers), None
    raise AssertionError("HEAD was answered")


def test_a_rule_outside_a_closed_rule_set_is_404_naming_the_rules(start_relay: Start) -> None:
    relay = start_relay(source=bundled_sample())  # its rule set is closed
    status, _, body = ask(relay, "channel=rule:cats&channel=rule:nope")
    assert status == 404
    (error,) = body["errors"]
    assert error["reason"] == "unknownChannel" and "rule:cats" in error["message"]
    assert error["channel"] == "rule:nope"
    assert "rule:nope" in error["message"] and "the bundled sample" in error["message"]
    assert counted(relay.relay.metrics.bad_frames, code="unknown_channel") == 1
    with SseClient(relay.events_url, "rule:cats") as client:
        assert "known" not in client.next_frame()


def test_connection_limits_answer_429_per_address_and_per_subject(
    private: Callable[..., RelayServer],
) -> None:
    relay = private(max_connections_per_subject=2, max_connections_per_address=3)
    alice = [SseClient(relay.events_url, token=GOOD) for _ in range(2)]
    status, headers, body = ask(relay, "channel=tweets", Authorization=f"Bearer {GOOD}")
    assert status == 429 and "alice" in body["errors"][0]["message"]
    assert headers["Retry-After"]
    bob = SseClient(relay.events_url, token=token(["tweets"], sub="bob"))
    # The address's third stream is bob's; a fourth from it is refused whoever it is.
    status, _, body = ask(relay, "channel=tweets", Authorization=f"Bearer {token(['tweets'])}")
    assert status == 429 and "127.0.0.1" in body["errors"][0]["message"]
    assert counted(relay.relay.metrics.refused, reason="connection_limit") == 2
    # A WebSocket counts against the same limits.
    with pytest.raises((RelayClientError, ConnectionClosed)):
        RelayClient(relay.ws_url, token=token(["tweets"], sub="carol")).subscribe()
    relay.push(stream_line(3))
    for client in (*alice, bob):
        assert client.tweets(1)[0]["seq"] == 3
        client.close()
    alice[0] = SseClient(relay.events_url, token=GOOD)  # their streams gone: room again
    alice[0].close()


def test_a_stream_accepted_while_the_relay_stops_accepting_is_503(
    private: Callable[..., RelayServer],
) -> None:
    relay = private()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=UNIT) as sock:
        server = relay.relay.server
        assert server is not None and server.server is not None
        listener = server.server
        wait_for(lambda: len(listener.connections) == 1, UNIT, "the relay to accept it")
        relay.call(server.stop_accepting())  # the socket was accepted before
        sock.sendall(
            b"GET /v1/events?channel=tweets HTTP/1.1\r\nHost: r\r\n"
            b"Authorization: Bearer " + GOOD.encode() + b"\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer


def test_an_expired_token_ends_the_stream_with_a_close_event(
    private: Callable[..., RelayServer],
) -> None:
    relay = private()
    short = token(["tweets"], ttl=1)
    client = SseClient(relay.events_url, token=short, token_in_query=True)
    client.next_event()
    closed = client.wait_closed(timeout=3 * UNIT)
    assert (closed["reason"], closed["code"], closed["seq"]) == ("expired", 4001, 0)
    assert "new token" in closed["message"]
    client.close()
    metrics = relay.relay.metrics
    wait_for(lambda: counted(metrics.sse_closes, reason="expired") == 1, UNIT, "the count")
    # EventSource reconnects by itself: with the same token that is a 401, and it stops.
    assert ask(relay, f"channel=tweets&token={short}")[0] == 401


def test_a_revoked_token_ends_the_stream_with_a_close_event(
    start_relay: Start, tmp_path: Path
) -> None:
    listing = tmp_path / "revoked.txt"
    listing.write_text("")
    relay = start_relay(
        secret=SECRET,
        public_channels=[],
        revoked_tokens_file=str(listing),
        revoked_tokens_interval=0.05,
    )
    lost = token(["rule:*"], token_id="lost-laptop")
    kept = token(["tweets"], sub="bob")
    doomed = SseClient(relay.events_url, ["rule:cats", "rule:dogs"], token=lost)
    other = SseClient(relay.events_url, token=kept)
    doomed.next_event()
    other.next_event()
    listing.write_text("lost-laptop\n")
    closed = doomed.wait_closed(timeout=4 * UNIT)
    assert (closed["reason"], closed["code"]) == ("revoked", 4001)
    relay.push(stream_line(1))
    assert other.tweets(1)[0]["seq"] == 1
    assert ask(relay, f"channel=tweets&token={lost}")[0] == 401
    other.close()


def test_the_token_in_the_query_is_in_no_log_line(
    private: Callable[..., RelayServer], caplog: pytest.LogCaptureFixture
) -> None:
    relay = private()
    caplog.set_level(logging.DEBUG)
    secret_token = token(["tweets"])
    with SseClient(relay.events_url, token=secret_token, token_in_query=True) as client:
        client.next_event()
    assert ask(relay, f"channel=nonsense&token={secret_token}")[0] == 400
    assert ask(relay, f"channel=tweets&token={secret_token}x")[0] == 401
    lines = [r.__dict__ for r in caplog.records if r.name == "relay.access"]
    wait_for(
        lambda: len([r for r in caplog.records if r.name == "relay.access"]) == 3,
        UNIT,
        "three access lines",
    )
    lines = [r.__dict__ for r in caplog.records if r.name == "relay.access"]
    stream = next(line for line in lines if line["message"] == "event stream")
    assert (stream["transport"], stream["method"], stream["status"]) == ("sse", "GET", 200)
    assert stream["path"] == "/v1/events?channel=tweets&token=[redacted]"
    assert stream["closed_by"] == "client" and stream["reason"] == "client"
    refused = [line for line in lines if line["message"] == "request"]
    assert {line["status"] for line in refused} == {400, 401}
    assert all("token=[redacted]" in line["path"] for line in refused)
    text = caplog.text + repr([r.__dict__ for r in caplog.records])
    assert secret_token not in text and secret_token.split(".")[1] not in text


def test_metrics_and_stats_count_connections_and_frames_by_transport(
    pushed: RelayServer,
) -> None:
    relay = pushed
    ws = RelayClient(relay.ws_url)
    ws.subscribe()
    sse = [SseClient(relay.events_url, ["tweets", "$stats"]) for _ in range(2)]
    for client in sse:
        client.next_event()
    relay.push(stream_line(1), stream_line(2))
    ws.tweets(2)
    for client in sse:
        client.tweets(2)
    metrics = relay.relay.metrics
    assert _open(metrics.connections, "sse") == 2
    assert _open(metrics.connections, "websocket") == 1
    assert counted(metrics.frames_sent, transport="sse") >= 2 * 3  # subscribed + 2 tweets
    assert counted(metrics.frames_sent, transport="websocket") >= 3
    text = urllib.request.urlopen(relay.url + "/metrics", timeout=UNIT).read().decode()
    assert 'relay_connections{transport="sse"} 2.0' in text
    assert 'relay_frames_sent_total{transport="sse"}' in text
    stats = relay.relay.stats
    assert stats is not None
    sample = relay.call(stats.sample())
    assert sample["transports"] == {"sse": 2, "websocket": 1} and sample["connections"] == 3
    frame = sse[0].next_frame(until=lambda f: f["type"] == "stats" and f["time"] == sample["time"])
    assert frame["transports"] == {"sse": 2, "websocket": 1}
    for client in sse:
        client.close()
    wait_for(lambda: _open(metrics.connections, "sse") == 0, UNIT, "the streams gone")
    assert counted(metrics.sse_closes, reason="client") == 2
    ws.close()


def _open(gauge: Any, transport: str) -> float:
    value: float = gauge.labels(transport)._value.get()
    return value
