"""The Qt client's pure parts, without Qt: rows, the list's batches and cap, the resume
position, and what each thing the relay says makes the client do."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime

import orjson
import pytest

from client_demo.errors import NO_TOKEN
from client_demo.qt.events import (
    MAX_DELAY,
    backoff,
    read_event,
    read_info,
    read_listing,
    refusal,
    unreachable,
)
from client_demo.qt.feed import (
    END_ISOLATE,
    ISOLATE,
    TweetList,
    is_right_to_left,
    row_of,
    stats_line,
    styled_text,
)
from client_demo.sse import EventParser, ServerEvent


def tweet(seq: int, text: str = "hello", **fields: object) -> dict[str, object]:
    return {"id": str(1000 + seq), "seq": seq, "text": text, **fields}


def test_a_row_has_author_time_media_rules_and_links() -> None:
    row = row_of(
        tweet(
            7,
            "look #cats https://t.co/x @ana",
            author={"username": "bo"},
            created_at="2026-01-01T12:03:04.000Z",
            media=[{"type": "photo"}, {"type": "video"}],
            rules=["cats", "pets"],
            entities={
                "hashtags": [{"start": 5, "end": 10, "tag": "cats"}],
                "urls": [
                    {
                        "start": 11,
                        "end": 25,
                        "url": "https://t.co/x",
                        "expanded_url": "https://example.org/a?b=1&c=2",
                        "display_url": "example.org/a",
                    }
                ],
                "mentions": [{"start": 26, "end": 30, "username": "ana"}],
            },
        )
    )
    local = datetime(2026, 1, 1, 12, 3, 4, tzinfo=UTC).astimezone().strftime("%H:%M:%S")
    assert (row.seq, row.tweet_id, row.author, row.time) == (7, "1007", "bo", local)
    assert row_of(tweet(1, created_at="yesterday")).time == ""
    assert (row.media, row.rules, row.right_to_left) == (2, "#cats #pets", False)
    assert '<a href="https://x.com/search?q=%23cats">#cats</a>' in row.text
    assert '<a href="https://example.org/a?b=1&amp;c=2">example.org/a</a>' in row.text
    assert f'{ISOLATE}<a href="https://x.com/ana">@ana</a>{END_ISOLATE}' in row.text


def test_text_is_escaped_and_a_link_goes_only_to_http() -> None:
    text = "<b>x</b> & javascript:alert(1)"
    entities = {"urls": [{"start": 11, "end": 30, "expanded_url": "javascript:alert(1)"}]}
    styled = styled_text(text, entities)
    assert styled.startswith("&lt;b&gt;x&lt;/b&gt; &amp; ")
    assert "<a" not in styled and "href" not in styled


@pytest.mark.parametrize(
    "entities",
    [
        {"hashtags": [{"start": 3, "end": 99}]},  # past the end
        {"hashtags": [{"start": 0, "end": 4}, {"start": 2, "end": 5}]},  # overlapping
        {"hashtags": [{"start": "0", "end": 4}, "not an entity"]},
        "not a mapping",
    ],
)
def test_entities_that_do_not_fit_the_text_leave_it_whole(entities: object) -> None:
    styled = styled_text("abcdef", entities)
    shown = re.sub(r"<[^>]*>", "", styled).replace(ISOLATE, "").replace(END_ISOLATE, "")
    assert shown == "abcdef"
    assert styled.count("<a ") <= 1


def test_the_direction_is_the_first_strong_letter_of_the_words() -> None:
    assert is_right_to_left("لا أصدق ما حدث")
    assert is_right_to_left("123 שלום")
    assert not is_right_to_left("hello مرحبا")
    # A hashtag in front does not make an Arabic tweet left-to-right.
    arabic = tweet(1, "#cats لا أصدق", entities={"hashtags": [{"start": 0, "end": 5}]})
    assert row_of(arabic).right_to_left


def test_tweets_wait_for_the_batch_and_go_in_newest_first() -> None:
    tweets = TweetList(keep=10)
    tweets.start("e1", [tweet(1), tweet(2)], head=2)
    assert [r.seq for r in tweets.rows] == [2, 1] and tweets.position.since() == "e1:2"
    for seq in (3, 4, 5):
        assert tweets.receive(tweet(seq))
    assert [r.seq for r in tweets.rows] == [2, 1]  # nothing shows before the batch
    batch = tweets.take_batch()
    tweets.insert(batch)
    assert [r.seq for r in tweets.rows] == [5, 4, 3, 2, 1]
    assert tweets.take_batch() == []


def test_a_resume_never_shows_a_tweet_twice() -> None:
    tweets = TweetList()
    tweets.start("e1", [tweet(4)], head=9)
    assert not tweets.receive(tweet(3)) and not tweets.receive(tweet(4))
    assert tweets.receive(tweet(5)) and not tweets.receive(tweet(5))
    assert not tweets.receive({"seq": True}) and not tweets.receive({"seq": "6"})
    assert tweets.position.since() == "e1:5"


def test_an_empty_channel_goes_on_from_the_head_and_subscribed_keeps_a_held_position() -> None:
    tweets = TweetList()
    tweets.start("e1", [], head=40)
    assert tweets.position.since() == "e1:40"
    tweets.subscribed("e1", 55)  # a reconnect's subscribed: the position held stays
    assert tweets.position.since() == "e1:40"
    fresh = TweetList()
    fresh.subscribed("e2", 7)
    assert fresh.position.since() == "e2:7"


def test_the_list_keeps_the_newest_n() -> None:
    tweets = TweetList(keep=3)
    for seq in range(1, 9):
        tweets.receive(tweet(seq))
    batch = tweets.take_batch()
    assert [r.seq for r in batch] == [8, 7, 6]  # older waiting tweets never show
    tweets.insert(batch)
    tweets.receive(tweet(9))
    tweets.insert(tweets.take_batch())
    assert tweets.overflow() == 1
    tweets.trim()
    assert [r.seq for r in tweets.rows] == [9, 8, 7]
    assert tweets.set_keep(2) == 1
    with pytest.raises(ValueError):
        TweetList(keep=0)


def test_reset_drops_everything_and_starts_from_the_new_epoch() -> None:
    tweets = TweetList()
    tweets.start("old", [tweet(1)], head=1)
    tweets.receive(tweet(2))
    tweets.reset("new", 3)
    assert tweets.rows == [] and tweets.pending == [] and tweets.position.since() == "new:3"
    assert tweets.receive(tweet(4))


def test_a_deleted_tweet_is_found_shown_or_waiting() -> None:
    tweets = TweetList()
    tweets.start("e", [tweet(1), tweet(2)], head=2)
    tweets.receive(tweet(3))
    assert tweets.index_of("1001") == 1
    assert tweets.index_of("1003") is None and tweets.pending == []
    assert tweets.index_of("nope") is None


def events(*lines: str) -> list[ServerEvent]:
    return EventParser().feed(("\n".join(lines) + "\n\n").encode())


def event(kind: str, **frame: object) -> ServerEvent:
    return ServerEvent(kind, orjson.dumps({"type": kind, **frame}).decode(), "")


def test_each_event_of_the_stream_becomes_one_step() -> None:
    (tweet_event,) = events("event: tweet", 'data: {"type":"tweet","seq":3,"tweet":{"seq":3}}')
    assert read_event(tweet_event, "tweets").kind == "tweet"  # type: ignore[union-attr]
    subscribed = read_event(event("subscribed", channel="tweets", epoch="e", seq=4), "tweets")
    assert subscribed is not None and subscribed.message == "live on tweets"
    unknown = read_event(
        event("subscribed", channel="rule:catz", epoch="e", seq=0, known=False), "rule:catz"
    )
    assert unknown is not None and "no tweet has matched" in unknown.message
    assert read_event(event("subscribed", channel="$stats", epoch="e", seq=4), "tweets") is None
    assert read_event(event("reset", epoch="e2", seq=1), "tweets").kind == "reset"  # type: ignore[union-attr]
    start = read_event(event("history_start", seq=51), "tweets")
    assert start is not None and start.message.startswith("history now starts at seq 51")
    deleted = read_event(event("deleted", id="42", seq=9), "tweets")
    assert deleted is not None and (deleted.kind, deleted.message) == ("deleted", "42")
    stats = read_event(event("stats", connections=1), "tweets")
    assert stats is not None and stats.kind == "stats"
    assert read_event(event("refresh_required", deadline=1), "tweets").kind == "token"  # type: ignore[union-attr]
    assert read_event(event("something_new"), "tweets") is None
    assert read_event(ServerEvent("tweet", "not json", ""), "tweets") is None
    assert read_event(ServerEvent("tweet", "[1]", ""), "tweets") is None


@pytest.mark.parametrize(
    ("frame", "kind", "says"),
    [
        (
            {"code": 1001, "reason": "shutdown"},
            "retry",
            "the relay ended the stream (1001 shutdown)",
        ),
        ({"code": 4008, "reason": "slow_consumer"}, "retry", "4008 slow_consumer"),
        ({"code": 4001, "reason": "expired"}, "token", "the token expired: enter a new token"),
        ({"code": 4001, "reason": "revoked"}, "token", "the token was revoked"),
        ({"code": 1008, "reason": "policy"}, "stop", "too many connections"),
    ],
)
def test_the_last_event_says_whether_to_retry_ask_for_a_token_or_stop(
    frame: dict[str, object], kind: str, says: str
) -> None:
    step = read_event(event("close", **frame), "tweets")
    assert step is not None and step.kind == kind and says in step.message


def test_refusals_and_an_unreachable_relay_are_one_line_each() -> None:
    body = orjson.dumps({"errors": [{"message": "no token", "reason": "unauthorized"}]})
    assert refusal(401, body, "").message == NO_TOKEN
    refused = refusal(401, body, "abc")
    assert refused.kind == "token" and refused.message.startswith("the relay refused the token")
    channel = orjson.dumps(
        {"errors": [{"message": "unknown channel 'rule:x'", "reason": "unknownChannel"}]}
    )
    assert refusal(404, channel, "").message == "unknownChannel: unknown channel 'rule:x'"
    assert refusal(503, b"<html>\nbusy\n</html>", "").kind == "retry"
    assert refusal(503, b"<html>\nbusy\n</html>", "").message.endswith("<html> busy </html>")
    gone = unreachable("http://127.0.0.1:9", "Connection refused")
    assert (gone.kind, gone.message) == (
        "retry",
        "cannot reach the relay at http://127.0.0.1:9: Connection refused",
    )


def test_the_stats_line_reads_like_the_page_panel() -> None:
    sample = {
        "tweets_in_per_second": 212.44,
        "frames_out_per_second": 40310,
        "connections": 190,
        "head_seq": 1048576,
        "store": {"size_bytes": 5 * 1024 * 1024, "wal_bytes": 1024 * 1024},
    }
    assert stats_line(sample) == (
        "212.4 tweets/s in · 40310.0 frames/s out · 190 connections · head #1048576 · "
        "store 4.0 MB + 1.0 MB WAL"
    )
    assert stats_line({"connections": "many"}) == ""


@pytest.mark.parametrize(
    "frame",
    [
        {"channel": "tweets", "epoch": "e", "seq": "12"},
        {"channel": "tweets", "epoch": "e", "seq": True},
        {"channel": "tweets", "epoch": "e", "seq": -1},
        {"channel": "tweets", "epoch": 7, "seq": 3},
        {"channel": "tweets", "seq": 3},
    ],
)
def test_a_subscribed_or_reset_without_a_position_is_ignored(frame: dict[str, object]) -> None:
    assert read_event(event("subscribed", **frame), "tweets") is None
    assert read_event(event("reset", **frame), "tweets") is None


def test_info_is_read_only_from_a_relays_answer() -> None:
    base = "http://127.0.0.1:9"
    good = {
        "epoch": "e1",
        "seq": 12,
        "channels": ["tweets", 3, "rule:cats"],
        "events_url": "http://relay/v1/events",
        "objects_url": "javascript:alert(1)",
    }
    info = read_info(orjson.dumps(good), base)
    assert info is not None
    assert (info.epoch, info.head, info.channels) == ("e1", 12, ["tweets", "rule:cats"])
    assert info.events_url == "http://relay/v1/events"
    assert info.objects_url == base + "/v1/objects/tweets"
    odd = read_info(orjson.dumps({**good, "channels": "tweets"}), base)
    assert odd is not None and odd.channels == []
    for body in (
        b"<html>",
        b"[]",
        orjson.dumps({"epoch": "e"}),
        orjson.dumps({**good, "seq": "1"}),
    ):
        assert read_info(body, base) is None


def test_a_listing_is_read_only_from_the_object_apis_answer() -> None:
    body = orjson.dumps({"results": [{"seq": 1}, "x", {"seq": 2}], "count": 40})
    assert read_listing(body) == ([{"seq": 1}, {"seq": 2}], 40)
    assert read_listing(orjson.dumps({"results": [{"seq": 1}]})) == ([{"seq": 1}], 1)
    for bad in (b"nope", b"[]", orjson.dumps({"results": "x"}), orjson.dumps({"count": 1})):
        assert read_listing(bad) is None


def test_the_backoff_doubles_to_a_cap_and_never_overflows() -> None:
    rng = random.Random(3)
    first = [max(backoff(0, rng) for _ in range(200)), max(backoff(3, rng) for _ in range(200))]
    assert first[0] <= 0.25 and 1.0 < first[1] <= 2.0
    days_away = [backoff(attempt, rng) for attempt in (40, 2_000, 10**9)]
    assert all(0.1 <= delay <= MAX_DELAY for delay in days_away)
