"""The sans-I/O wire protocol, on literal frames."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from relay.core import protocol
from relay.core.protocol import Op, Position
from relay.errors import ProtocolError
from relay.store import StoredTweet
from relay.testing import RelayServer
from relay.web import ws_frames
from tests.support import UNIT, ws_connect

BAD_FRAMES = [
    ("not json", "bad_request"),
    (b"\xff", "bad_request"),
    ("[1,2]", "bad_request"),
    ('"subscribe"', "bad_request"),
    ("{}", "bad_request"),
    ('{"op": 5}', "bad_request"),
    ('{"op": "dance"}', "unknown_op"),
    ('{"op": "subscribe"}', "bad_request"),
    ('{"op": "subscribe", "channel": 7}', "bad_request"),
    ('{"op": "subscribe", "channel": "everything"}', "unknown_channel"),
    ('{"op": "subscribe", "channel": "rule:"}', "unknown_channel"),
    ('{"op": "subscribe", "channel": "tweets", "since": 5}', "bad_request"),
    ('{"op": "subscribe", "channel": "tweets", "since": {"epoch": "e"}}', "bad_request"),
    ('{"op": "subscribe", "channel": "tweets", "since": {"epoch": "e", "seq": -1}}', "bad_request"),
    (
        '{"op": "subscribe", "channel": "tweets", "since": {"epoch": "e", "seq": true}}',
        "bad_request",
    ),
    ('{"op": "subscribe", "channel": "tweets", "since": {"epoch": 1, "seq": 1}}', "bad_request"),
    ('{"op": "unsubscribe", "channel": null}', "bad_request"),
    ('{"op": "ping", "id": [1]}', "bad_request"),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES)
def test_bad_frames_raise_protocol_errors_with_their_code(frame: str | bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        protocol.decode(frame)
    assert caught.value.code == code


def test_a_subscribe_with_a_position_decodes() -> None:
    op = protocol.decode(
        '{"op":"subscribe","channel":"rule:cats","since":{"epoch":"e1","seq":41},"id":3}'
    )
    assert op == Op("subscribe", channel="rule:cats", since=Position("e1", 41), ref=3)


def test_a_tweet_frame_wraps_the_encoded_object_verbatim() -> None:
    assert protocol.tweet("rule:cats", 42, b'{"id":"1"}') == (
        b'{"type":"tweet","channel":"rule:cats","seq":42,"tweet":{"id":"1"}}'
    )


def test_replies_echo_the_op_id() -> None:
    assert protocol.pong(7) == b'{"type":"pong","id":7}'
    assert protocol.error("unknown_op", "no", "x", "a") == (
        b'{"type":"error","code":"unknown_op","message":"no","op":"x","id":"a"}'
    )


def test_close_reasons_fit_the_websocket_limit() -> None:
    reason = protocol.close_reason("slow_consumer", 2**63)
    assert reason == '{"reason":"slow_consumer","seq":9223372036854775808}'
    assert len(reason.encode()) <= 123


def test_a_4001_reason_names_why_and_its_message_is_cut_to_fit() -> None:
    reason = protocol.close_reason(protocol.TOKEN_REVOKED, 7, "the token was revoked")
    assert reason == '{"reason":"revoked","seq":7,"message":"the token was revoked"}'
    long = protocol.close_reason(protocol.TOKEN_EXPIRED, 2**63, "é" * 200)
    assert len(long.encode()) <= 123
    fields = orjson.loads(long)
    assert fields["reason"] == "expired" and fields["seq"] == 2**63
    assert fields["message"] == "é" * len(fields["message"]) and len(fields["message"]) > 10


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70_000])
def test_frames_are_built_as_the_library_serializes_them(size: int) -> None:
    from websockets.frames import Frame, Opcode

    payload = b"a" * size
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False)
    assert ws_frames.text_frame(payload) == expected
    assert ws_frames.WEBSOCKET.message(payload) == expected
    assert list(ws_frames.payloads(expected)) == [payload]
    body = b'{"text":"' + b"b" * size + b'"}'
    tweet = protocol.tweet("rule:cats", 42, body)
    stored = StoredTweet(42, ("tweets", "rule:cats"), body)
    framed = ws_frames.WEBSOCKET.tweets("rule:cats", "e1", [stored], [tweet])
    assert framed == [ws_frames.text_frame(tweet)]


def test_a_catch_up_page_is_the_tweet_frames_end_to_end_and_splits_back() -> None:
    from websockets.frames import Frame, Opcode

    # Bodies on both sides of each header size (7-bit, 16-bit, 64-bit lengths), seqs of
    # different widths, and a channel whose name needs JSON escaping.
    rows = [
        (seq, b'{"text":"' + b"c" * size + b'"}')
        for seq, size in [(1, 0), (9, 60), (10, 80), (99_999, 65_400), (2**40, 65_535), (7, 70_000)]
    ]
    channel = 'rule:a"b\\é'
    page = ws_frames.WEBSOCKET.page(channel, "e1", rows)
    frames = [ws_frames.text_frame(protocol.tweet(channel, seq, body)) for seq, body in rows]
    assert page == b"".join(frames)
    assert frames[0] == Frame(Opcode.TEXT, protocol.tweet(channel, 1, rows[0][1])).serialize(
        mask=False
    )
    payloads = list(ws_frames.payloads(page))
    assert payloads == [protocol.tweet(channel, seq, body) for seq, body in rows]
    assert [orjson.loads(p)["seq"] for p in payloads] == [seq for seq, _ in rows]
    assert ws_frames.tweet_page(channel, []) == b""
    assert list(ws_frames.payloads(b"")) == []


def test_an_error_frame_names_the_channel_its_op_named(
    pushed: RelayServer,
) -> None:
    relay = pushed
    with ws_connect(relay.ws_url) as ws:

        def answer(op: str) -> dict[str, Any]:
            ws.send(op)
            frame: dict[str, Any] = orjson.loads(ws.recv(timeout=UNIT))
            return frame

        assert answer('{"op":"subscribe","channel":"nope","id":1}')["channel"] == "nope"
        assert answer('{"op":"unsubscribe","channel":"tweets"}')["channel"] == "tweets"
        assert answer('{"op":"subscribe","channel":"tweets"}')["type"] == "subscribed"
        again = answer('{"op":"subscribe","channel":"tweets"}')
        assert (again["code"], again["channel"]) == ("already_subscribed", "tweets")
        assert "channel" not in answer("not json")
