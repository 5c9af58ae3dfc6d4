"""Bad frames and bad query parameters get their documented answer; the server keeps serving."""

from __future__ import annotations

import urllib.request

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from relay.testing import RelayServer
from tests.support import UNIT, counted, receive_tweets, stream_line, subscribe, ws_connect

BAD_FRAMES = [
    ("hello", "bad_request"),
    ("[]", "bad_request"),
    ("null", "bad_request"),
    ('{"op": "subscribe"}', "bad_request"),
    ('{"op": "teleport"}', "unknown_op"),
    ('{"op": 1}', "bad_request"),
    ('{"op": "subscribe", "channel": 3}', "bad_request"),
    ('{"op": "subscribe", "channel": "firehose"}', "unknown_channel"),
    ('{"op": "subscribe", "channel": "tweets", "since": {"seq": 1}}', "bad_request"),
    ('{"op": "unsubscribe", "channel": "rule:nothing"}', "not_subscribed"),
    ('{"op": "subscribe", "channel": "tweets"}', "already_subscribed"),
]


def test_each_bad_frame_gets_an_error_frame_and_the_connection_stays_open(
    pushed: RelayServer,
) -> None:
    relay = pushed
    ws, _ = subscribe(relay.ws_url, "tweets")
    other, _ = subscribe(relay.ws_url, "tweets")
    for frame, code in BAD_FRAMES:
        ws.send(frame)
        reply = orjson.loads(ws.recv(timeout=UNIT))
        assert reply["type"] == "error", frame
        assert reply["code"] == code, frame
        assert reply["message"]
    ws.send(b'{"op": "ping", "id": 9}')  # a binary frame is read the same way
    assert orjson.loads(ws.recv(timeout=UNIT)) == {"type": "pong", "id": 9}
    relay.push(stream_line(1))
    assert receive_tweets(ws, 1)[0]["seq"] == 1
    assert receive_tweets(other, 1)[0]["seq"] == 1
    bad_requests = relay.relay.metrics.bad_frames.labels("bad_request")._value.get()
    assert bad_requests == sum(1 for _, code in BAD_FRAMES if code == "bad_request")
    ws.close()
    other.close()


def test_an_oversize_frame_closes_only_that_connection_with_1009(
    pushed: RelayServer,
) -> None:
    relay = pushed
    big = ws_connect(
        relay.ws_url,
    )
    other, _ = subscribe(relay.ws_url, "tweets")
    big.send('{"op":"ping","pad":"' + "x" * (relay.relay.settings.max_frame + 10) + '"}')
    with pytest.raises(ConnectionClosed) as closed:
        big.recv(timeout=UNIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    relay.push(stream_line(5))
    assert receive_tweets(other, 1)[0]["tweet"]["id"] == "5"
    other.close()


BAD_PARAMS = [
    "limit=0",
    "limit=1001",
    "limit=abc",
    "offset=-1",
    "offset=x",
    "sort=color",
    "sort=%5B%7B%22sortBy%22%3A%22nope%22%7D%5D",
    "q=notjson",
    "q=%5B%5D",
    "q=%7B%22lang%22%3A%7B%22%24regex%22%3A%22x%22%7D%7D",
    "q=%7B%22secret%22%3A1%7D",
    "since_seq=-3",
    "count=maybe",
    "search=",
    "bogus=1",
    "limit=5&limit=6",
]


@pytest.mark.parametrize("params", BAD_PARAMS)
def test_bad_query_parameters_get_400_in_the_enginio_error_shape(
    pushed: RelayServer,
    params: str,
) -> None:
    relay = pushed
    status, body = relay.get(f"/v1/objects/tweets?{params}")
    assert status == 400
    (error,) = body["errors"]
    assert error["reason"] == "badRequest" and error["message"]
    relay.push(stream_line(1))
    relay.wait_seq(1)  # still serving


def test_an_unknown_path_is_a_404_in_the_same_shape(
    pushed: RelayServer,
) -> None:
    relay = pushed
    for path in ("/v2/nothing", "/v1/objects/cats", "/../etc/passwd", "/.hidden"):
        status, body = relay.get(path)
        assert status == 404, path
        assert body["errors"][0]["reason"] == "notFound"


def test_malformed_stream_lines_are_counted_and_skipped_and_nothing_is_lost(
    pushed: RelayServer,
) -> None:
    relay = pushed
    ws, _ = subscribe(relay.ws_url, "tweets")
    relay.push(
        stream_line(1),
        b'{"data": {"id": "2", "te',
        b"[]",
        b"",
        b"\r",
        b'{"data": [{"id": "3", "text": "ok"}, {"no": "id"}]}',
        stream_line(4),
    )
    frames = receive_tweets(ws, 3)
    assert [f["tweet"]["id"] for f in frames] == ["1", "3", "4"]
    metrics = relay.relay.metrics
    assert counted(metrics.malformed) == 2
    assert counted(metrics.malformed, reason="not_json") == 1
    assert counted(metrics.malformed, reason="not_object") == 1
    assert counted(metrics.skipped) == counted(metrics.skipped, reason="no_id") == 1
    assert metrics.lines.labels("keepalive")._value.get() == 2
    ws.close()


def test_demo_page_and_its_files_are_served(pushed: RelayServer) -> None:
    relay = pushed
    with urllib.request.urlopen(relay.url + "/", timeout=UNIT) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert b"<html" in response.read().lower()
