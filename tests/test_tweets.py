"""The pure parser, with literal payloads in the shapes the X API sends."""

from __future__ import annotations

import pytest

from relay.core.tweets import Rule, parse_line, stored_object
from relay.errors import MalformedPayload

STREAM_LINE = (
    b'{"data":{"id":"1500000000000000001","text":"hi @bob #cats","author_id":"42",'
    b'"lang":"en","created_at":"2026-01-02T03:04:05.000Z",'
    b'"edit_history_tweet_ids":["1500000000000000001"],'
    b'"referenced_tweets":[{"type":"quoted","id":"77"}],'
    b'"attachments":{"media_keys":["3_1"]}},'
    b'"includes":{"users":[{"id":"42","username":"alice","name":"Alice"},'
    b'{"id":"43","username":"bob","name":"Bob"}],'
    b'"tweets":[{"id":"77","text":"quoted","author_id":"43"}],'
    b'"media":[{"media_key":"3_1","type":"photo","url":"https://pbs.example/1.jpg"}]},'
    b'"matching_rules":[{"id":"9","tag":"cats"},{"id":"10","tag":""}]}'
)


def test_a_stream_line_becomes_a_tweet_with_author_rules_media_and_references() -> None:
    parsed = parse_line(STREAM_LINE)
    (tweet,) = parsed.tweets
    assert tweet.id == "1500000000000000001"
    assert tweet.text == "hi @bob #cats"
    assert tweet.author == {"id": "42", "username": "alice", "name": "Alice"}
    assert tweet.lang == "en"
    assert tweet.created_at == "2026-01-02T03:04:05.000Z"
    assert tweet.rules == (Rule("9", "cats"), Rule("10", ""))
    assert tweet.channels == ("tweets", "rule:cats", "rule:10")
    assert tweet.has_media
    assert tweet.object["media"] == [
        {"media_key": "3_1", "type": "photo", "url": "https://pbs.example/1.jpg"}
    ]
    quoted = tweet.object["referenced_tweets"][0]["tweet"]
    assert quoted["text"] == "quoted"
    assert quoted["author"]["username"] == "bob"
    assert tweet.object["edit_history_tweet_ids"] == ["1500000000000000001"]
    assert [u["id"] for u in parsed.users] == ["42", "43"]


def test_a_tweet_with_only_the_default_fields_is_kept() -> None:
    parsed = parse_line(b'{"data":{"id":"5","text":"bare","edit_history_tweet_ids":["5"]}}')
    (tweet,) = parsed.tweets
    assert (tweet.id, tweet.text, tweet.author, tweet.lang, tweet.created_at) == (
        "5",
        "bare",
        None,
        None,
        None,
    )
    assert tweet.channels == ("tweets",)
    assert not tweet.has_media


def test_a_twarc_line_reads_like_a_stream_line() -> None:
    line = (
        STREAM_LINE[:-1] + b',"__twarc":{"url":"https://api.twitter.com/2/tweets/search/stream"}}'
    )
    assert parse_line(line).tweets[0].object == parse_line(STREAM_LINE).tweets[0].object


def test_a_search_page_gives_every_tweet_and_default_rules_apply() -> None:
    page = (
        b'{"data":[{"id":"1","text":"a"},{"id":"2","text":"b"}],'
        b'"meta":{"result_count":2,"newest_id":"2"}}'
    )
    parsed = parse_line(page, default_rules=[Rule("7", "dogs")])
    assert [t.id for t in parsed.tweets] == ["1", "2"]
    assert all(t.channels == ("tweets", "rule:dogs") for t in parsed.tweets)


def test_one_bad_tweet_in_a_page_is_skipped_and_reported() -> None:
    parsed = parse_line(b'{"data":[{"id":"1","text":"a"},{"text":"no id"},{"id":"3"}]}')
    assert [t.id for t in parsed.tweets] == ["1"]
    assert len(parsed.skipped) == 2


@pytest.mark.parametrize("line", [b"", b"\r\n", b"   ", b"\n"])
def test_blank_lines_are_keepalives(line: bytes) -> None:
    assert parse_line(line).keepalive


@pytest.mark.parametrize(
    "line",
    [
        b'{"data": {"id": "1", "text": "trunc',
        b"[1, 2]",
        b'"text"',
        b'{"meta": {}}',
        b'{"data": "x"}',
        b"\xff\xfe",
    ],
)
def test_malformed_lines_raise_malformed_payload(line: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_line(line)


def test_schema_drift_numeric_ids_and_null_or_missing_tags_are_tolerated() -> None:
    line = (
        b'{"data":{"id":1377650090978992134,"text":"x","author_id":5},'
        b'"matching_rules":[{"id":1377649934414049282,"tag":null},{"id":"8"},{"tag":"t"}],'
        b'"unknown":{"a":1}}'
    )
    (tweet,) = parse_line(line).tweets
    assert tweet.id == "1377650090978992134"
    assert tweet.author_id == "5"
    assert tweet.channels == ("tweets", "rule:1377649934414049282", "rule:8", "rule:t")


def test_an_operational_disconnect_message_is_an_api_error_not_a_tweet() -> None:
    line = (
        b'{"errors":[{"title":"operational-disconnect",'
        b'"disconnect_type":"OperationalDisconnect","detail":"x"}]}'
    )
    parsed = parse_line(line)
    assert parsed.tweets == ()
    assert parsed.api_errors[0]["disconnect_type"] == "OperationalDisconnect"


def test_the_stored_object_carries_the_enginio_fields() -> None:
    tweet = parse_line(STREAM_LINE).tweets[0]
    obj = stored_object(tweet.object, seq=12, received_at="2026-01-02T03:04:06.000Z")
    assert obj["objectType"] == "objects.tweets"
    assert obj["seq"] == 12
    assert obj["createdAt"] == "2026-01-02T03:04:05.000Z"
    assert obj["updatedAt"] == "2026-01-02T03:04:06.000Z"
    assert obj["id"] == "1500000000000000001"
    assert obj["rules"] == ["cats", "10"]
