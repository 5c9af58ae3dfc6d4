"""The object API over HTTP: paging, sorting, the q subset, full-text search, rules, counts."""

from __future__ import annotations

import json
from urllib.parse import quote

import orjson
import pytest

from relay.testing import RelayServer


def _line(
    tweet_id: int,
    text: str,
    *,
    lang: str,
    tags: tuple[str, ...],
    author: str,
    created: str,
    media: bool = False,
) -> bytes:
    data = {
        "id": str(tweet_id),
        "text": text,
        "lang": lang,
        "author_id": author,
        "created_at": created,
    }
    includes: dict[str, object] = {"users": [{"id": author, "username": f"user{author}"}]}
    if media:
        data["attachments"] = {"media_keys": ["3_1"]}  # type: ignore[assignment]
        includes["media"] = [{"media_key": "3_1", "type": "photo"}]
    return orjson.dumps(
        {
            "data": data,
            "includes": includes,
            "matching_rules": [{"id": "1", "tag": t} for t in tags],
        }
    )


TWEETS = [
    _line(
        101,
        "cats are great",
        lang="en",
        tags=("cats",),
        author="1",
        created="2026-01-01T10:00:00.000Z",
    ),
    _line(
        102,
        "los gatos son geniales",
        lang="es",
        tags=("cats",),
        author="2",
        created="2026-01-01T09:00:00.000Z",
        media=True,
    ),
    _line(
        103,
        "python asyncio tips",
        lang="en",
        tags=("python",),
        author="1",
        created="2026-01-01T11:00:00.000Z",
    ),
    _line(
        104,
        "猫が好き NEAR OR",
        lang="ja",
        tags=("cats", "python"),
        author="3",
        created="2026-01-01T08:00:00.000Z",
    ),
]


@pytest.fixture
def loaded(pushed: RelayServer) -> RelayServer:
    relay = pushed
    relay.push(*TWEETS)
    relay.wait_seq(len(TWEETS))
    return relay


def ids(relay: RelayServer, query: str) -> list[str]:
    status, body = relay.get("/v1/objects/tweets?" + query)
    assert status == 200, body
    return [t["id"] for t in body["results"]]


def q(value: object) -> str:
    return "q=" + quote(json.dumps(value))


def test_default_listing_is_newest_first_with_the_total_count(loaded: RelayServer) -> None:
    status, body = loaded.get("/v1/objects/tweets")
    assert status == 200
    assert [t["id"] for t in body["results"]] == ["104", "103", "102", "101"]
    assert body["count"] == 4
    assert all(t["objectType"] == "objects.tweets" for t in body["results"])


def test_limit_and_offset_page_stably(loaded: RelayServer) -> None:
    pages = [ids(loaded, f"sort=seq&limit=3&offset={o}") for o in (0, 3)]
    assert pages == [["101", "102", "103"], ["104"]]


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("createdAt", ["104", "102", "101", "103"]),
        ("-createdAt", ["103", "101", "102", "104"]),
        (quote('[{"sortBy":"createdAt","direction":"desc"}]'), ["103", "101", "102", "104"]),
        ("-id", ["104", "103", "102", "101"]),
    ],
)
def test_sort_forms(loaded: RelayServer, sort: str, expected: list[str]) -> None:
    assert ids(loaded, f"sort={sort}") == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"lang": "en"}, ["101", "103"]),
        ({"lang": {"$in": ["es", "ja"]}}, ["102", "104"]),
        ({"lang": {"$ne": "en"}}, ["102", "104"]),
        ({"author.username": "user1"}, ["101", "103"]),
        ({"rules": "python"}, ["103", "104"]),
        ({"rules": {"$ne": "cats"}}, ["103"]),
        ({"has_media": True}, ["102"]),
        ({"seq": {"$gt": 1, "$lte": 3}}, ["102", "103"]),
        ({"createdAt": {"$gte": "2026-01-01T09:30:00Z"}}, ["101", "103"]),
        ({"lang": "en", "rules": "cats"}, ["101"]),
    ],
)
def test_the_q_subset(loaded: RelayServer, query: object, expected: list[str]) -> None:
    assert ids(loaded, "sort=seq&" + q(query)) == expected


def test_search_rule_since_seq_and_count(loaded: RelayServer) -> None:
    assert ids(loaded, "sort=seq&search=gatos") == ["102"]
    assert ids(loaded, "sort=seq&search=" + quote("NEAR OR")) == ["104"]  # words, not syntax
    assert ids(loaded, "sort=seq&search=" + quote('"cats')) == ["101"]
    assert ids(loaded, "sort=seq&rule=cats") == ["101", "102", "104"]
    assert ids(loaded, "sort=seq&since_seq=2") == ["103", "104"]
    assert loaded.get("/v1/objects/tweets?count=1&rule=python") == (200, {"count": 2})


def test_values_never_reach_sql_as_text(loaded: RelayServer) -> None:
    hostile = "x' OR '1'='1"
    assert ids(loaded, q({"lang": hostile})) == []
    assert ids(loaded, "rule=" + quote(hostile)) == []
    assert ids(loaded, "search=" + quote("'); DROP TABLE tweets; --")) == []
    assert loaded.get("/v1/objects/tweets?count=1")[1]["count"] == 4
