"""The sans-I/O wire protocol, on literal frames."""

from __future__ import annotations

import pytest

from relay import protocol
from relay.protocol import Op, Position, ProtocolError

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


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70_000])
def test_frames_are_built_as_the_library_serializes_them(size: int) -> None:
    from websockets.frames import Frame, Opcode

    payload = b"a" * size
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False)
    assert protocol.text_frame(payload) == expected
    assert protocol.frame_payload(expected) == payload
    body = b'{"text":"' + b"b" * size + b'"}'
    tweet = protocol.tweet("rule:cats", 42, body)
    assert protocol.tweet_frame("rule:cats", 42, body) == protocol.text_frame(tweet)
