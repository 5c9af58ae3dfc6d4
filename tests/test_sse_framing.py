"""Server-sent events without a socket: the framing as literal bytes (a live publish and a
catch-up page give the same events), and the query of ``/v1/events`` as values."""

from __future__ import annotations

import orjson
import pytest

from relay.core import protocol
from relay.core.protocol import Position, Rewind
from relay.core.stream_query import StreamQuery, parse_stream_query
from relay.errors import BadRequest
from relay.store import StoredTweet
from relay.web import sse

BODY = b'{"id":"7","text":"a cat","rules":["cats","dogs"]}'


def test_a_tweet_is_one_event_with_its_id_and_the_payload_with_its_channels() -> None:
    payload = protocol.tweet("rule:cats", 42, BODY)
    stored = StoredTweet(42, ("tweets", "rule:cats", "rule:dogs"), BODY)
    (frame,) = sse.SSE.tweets("rule:cats", "e1", [stored], [payload])
    assert frame == (
        b"id: e1:42\nevent: tweet\ndata: "
        b'{"type":"tweet","channel":"rule:cats","seq":42,"tweet":'
        + BODY
        + b',"channels":["rule:cats"]}'
        b"\n\n"
    )


def test_a_catch_up_page_is_the_events_a_live_publish_gives_end_to_end() -> None:
    rows = [(1, b'{"id":"1","rules":[]}'), (10, BODY), (2**40, b'{"id":"x","rules":["a\\"b"]}')]
    stored = [StoredTweet(seq, ("tweets",), body) for seq, body in rows]
    payloads = [protocol.tweet("tweets", seq, body) for seq, body in rows]
    live = sse.SSE.tweets("tweets", "e1", stored, payloads)
    assert sse.SSE.page("tweets", "e1", rows) == b"".join(live)


def test_a_stream_of_several_channels_names_the_ones_each_tweet_is_on() -> None:
    framing = sse.ChannelsFraming(["rule:dogs", "rule:cats", "rule:birds"])
    rows = [(3, BODY), (4, b'{"id":"8","rules":["birds"]}')]
    stored = [
        StoredTweet(3, ("tweets", "rule:cats", "rule:dogs"), BODY),
        StoredTweet(4, ("tweets", "rule:birds"), rows[1][1]),
    ]
    payloads = [protocol.tweet("tweets", seq, body) for seq, body in rows]
    live = framing.tweets("tweets", "e1", stored, payloads)
    assert framing.page("tweets", "e1", rows) == b"".join(live)
    first = orjson.loads(live[0].split(b"data: ", 1)[1])
    assert (first["channel"], first["channels"]) == ("rule:dogs", ["rule:dogs", "rule:cats"])
    assert live[1].startswith(b"id: e1:4\nevent: tweet\n")
    assert orjson.loads(live[1].split(b"data: ", 1)[1])["channels"] == ["rule:birds"]
    # Its replies name the stream's channels in place of the `tweets` it listens on.
    reply = framing.message(protocol.subscribed("tweets", "e1", 9, 0))
    data = orjson.loads(reply.split(b"data: ", 1)[1])
    assert data["channels"] == ["rule:dogs", "rule:cats", "rule:birds"] and "channel" not in data
    stats = protocol.stats({"type": "stats", "connections": 1})
    assert framing.message(stats) == sse.SSE.message(stats)


@pytest.mark.parametrize(
    ("payload", "head"),
    [
        (protocol.subscribed("tweets", "e1", 9, 0), b"id: e1:9\nevent: subscribed\n"),
        (protocol.subscribed("tweets", "e1", 9, 3), b"event: subscribed\n"),
        (protocol.subscribed("$stats", "e1", 9, 0), b"event: subscribed\n"),
        (protocol.reset("rule:cats", "e2", 5), b"id: e2:5\nevent: reset\n"),
        (protocol.history_start("tweets", "e1", 4), b"event: history_start\n"),
        (protocol.deleted("tweets", "7", 3), b"event: deleted\n"),
        (protocol.stats({"connections": 1}), b"event: stats\n"),
        (protocol.error("internal", "x"), b"event: error\n"),
    ],
)
def test_replies_are_events_named_by_their_type_and_only_positions_carry_an_id(
    payload: bytes, head: bytes
) -> None:
    assert sse.SSE.message(payload) == head + b"data: " + payload + b"\n\n"


def test_data_with_a_line_break_goes_as_several_data_lines() -> None:
    assert sse.event(b"x", b"a\nb\r\nc") == b"event: x\ndata: a\ndata: b\ndata: c\n\n"


def test_the_last_event_says_why_with_the_last_seq_and_the_code() -> None:
    reason = protocol.close_reason("slow_consumer", 12)
    assert sse.close_fields(4008, reason) == {
        "type": "close",
        "reason": "slow_consumer",
        "seq": 12,
        "code": 4008,
    }
    assert sse.close_fields(1001, "not json")["reason"] == "not json"


def q(query: str, last_event_id: str | None = None) -> StreamQuery:
    from urllib.parse import parse_qs

    return parse_stream_query(parse_qs(query, keep_blank_values=True), last_event_id, 1000.0)


def test_the_query_reads_channels_filters_and_positions() -> None:
    assert q("channel=rule:a&channel=tweets&channel=rule:a&channel=$stats") == StreamQuery(
        ("rule:a", "tweets"), stats=True
    )
    assert q("channel=tweets&lang=en,ja&lang=es&author=@Bob&has_media=1&keyword=a b").filters == {
        "lang": ["en", "ja", "es"],
        "author": ["@Bob"],
        "has_media": True,
        "keyword": "a b",
    }
    assert q("channel=tweets&since=ab:cd:12").since == Position("ab:cd", 12)
    assert q("channel=tweets&since=e:1", "e:7").since == Position("e", 7)
    assert q("channel=tweets&since_time=-15m&pace=2.5", None).since == Rewind(100.0, 2.5)
    assert q("channel=tweets&since_time=-15m", "e:7").since == Position("e", 7)
    assert q("channel=$stats", "e:7").since is None  # no history to resume: ignored


@pytest.mark.parametrize(
    "query",
    [
        "",
        "channel=",
        "channel=x",
        "channel=tweets&x=1",
        "channel=tweets&token=a&token=b",
        "channel=tweets&since=5",
        "channel=tweets&since=:5",
        "channel=tweets&since=e:+5",
        "channel=tweets&since=e:5.0",
        f"channel=tweets&since=e:{2**63}",
        "channel=tweets&since=" + "e" * 65 + ":1",
        "channel=tweets&since=e%0a:1",
        "channel=tweets&since_time=tomorrow",
        "channel=tweets&since_time=-15m&pace=nan",
        "channel=tweets&since_time=-15m&pace=inf",
        "channel=tweets&since_time=-15m&pace=0.5",
        "channel=tweets&has_media=yes",
        "channel=$stats&keyword=x",
    ],
)
def test_a_bad_query_is_a_bad_request(query: str) -> None:
    with pytest.raises(BadRequest):
        q(query)
