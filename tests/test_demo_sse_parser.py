"""The terminal client's event-stream parser, on literal bytes (the HTML standard's rules)."""

from __future__ import annotations

import pytest

from client_demo.sse import BrokenStream, EventParser, ServerEvent


def _all(*chunks: bytes) -> list[ServerEvent]:
    parser = EventParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_an_event_is_dispatched_by_a_blank_line_with_its_type_data_and_id() -> None:
    events = _all(b'id: e1:7\nevent: tweet\ndata: {"seq":7}\n\n')
    assert events == [ServerEvent("tweet", '{"seq":7}', "e1:7")]


def test_lines_may_end_with_crlf_lf_or_cr_even_split_between_chunks() -> None:
    stream = b"event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\rdata: 3\n\n"
    whole = _all(stream)
    assert whole == [ServerEvent("a", "1", ""), ServerEvent("b", "2", ""), ServerEvent(
        "message", "3", "")]  # fmt: skip
    # Fed a byte at a time (a CR at the end of one chunk, its LF at the start of the next).
    assert _all(*(stream[i : i + 1] for i in range(len(stream)))) == whole


def test_comments_keep_alives_and_unknown_fields_are_ignored() -> None:
    events = _all(b": keep-alive\n\nfoo: bar\ndata: x\n: inside\n\n")
    assert events == [ServerEvent("message", "x", "")]


def test_data_lines_join_with_a_line_feed_and_one_leading_space_is_dropped() -> None:
    assert _all(b"data:a\ndata:  b\ndata\n\n") == [ServerEvent("message", "a\n b\n", "")]


def test_an_event_without_data_is_not_dispatched_but_its_id_is_kept() -> None:
    parser = EventParser()
    assert parser.feed(b"id: e1:3\nevent: tweet\n\n") == []
    assert parser.feed(b"data: x\n\n") == [ServerEvent("message", "x", "e1:3")]


def test_retry_takes_digits_only_and_an_id_with_nul_is_ignored() -> None:
    parser = EventParser()
    parser.feed(b"retry: 2500\n\nretry: soon\n\nid: a\x00b\ndata: x\n\n")
    assert parser.retry == 2500
    assert parser.last_id == ""


def test_an_endless_line_is_a_broken_stream_not_a_memory_leak() -> None:
    parser = EventParser()
    with pytest.raises(BrokenStream):
        for _ in range(300):
            parser.feed(b"data: " + b"x" * 65536)
