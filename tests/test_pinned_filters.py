"""A token's pinned filters mean the same on the stream, on resume and in the object API.

One predicate, two forms (``TweetFilter.matches`` and the store's compiled conditions):
for each filter kind the same tweets come out of a live subscription, a resume from 0,
the object API's listing, count, lookups by id, and the user objects.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from relay.core.auth import issue_token
from relay.core.filters import parse_filter
from relay.testing import RelayServer
from tests.streams import TRANSPORTS, open_stream
from tests.support import UNIT
from tests.test_auth import SECRET

SENTINEL = 999


def line(
    tweet_id: int,
    text: str,
    *,
    lang: str | None,
    username: Any,
    media: bool = False,
) -> bytes:
    """A filtered-stream message whose author (id ``u<tweet_id>``) has this username."""
    author = f"u{tweet_id}"
    data: dict[str, Any] = {
        "id": str(tweet_id),
        "text": text,
        "author_id": author,
        "created_at": "2026-01-01T00:00:00.000Z",
    }
    if lang is not None:
        data["lang"] = lang
    includes: dict[str, Any] = {"users": [{"id": author, "username": username, "name": "n"}]}
    if media:
        data["attachments"] = {"media_keys": ["3_1"]}
        includes["media"] = [{"media_key": "3_1", "type": "photo"}]
    return orjson.dumps(
        {"data": data, "includes": includes, "matching_rules": [{"id": "1", "tag": "all"}]}
    )


# Non-ASCII case (SQLite's lower() folds ASCII only), a missing username, one that is
# not a string, a missing lang.
TWEETS = [
    line(1, "Grüße aus der STRASSE", lang="en", username="Alice"),
    line(2, "ÀB cd 猫", lang="ja", username="ÉLODIE", media=True),
    line(3, "İstanbul nights", lang="en", username=None),
    line(4, "àb in lower case", lang="es", username=12345, media=True),
    line(5, "plain words", lang=None, username="bob"),
    line(6, "straße und àB", lang="fr", username="élodie"),
    line(7, "a flag for a name", lang="en", username=True),
]

# (pinned filter, the fields of a last tweet that passes it)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "lang": ({"lang": "en"}, {"lang": "en"}),
    "lang list": ({"lang": ["ja", "es"]}, {"lang": "ja"}),
    "author non-ASCII": ({"author": "élodie"}, {"username": "Élodie"}),
    "author with @ and case": ({"author": ["@Bob", "alice"]}, {"username": "BOB"}),
    "has_media": ({"has_media": True}, {"media": True}),
    "no media": ({"has_media": False}, {}),
    "keyword non-ASCII": ({"keyword": "àb"}, {"text": "ÀBC"}),
    "keyword dotted capital I": ({"keyword": "İSTANBUL"}, {"text": "i̇stanbul"}),
    "keyword sharp s": ({"keyword": "strasse"}, {"text": "Strasse"}),
    "keywords and lang": ({"keyword": "in lower", "lang": "es"}, {"lang": "es"}),
}


def sentinel(fields: dict[str, Any]) -> bytes:
    values: dict[str, Any] = {
        "text": "in lower strasse àb i̇stanbul",
        "lang": "en",
        "username": "someone",
        "media": False,
    }
    values.update(fields)
    return line(SENTINEL, values.pop("text"), **values)


def until_sentinel(stream: Any) -> list[str]:
    ids: list[str] = []
    deadline = time.monotonic() + 4 * UNIT
    while not ids or ids[-1] != str(SENTINEL):
        ids += [f["tweet"]["id"] for f in stream.tweets(1, timeout=deadline - time.monotonic())]
    return ids


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_stream_resume_and_object_api_agree_on_each_pinned_filter(
    case: str,
    transport: str,
    start_relay: Callable[..., RelayServer],
) -> None:
    pinned, passing = CASES[case]
    relay = start_relay(secret=SECRET, public_channels=[])
    token = issue_token(
        SECRET, subject="s", channels=["tweets"], ttl=600, now=time.time(), filters=pinned
    )
    live = open_stream(transport, relay, "tweets", token=token)
    relay.push(*TWEETS, sentinel(passing))
    relay.wait_seq(len(TWEETS) + 1)

    streamed = until_sentinel(live)
    resumed_stream = open_stream(transport, relay, "tweets", token=token, since=(relay.epoch, 0))
    resumed = until_sentinel(resumed_stream)
    status, body = relay.get(f"/v1/objects/tweets?sort=seq&limit=100&token={token}")
    assert status == 200, body
    listed = [t["id"] for t in body["results"]]

    assert streamed == resumed == listed
    assert 1 < len(listed) < len(TWEETS) + 1, "the filter passes some tweets, not all"
    assert body["count"] == len(listed)
    assert relay.get(f"/v1/objects/tweets?count=1&token={token}") == (200, {"count": len(listed)})
    # The pure predicate says the same (the stream's own filter, over the served objects).
    tweet_filter = parse_filter(pinned)
    for tweet in body["results"]:
        author = tweet.get("author") or {}
        assert tweet_filter.matches(
            tweet.get("lang"), author.get("username"), bool(tweet.get("media")), tweet["text"]
        )
    # Lookups: outside the filter answers exactly like a tweet that does not exist.
    for tweet_id in [str(i) for i in range(1, len(TWEETS) + 1)]:
        status, body = relay.get(f"/v1/objects/tweets/{tweet_id}?token={token}")
        if tweet_id in listed:
            assert status == 200 and body["id"] == tweet_id
        else:
            assert (status, body) == (
                404,
                {"errors": [{"message": f"no tweet with id {tweet_id!r}", "reason": "notFound"}]},
            )
        # Each author wrote one tweet: readable exactly when that tweet is.
        status, body = relay.get(f"/v1/objects/users/u{tweet_id}?token={token}")
        assert status == (200 if tweet_id in listed else 404), (tweet_id, body)
    # A search never reaches past the filter either.
    status, body = relay.get(f"/v1/objects/tweets?search=in&token={token}")
    assert status == 200 and {t["id"] for t in body["results"]} <= set(listed)
    live.close()
    resumed_stream.close()


def test_a_rule_token_pinned_to_media_reads_no_tweet_without_media(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(secret=SECRET, public_channels=[])
    relay.push(*TWEETS)
    relay.wait_seq(len(TWEETS))
    token = issue_token(
        SECRET,
        subject="s",
        channels=["rule:all"],
        ttl=600,
        now=time.time(),
        filters={"has_media": True},
    )
    for query in ("", "&rule=all", "&q=" + quote('{"lang":{"$in":["en","ja","es"]}}')):
        status, body = relay.get(f"/v1/objects/tweets?sort=seq&token={token}{query}")
        assert status == 200 and [t["id"] for t in body["results"]] == ["2", "4"], query
    assert relay.get(f"/v1/objects/tweets/1?token={token}")[0] == 404
    assert relay.get(f"/v1/objects/users/u1?token={token}")[0] == 404
    assert relay.get(f"/v1/objects/users/u2?token={token}")[0] == 200
