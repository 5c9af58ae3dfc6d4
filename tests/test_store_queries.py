"""The object API's structured queries and the stream's filtered reads mean the same on
both stores (one fixture: SQLite and PostgreSQL), down to the store: q, sort, search,
rules, pinned filters (against the stream's own predicate), lookups, time limits and
values PostgreSQL cannot hold in text (NUL)."""

from __future__ import annotations

import asyncio
import dataclasses
from functools import partial
from typing import Any

import orjson
import pytest

from relay.core.filters import parse_filter
from relay.core.protocol import tweet
from relay.core.query import Condition, parse_tweet_query
from relay.core.tweets import parse_line
from relay.errors import QueryTimeout
from relay.web.ws_frames import text_frame, tweet_page
from tests.pg_server import StoreMaker
from tests.test_objects import TWEETS as OBJECT_TWEETS
from tests.test_objects import q
from tests.test_pinned_filters import CASES, sentinel
from tests.test_pinned_filters import TWEETS as FILTER_TWEETS


def _parse(*lines: bytes) -> tuple[list[Any], list[dict[str, Any]]]:
    tweets: list[Any] = []
    users: list[dict[str, Any]] = []
    for line in lines:
        parsed = parse_line(line)
        tweets.extend(parsed.tweets)
        users.extend(parsed.users)
    return tweets, users


def _ids(objects: list[bytes]) -> list[str]:
    return [orjson.loads(o)["id"] for o in objects]


QUERIES: list[tuple[str, list[str]]] = [
    ("sort=seq&limit=3", ["101", "102", "103"]),
    ("sort=seq&limit=3&offset=3", ["104"]),
    ("sort=createdAt", ["104", "102", "101", "103"]),
    ("sort=-createdAt", ["103", "101", "102", "104"]),
    ("sort=-id", ["104", "103", "102", "101"]),
    ("sort=id", ["101", "102", "103", "104"]),
    ("", ["104", "103", "102", "101"]),
    ("sort=seq&" + q({"lang": "en"}), ["101", "103"]),
    ("sort=seq&" + q({"lang": {"$in": ["es", "ja"]}}), ["102", "104"]),
    ("sort=seq&" + q({"lang": {"$ne": "en"}}), ["102", "104"]),
    ("sort=seq&" + q({"author.username": "user1"}), ["101", "103"]),
    ("sort=seq&" + q({"author.id": {"$in": ["2", "3"]}}), ["102", "104"]),
    ("sort=seq&" + q({"id": "103"}), ["103"]),
    ("sort=seq&" + q({"rules": "python"}), ["103", "104"]),
    ("sort=seq&" + q({"rules": {"$ne": "cats"}}), ["103"]),
    ("sort=seq&" + q({"rules": {"$in": ["python", "nothing"]}}), ["103", "104"]),
    ("sort=seq&" + q({"has_media": True}), ["102"]),
    ("sort=seq&" + q({"has_media": False}), ["101", "103", "104"]),
    ("sort=seq&" + q({"seq": {"$gt": 1, "$lte": 3}}), ["102", "103"]),
    ("sort=seq&" + q({"createdAt": {"$gte": "2026-01-01T09:30:00Z"}}), ["101", "103"]),
    ("sort=seq&" + q({"createdAt": {"$lt": "2026-01-01T10:00:00+01:00"}}), ["104"]),
    ("sort=seq&" + q({"createdAt": "2026-01-01T10:00:00Z"}), ["101"]),
    ("sort=seq&" + q({"lang": "en", "rules": "cats"}), ["101"]),
    ("sort=seq&search=gatos", ["102"]),
    ("sort=seq&search=GATOS%20son", ["102"]),
    ("sort=seq&search=cats%20python", []),
    ("sort=seq&search=NEAR%20OR", ["104"]),
    ("sort=seq&search=%22cats", ["101"]),
    ("sort=seq&search=猫が好き", ["104"]),
    ("sort=seq&search=los-gatos", ["102"]),  # a phrase of the words, on both stores
    ("sort=seq&search=great.", ["101"]),
    ("sort=seq&search=--", []),
    ("sort=seq&rule=cats", ["101", "102", "104"]),
    ("sort=seq&since_seq=2", ["103", "104"]),
    ("sort=seq&" + q({"lang": "x' OR '1'='1"}), []),
    ("rule=x'%20OR%20'1'='1", []),
]


@pytest.mark.parametrize(("query", "expected"), QUERIES)
def test_the_object_queries_mean_the_same_on_both_stores(
    make_store: StoreMaker, query: str, expected: list[str]
) -> None:
    from urllib.parse import parse_qs

    parsed = parse_tweet_query(parse_qs(query, keep_blank_values=True))

    async def run() -> tuple[list[bytes], int, int]:
        store = await make_store()
        await store.append(*_parse(*OBJECT_TWEETS), 1_700_000_000.0)
        page, total = await store.query(parsed, timeout=5.0)
        _, counted = await store.query(dataclasses.replace(parsed, count_only=True))
        await store.close()
        return page, total, counted

    page, total, counted = asyncio.run(run())
    assert _ids(page) == expected
    assert counted == total
    if "limit" not in query:
        assert total == len(expected)
    assert all(orjson.loads(o)["objectType"] == "objects.tweets" for o in page)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_pinned_filter_reads_what_the_stream_predicate_passes(
    make_store: StoreMaker, case: str
) -> None:
    pinned, passing = CASES[case]
    tweet_filter = parse_filter(pinned)
    conditions = tweet_filter.conditions()
    tweets, users = _parse(*FILTER_TWEETS, sentinel(passing))
    expected = [
        t.id for t in tweets if tweet_filter.matches(t.lang, t.author_username, t.has_media, t.text)
    ]
    assert 1 < len(expected) <= len(tweets)

    async def run() -> tuple[list[str], list[str], list[str], list[str], int]:
        store = await make_store()
        await store.append(tweets, users, 1_700_000_000.0)
        head = await store.head()
        read = [
            orjson.loads(t.body)["id"]
            for t in await store.read_after("tweets", 0, head, 100, conditions=conditions)
        ]
        ruled = [
            orjson.loads(t.body)["id"]
            for t in await store.read_after("rule:all", 0, head, 100, conditions=conditions)
        ]
        # A catch-up's read: the same rows, bodies only.
        bodies = await store.read_bodies("tweets", 0, head, 100, list, conditions=conditions)
        assert [orjson.loads(body)["id"] for _, body in bodies.built] == read
        query = parse_tweet_query({"sort": ["seq"], "limit": ["100"]}).narrowed(conditions)
        listed, total = await store.query(query)
        found = [t.id for t in tweets if await store.tweet(t.id, conditions) is not None]
        users_found = [t.id for t in tweets if await store.user(f"u{t.id}", conditions) is not None]
        await store.close()
        assert sorted(users_found) == sorted(found)
        return read, ruled, _ids(listed), found, total

    read, ruled, listed, found, total = asyncio.run(run())
    assert read == ruled == listed == found == expected
    assert total == len(expected)


def test_read_after_stops_at_the_byte_budget_and_counts_stop_past_the_cap(
    make_store: StoreMaker,
) -> None:
    async def run() -> None:
        store = await make_store()
        await store.append(*_parse(*OBJECT_TWEETS), 1_700_000_000.0)
        first = await store.read_after("tweets", 0, 4, 10, max_bytes=1)
        assert [t.seq for t in first] == [1]
        assert first[0].channels == ("tweets", "rule:cats")
        assert orjson.loads(first[0].body)["seq"] == 1
        assert await store.count_after("tweets", 0, 4, cap=1) == 2
        assert await store.count_after("tweets", 0, 4) == 4
        assert await store.count_after("rule:python", 0, 4) == 2
        assert await store.highest_tweet_id("python") == "104"
        assert await store.highest_tweet_id("none") is None
        await store.close()

    asyncio.run(run())


def test_read_bodies_reads_the_rows_of_read_after_and_says_where_it_stopped(
    make_store: StoreMaker,
) -> None:
    async def run() -> None:
        store = await make_store()
        await store.append(*_parse(*OBJECT_TWEETS), 1_700_000_000.0)
        stored = [(t.seq, t.body) for t in await store.read_after("tweets", 0, 4, 10)]
        whole = await store.read_bodies("tweets", 0, 4, 10, list)
        assert whole.built == stored
        assert all(type(body) is bytes for _, body in whole.built)
        assert (whole.count, whole.last, whole.complete) == (4, 4, True)
        # A rule channel, a range, the limit and the byte budget: the same rows as
        # read_after, and a read that was cut is not complete.
        ruled = await store.read_bodies("rule:cats", 0, 4, 10, list)
        assert [seq for seq, _ in ruled.built] == [1, 2, 4] and ruled.complete
        ranged = await store.read_bodies("rule:cats", 1, 3, 10, list)
        assert [seq for seq, _ in ranged.built] == [2] and ranged.complete
        limited = await store.read_bodies("tweets", 0, 4, 2, list)
        assert (limited.count, limited.last, limited.complete) == (2, 2, False)
        budget = await store.read_bodies("tweets", 0, 4, 10, list, max_bytes=1)
        assert (budget.count, budget.last, budget.complete) == (1, 1, False)
        # The page ends with the first row that reaches the budget (the store may cut it
        # where it reads: PostgreSQL in the server).
        two = len(stored[0][1]) + 1
        second = await store.read_bodies("tweets", 0, 4, 10, list, max_bytes=two)
        assert (second.built, second.last, second.complete) == (stored[:2], 2, False)
        exact = len(stored[0][1]) + len(stored[1][1])
        reached = await store.read_bodies("tweets", 0, 4, 10, list, max_bytes=exact)
        assert (reached.built, reached.complete) == (stored[:2], False)
        roomy = await store.read_bodies("tweets", 0, 4, 10, list, max_bytes=10**6)
        assert roomy.built == stored and roomy.complete
        empty = await store.read_bodies("tweets", 4, 4, 10, list)
        assert (empty.built, empty.count, empty.last, empty.complete) == ([], 0, 0, True)
        # What a catch-up builds: the frames of the page, end to end.
        framed = await store.read_bodies("tweets", 0, 4, 10, partial(tweet_page, "tweets"))
        assert framed.built == b"".join(text_frame(tweet("tweets", seq, b)) for seq, b in stored)
        await store.close()

    asyncio.run(run())


def test_ids_compare_by_length_then_text(make_store: StoreMaker) -> None:
    from tests.support import stream_line

    async def run() -> str | None:
        store = await make_store()
        for n in (99, 1000, 250):
            await store.append(*_parse(stream_line(n)), 1.0)
        highest = await store.highest_tweet_id()
        await store.close()
        return highest

    assert asyncio.run(run()) == "1000"


def test_a_query_past_its_time_limit_is_a_query_timeout(make_store: StoreMaker) -> None:
    async def run() -> None:
        store = await make_store()
        await store.append(*_parse(*OBJECT_TWEETS), 1_700_000_000.0)
        with pytest.raises(QueryTimeout):
            await store.query(parse_tweet_query({}), timeout=-1.0)
        assert len((await store.query(parse_tweet_query({}), timeout=5.0))[0]) == 4
        await store.close()

    asyncio.run(run())


def test_nul_in_text_is_stored_without_stopping_ingest(make_store: StoreMaker) -> None:
    # PostgreSQL's text cannot hold NUL: the indexed columns drop it, the body keeps it.
    line = orjson.dumps(
        {
            "data": {"id": "7", "text": "nul\u0000here cats", "lang": "e\u0000n", "author_id": "9"},
            "includes": {"users": [{"id": "9", "username": "n\u0000m", "name": "a\u0000b"}]},
            "matching_rules": [{"id": "1", "tag": "cats"}],
        }
    )
    from tests.support import stream_line

    async def run() -> None:
        store = await make_store()
        tweets, users = _parse(stream_line(1), line, stream_line(2))
        result = await store.append(tweets, users, 1.0)
        assert [t.seq for t in result.stored] == [1, 2, 3]
        assert result.unstorable == ()
        body = await store.tweet("7")
        assert body is not None and orjson.loads(body)["text"] == "nul\u0000here cats"
        found, _ = await store.query(
            parse_tweet_query({"search": ["cats"]}).narrowed(
                [Condition("text", "contains", ("here",))]
            )
        )
        assert _ids(found) == ["7"]
        assert await store.user("9") is not None
        assert await store.tweet("7\u0000") is None
        await store.close()

    asyncio.run(run())
