"""Search in every script: runs of CJK, Hangul, Thai... are indexed as bigrams on both
stores, so any substring of two characters or more is found (relay.core.segment)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.core.query import Condition, TweetQuery
from relay.core.segment import RANGES, index_form, needs_scan
from relay.core.tweets import Tweet, parse_line
from tests.pg_server import StoreMaker
from tests.support import stream_line

RUN = re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in RANGES) + "]+")


def test_runs_become_overlapping_bigrams_and_the_rest_stays() -> None:
    assert index_form("みんな見て") == " みん んな な見 見て "
    assert index_form("abc見て!") == "abc 見て !"
    assert index_form("#원호 의") == "# 원호   의 "
    assert index_form("café 👍🏽 ok") == "café 👍🏽 ok"
    assert index_form("𠀋𠀌") == " 𠀋𠀌 "  # beyond the BMP, one character each
    assert index_form("") == ""
    assert needs_scan("見") and needs_scan("a見") and not needs_scan("見て")
    assert not needs_scan("cats")


def _capture_tweets(captures: Path) -> list[Tweet]:
    tweets: dict[str, Tweet] = {}
    for path in sorted(captures.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                parsed = parse_line(line)
            except Exception:  # the truncated line the captures README promises
                continue
            for tweet in parsed.tweets:
                tweets.setdefault(tweet.id, tweet)
    return list(tweets.values())


def _queries(tweets: list[Tweet]) -> list[str]:
    """Substrings of two and three characters of every Korean and Japanese run of the
    captures, the whole runs, and a few single characters."""
    found: set[str] = set()
    for tweet in tweets:
        if tweet.lang not in ("ko", "ja"):
            continue
        for run in RUN.findall(tweet.text):
            found.add(run)
            for size in (2, 3):
                found.update(run[i : i + size] for i in range(len(run) - size + 1))
    assert len(found) > 100, "the captures hold fewer Korean and Japanese words than expected"
    queries = sorted(found)
    singles = sorted({q[0] for q in queries})[:: max(1, len(queries) // 300)][:10]
    return queries + singles


async def _search(store: Any, words: tuple[str, ...]) -> set[str]:
    query = TweetQuery(limit=1000, conditions=(Condition("text", "search", words),))
    bodies, _ = await store.query(query)
    return {orjson.loads(body)["id"] for body in bodies}


def test_any_substring_of_the_korean_and_japanese_captures_is_found(
    captures: Path, make_store: StoreMaker
) -> None:
    tweets = _capture_tweets(captures)
    queries = _queries(tweets)

    async def run() -> dict[str, tuple[set[str], set[str]]]:
        store = await make_store()
        try:
            await store.append(tweets, [], 1_700_000_000.0)
            if hasattr(store, "search_caught_up"):
                await store.search_caught_up()
            wrong: dict[str, tuple[set[str], set[str]]] = {}
            for word in queries:
                expected = {t.id for t in tweets if word.lower() in t.text.lower()}
                got = await _search(store, (word,))
                if got != expected:
                    wrong[word] = (got, expected)
            # Words of several scripts together, all of which must occur.
            both = ("아리아즈", "ARIAZ")
            expected = {t.id for t in tweets if all(w.lower() in t.text.lower() for w in both)}
            assert expected and await _search(store, both) == expected
            return wrong
        finally:
            await store.close()

    wrong = asyncio.run(run())
    assert not wrong, f"{len(wrong)} of {len(queries)} queries differ, e.g. {list(wrong)[:5]}"


def test_a_japanese_substring_is_found_and_the_whole_run_too(make_store: StoreMaker) -> None:
    lines = [
        stream_line(1, "みんな見て、新しい写真"),
        stream_line(2, "見てない"),
        stream_line(3, "nothing to see"),
        stream_line(4, "สวัสดีครับ ทุกคน"),
    ]
    tweets = [t for line in lines for t in parse_line(line).tweets]

    async def run() -> dict[str, set[str]]:
        store = await make_store()
        try:
            await store.append(tweets, [], 1_700_000_000.0)
            if hasattr(store, "search_caught_up"):
                await store.search_caught_up()
            words = ["見て", "みんな見て", "写真", "見", "新しい 写真", "んな見", "ดีคร", "see"]
            return {word: await _search(store, tuple(word.split())) for word in words}
        finally:
            await store.close()

    assert asyncio.run(run()) == {
        "見て": {"1", "2"},
        "みんな見て": {"1"},
        "写真": {"1"},
        "見": {"1", "2"},  # one character: a scan
        "新しい 写真": {"1"},
        "んな見": {"1"},
        "ดีคร": {"4"},
        "see": {"3"},
    }


def _vocabulary(path: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.vocab USING fts5vocab(main, tweets_fts, 'row')")
        return [row[0] for row in conn.execute("SELECT term FROM temp.vocab WHERE cnt > 0")]
    finally:
        conn.close()


def test_retention_and_deletion_remove_exactly_the_bigrams_they_indexed(tmp_path: Path) -> None:
    from relay.store.sqlite.deletions import queue_deletions
    from relay.store.sqlite.store import SQLiteStore

    path = str(tmp_path / "relay.db")
    lines = [stream_line(i, f"古い{i}番目のツイート") for i in range(1, 4)]
    lines += [stream_line(4, "消される呟き"), stream_line(5, "残る")]
    tweets = [t for line in lines for t in parse_line(line).tweets]

    async def run() -> tuple[list[str], list[str]]:
        store = await SQLiteStore.open(path)
        try:
            await store.append(tweets, [], 1_700_000_000.0)
            await store.search_caught_up()
            before = _vocabulary(path)
            await store.trim(through_seq=3, received_before=None, limit=100)
            queue_deletions(path, ["4"])
            await store.apply_deletions(100)
            found = await _search(store, ("残る",))
            assert found == {"5"}
            return before, _vocabulary(path)
        finally:
            await store.close()

    before, after = asyncio.run(run())
    assert "ツイ" in before and "消さ" in before
    # An external-content index forgets only what it is told with the very text it
    # indexed: a removal in another form would leave these bigrams behind.
    assert sorted(after) == ["残る"]


def test_the_postgres_function_gives_the_python_form(captures: Path, pg_url: str) -> None:
    import psycopg

    from relay.store.postgres.admin import migrate

    texts = [t.text for t in _capture_tweets(captures)]
    texts += ["", "見", "a見b", "みんな見て abc見て!", "𠀋𠀌x", "สวัสดีครับ", "line\n改行\nend"]
    asyncio.run(migrate(pg_url))
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT relay_index_form(t) FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, n) "
            "ORDER BY n",
            [texts],
        ).fetchall()
    assert [row[0] for row in rows] == [index_form(text) for text in texts]


@pytest.mark.parametrize("word", ["見て", "a見"])
def test_a_word_is_scanned_only_when_it_holds_a_lone_character(word: str) -> None:
    from relay.store.sqlite import query as sqlite_query

    sql, params = sqlite_query.where((Condition("text", "search", (word,)),))
    assert ("MATCH" in sql) == (not needs_scan(word))
    assert ("instr" in sql) == needs_scan(word)
    assert params
