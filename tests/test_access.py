"""Access control on a live relay: tokens before the upgrade, grants, limits, expiry, fuzzing."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import jwt
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.core.auth import issue_token
from relay.testing import RelayServer
from tests.streams import TRANSPORTS, ended, open_stream, received, refusal
from tests.support import UNIT, receive_tweets, stream_line, subscribe, ws_connect
from tests.test_auth import GOOD_CLAIMS, SECRET, _forge

Start = Callable[..., RelayServer]


def token(channels: list[str], ttl: float = 600, sub: str = "alice", **extra: Any) -> str:
    return issue_token(SECRET, subject=sub, channels=channels, ttl=ttl, now=time.time(), **extra)


@pytest.fixture
def private(start_relay: Callable[..., RelayServer]) -> Start:
    """A relay where every channel needs a token; its source fed by the test."""

    def start(**values: Any) -> RelayServer:
        relay = start_relay(secret=SECRET, public_channels=[], **values)
        relay.push(
            stream_line(1, "a cat", tags=("cats",)),
            stream_line(2, "a dog", tags=("dogs",), lang="es"),
        )
        relay.wait_seq(2)
        return relay

    return start


def refused_status(url: str, **connect_args: Any) -> int:
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(url, **connect_args)
    return int(refused.value.response.status_code)


def now_claims(**changes: Any) -> dict[str, Any]:
    return {**GOOD_CLAIMS, "exp": time.time() + 600, **changes}


BAD_TOKENS = {
    "forged signature": lambda: _forge(
        {"alg": "HS256", "typ": "JWT"}, now_claims(), b"not-the-relay-secret-but-long-enough"
    ),
    "alg none": lambda: _forge({"alg": "none", "typ": "JWT"}, now_claims()),
    "another algorithm": lambda: _forge(
        {"alg": "HS512", "typ": "JWT"}, now_claims(), SECRET.encode()
    ),
    "expired": lambda: jwt.encode(now_claims(exp=time.time() - 60), SECRET, "HS256"),
    "not yet valid": lambda: jwt.encode(now_claims(nbf=time.time() + 60), SECRET, "HS256"),
    "missing sub": lambda: jwt.encode(
        {"exp": time.time() + 60, "channels": ["tweets"]}, SECRET, "HS256"
    ),
    "missing exp": lambda: jwt.encode({"sub": "x", "channels": ["tweets"]}, SECRET, "HS256"),
    "garbage": lambda: "garbage",
    # Headers PyJWT itself refuses, unsigned: anyone can send them.
    "crit naming a claim": lambda: _forge({"alg": "HS256", "crit": ["exp"]}, now_claims()),
    "crit empty": lambda: _forge({"alg": "HS256", "crit": []}, now_claims()),
    "crit not a list": lambda: _forge({"alg": "HS256", "crit": "x"}, now_claims()),
    "kid not a string": lambda: _forge({"alg": "HS256", "kid": 5}, now_claims(), SECRET.encode()),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_a_bad_token_is_refused_with_401_before_the_stream_and_on_the_object_api(
    private: Start, case: str
) -> None:
    relay = private()
    bad = BAD_TOKENS[case]()
    for transport in TRANSPORTS:  # before the upgrade, or before the event stream
        assert refusal(transport, relay, token=bad, in_query=True) == "unauthorized"
        assert refusal(transport, relay, token=bad) == "unauthorized"
    status, body = relay.get("/v1/objects/tweets?token=" + bad)
    assert status == 401 and body["errors"][0]["reason"] == "unauthorized"


@pytest.mark.parametrize("crit", [["exp"], [], "x"])
def test_a_refresh_with_a_header_the_jwt_library_refuses_is_an_unauthorized_frame(
    private: Start, crit: object, caplog: pytest.LogCaptureFixture
) -> None:
    relay = private()
    caplog.set_level(logging.INFO)
    ws, _ = subscribe(
        relay.ws_url, additional_headers={"Authorization": "Bearer " + token(["tweets"])}
    )
    bad = _forge({"alg": "HS256", "crit": crit}, now_claims(), SECRET.encode())
    ws.send(orjson.dumps({"op": "refresh", "token": bad, "id": 7}).decode())
    refused = orjson.loads(ws.recv(timeout=UNIT))
    assert (refused["type"], refused["code"], refused["id"]) == ("error", "unauthorized", 7)
    # The connection goes on with its old token.
    relay.push(stream_line(3))
    assert receive_tweets(ws, 1)[0]["seq"] == 3
    ws.close()
    problems = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems]


def test_no_token_on_a_private_relay_is_401_never_an_empty_200(private: Start) -> None:
    relay = private()
    assert refused_status(relay.ws_url) == 401
    assert refusal("sse", relay) == refusal("sse", relay, "$stats") == "unauthorized"
    assert relay.get("/v1/objects/tweets")[0] == 401
    assert relay.get("/v1/objects/tweets/1")[0] == 401
    assert relay.get("/healthz") == (200, {"status": "ok"})
    assert relay.get("/readyz")[0] == 200
    assert relay.get("/v1/info")[1]["public"] is False


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_token_for_one_rule_never_sees_another(private: Start, transport: str) -> None:
    relay = private()
    cats = token(["rule:cats"])
    stream = open_stream(transport, relay, "rule:cats", token=cats)
    for channels in ("rule:dogs", "tweets", ["rule:cats", "rule:dogs"], ["rule:cats", "tweets"]):
        assert refusal(transport, relay, channels, token=cats) == "forbidden", channels
    relay.push(
        stream_line(3, tags=("dogs",)),
        stream_line(4, tags=("dogs", "cats")),
        stream_line(5, tags=("cats",)),
    )
    frames = stream.tweets(2)
    assert [(f["channel"], f["tweet"]["id"]) for f in frames] == [
        ("rule:cats", "4"),
        ("rule:cats", "5"),
    ]
    stream.close()
    # The object API applies the same grant.
    status, body = relay.get(f"/v1/objects/tweets?sort=seq&token={cats}")
    assert status == 200 and [t["id"] for t in body["results"]] == ["1", "4", "5"]
    assert relay.get(f"/v1/objects/tweets?rule=dogs&token={cats}")[0] == 403
    # Outside the grant answers like missing: no hint that the tweet exists.
    assert relay.get(f"/v1/objects/tweets/2?token={cats}")[0] == 404
    assert relay.get(f"/v1/objects/tweets/1?token={cats}")[0] == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_public_channels_need_no_token_and_others_still_do(
    start_relay: Callable[..., RelayServer], transport: str
) -> None:
    relay = start_relay(secret=SECRET, public_channels=["rule:cats"])
    relay.push(stream_line(1, tags=("cats",)), stream_line(2, tags=("dogs",)))
    relay.wait_seq(2)
    stream = open_stream(transport, relay, "rule:cats")
    assert refusal(transport, relay, "rule:dogs") == "unauthorized"
    assert refusal(transport, relay, ["rule:cats", "rule:dogs"]) == "unauthorized"
    relay.push(stream_line(3, tags=("dogs",)), stream_line(4, tags=("cats",)))
    assert [f["seq"] for f in stream.tweets(1)] == [4]
    status, body = relay.get("/v1/objects/tweets?sort=seq")
    assert status == 200 and [t["id"] for t in body["results"]] == ["1", "4"]
    stream.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connection_limits_refuse_the_extra_connection_only(private: Start, transport: str) -> None:
    relay = private(max_connections_per_subject=2)
    alice = token(["tweets"])
    first = open_stream(transport, relay, token=alice)
    second = open_stream(transport, relay, token=alice)
    # The third of the subject, whichever transport the first two use.
    for other in TRANSPORTS:
        assert refusal(other, relay, token=alice) == "limit", other
    bob = open_stream(transport, relay, token=token(["tweets"], sub="bob"))
    relay.push(stream_line(10))
    for stream in (first, second, bob):
        assert stream.tweets(1)[0]["tweet"]["id"] == "10"
        stream.close()


def test_too_many_operations_close_with_4029_and_others_are_unaffected(private: Start) -> None:
    relay = private(ops_per_second=5.0, ops_burst=5)
    headers = {"additional_headers": {"Authorization": "Bearer " + token(["tweets"])}}
    calm, _ = subscribe(relay.ws_url, **headers)
    noisy = ws_connect(relay.ws_url, **headers)
    with pytest.raises(ConnectionClosed) as closed:
        for _ in range(50):
            noisy.send('{"op":"ping"}')
        while True:
            noisy.recv(timeout=UNIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4029
    relay.push(stream_line(11))
    assert receive_tweets(calm, 1)[0]["tweet"]["id"] == "11"
    calm.close()


@pytest.mark.parametrize(
    ("transport", "word"), [("websocket", "too_many_subscriptions"), ("sse", "bad_request")]
)
def test_the_subscription_limit_is_refused(private: Start, transport: str, word: str) -> None:
    relay = private(max_subscriptions=1)
    rules = token(["rule:*"])
    assert refusal(transport, relay, ["rule:cats", "rule:dogs"], token=rules) == word
    assert refusal(transport, relay, ["rule:cats"], token=rules) == ""


def test_an_expiring_token_is_refreshed_on_the_open_connection(private: Start) -> None:
    relay = private(refresh_grace=2 * UNIT)
    # exp is whole seconds: ttl=1 may expire at once, before the subscribe is answered,
    # and subscribe() would swallow the notice; 2 leaves at least a second.
    short = token(["tweets"], ttl=2)
    ws, _ = subscribe(relay.ws_url, additional_headers={"Authorization": f"Bearer {short}"})
    notice = orjson.loads(ws.recv(timeout=2 * UNIT))
    assert notice["type"] == "refresh_required" and notice["deadline"] > notice["expires_at"]
    ws.send(orjson.dumps({"op": "refresh", "token": token(["tweets"]), "id": 1}).decode())
    assert orjson.loads(ws.recv(timeout=UNIT))["type"] == "refreshed"
    relay.push(stream_line(12))
    assert receive_tweets(ws, 1)[0]["tweet"]["id"] == "12"
    ws.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_without_a_refresh_the_connection_closes_with_4001(private: Start, transport: str) -> None:
    relay = private(refresh_grace=0.5)
    short = token(["tweets"], ttl=1)
    stream = open_stream(transport, relay, token=short)
    code, reason = ended(stream, 4 * UNIT)  # an event stream has no refresh: it ends
    # The reason is JSON a client can act on: this token expired (not revoked, not invalid).
    assert code == 4001 and reason["reason"] == "expired"
    assert ("no refresh" if transport == "websocket" else "new token") in reason["message"]
    stream.close()


def test_a_refresh_cannot_switch_to_another_subject(private: Start) -> None:
    relay = private()
    ws, _ = subscribe(
        relay.ws_url, additional_headers={"Authorization": "Bearer " + token(["tweets"])}
    )
    ws.send(orjson.dumps({"op": "refresh", "token": token(["tweets"], sub="mallory")}).decode())
    assert orjson.loads(ws.recv(timeout=UNIT))["code"] == "forbidden"
    ws.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_filters_narrow_a_subscription_and_pinned_filters_cannot_be_widened(
    private: Start, transport: str
) -> None:
    relay = private()
    stream = open_stream(transport, relay, token=token(["tweets"]), filters={"lang": "es"})
    assert stream.subscribed["tweets"]["filters"] == {"lang": ["es"]}
    relay.push(stream_line(20, lang="en"), stream_line(21, lang="es"))
    assert stream.tweets(1)[0]["tweet"]["id"] == "21"
    stream.close()

    pinned = token(["rule:*"], filters={"lang": "en"})
    for channels in ("rule:dogs", ["rule:cats", "rule:dogs"]):
        refused = refusal(transport, relay, channels, token=pinned, filters={"lang": "es"})
        assert refused == "forbidden", channels
    # Pinned on one rule, several rules, and through a resume from the store.
    expected = {"rule:dogs": ["23"], ("rule:cats", "rule:dogs"): ["1", "20", "23"]}
    streams = {
        channels: open_stream(transport, relay, channels, token=pinned, since=(relay.epoch, 0))
        for channels in expected
    }
    relay.push(stream_line(22, lang="es", tags=("dogs",)), stream_line(23, tags=("dogs",)))
    for channels, stream in streams.items():
        ids = [f["tweet"]["id"] for f in received(stream, len(expected[channels]), UNIT)]
        assert ids == expected[channels], channels
        for reply in stream.subscribed.values():
            assert reply["filters"] == {"lang": ["en"]}
        stream.close()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FRAMES = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    JSON_VALUES.map(json.dumps),
    st.fixed_dictionaries(
        {"op": st.sampled_from(["subscribe", "unsubscribe", "ping", "refresh", "x"])},
        optional={
            "channel": st.sampled_from(["tweets", "rule:cats", "rule:dogs", "rule:*", "", "x"])
            | st.text(max_size=10),
            "since": JSON_VALUES
            | st.fixed_dictionaries({"epoch": st.text(max_size=8), "seq": st.integers()}),
            "filters": JSON_VALUES,
            "token": st.text(max_size=30),
            "id": JSON_VALUES,
        },
    ).map(json.dumps),
)


def test_fuzzed_frames_never_crash_the_server_or_leak_a_channel(
    private: Start, caplog: pytest.LogCaptureFixture
) -> None:
    relay = private(ops_per_second=10_000.0, ops_burst=10_000)
    auth = {"additional_headers": {"Authorization": "Bearer " + token(["rule:cats"])}}
    watcher, _ = subscribe(relay.ws_url, "rule:cats", **auth)
    state: dict[str, Any] = {"ws": ws_connect(relay.ws_url, **auth)}
    caplog.set_level(logging.INFO)

    @hypothesis_settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(frame=FRAMES)
    def fuzz(frame: str | bytes) -> None:
        ws = state["ws"]
        try:
            ws.send(frame)
            ws.send('{"op":"ping","id":"sync"}')
            while True:  # every reply up to our ping's pong
                reply = orjson.loads(ws.recv(timeout=UNIT))
                if reply["type"] == "tweet":
                    assert reply["channel"] == "rule:cats", reply
                if reply.get("id") == "sync" and reply["type"] == "pong":
                    return
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code in (1009, 4001)
            state["ws"] = ws_connect(relay.ws_url, **auth)

    fuzz()
    relay.push(stream_line(99, tags=("dogs",)), stream_line(100, tags=("cats",)))
    assert receive_tweets(watcher, 1)[0]["tweet"]["id"] == "100"
    problems = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems]
    state["ws"].close()
    watcher.close()


def test_a_refresh_keeps_the_stats_channel_which_needs_no_grant(private: Start) -> None:
    relay = private()
    ws, _ = subscribe(
        relay.ws_url, "$stats", additional_headers={"Authorization": "Bearer " + token(["tweets"])}
    )
    ws.send(orjson.dumps({"op": "refresh", "token": token(["rule:cats"]), "id": 1}).decode())
    frames = []
    while not frames or frames[-1]["type"] != "refreshed":
        frames.append(orjson.loads(ws.recv(timeout=UNIT)))
    assert relay.relay.stats is not None
    sample = relay.call(relay.relay.stats.sample())
    frame = orjson.loads(ws.recv(timeout=UNIT))
    while frame["type"] != "stats" or frame["time"] != sample["time"]:
        frame = orjson.loads(ws.recv(timeout=UNIT))
    assert not [f for f in frames if f["type"] == "error"]
    ws.close()
