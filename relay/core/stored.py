"""Stored tweet objects back into the :class:`~relay.core.tweets.Tweet` they were built
from. Pure: no I/O, no clock.

The archive keeps each tweet as the store served it (the parser's object with the
store's fields appended: :func:`relay.core.tweets.stored_body`), not as X sent it: the
parser rebuilt authors and media from ``includes``, which are gone by then. A replay or a
restore reads those objects back through :func:`parse_stored`: the Tweet it gives, stored
again with the same seq and receive time, has the same bytes as the archived object; with
another seq (a replay into a new store), it differs in ``seq`` only.

Archived objects are as hostile as any input (a bucket can be written by others): every
field the store derives something from is checked as the parser checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from relay.core.times import normalise_time
from relay.core.tweets import (
    JSON,
    STORE_KEYS,
    Parsed,
    Rule,
    Tweet,
    encode_object,
    tweet_id_of,
    usable_lang,
    username_of,
)
from relay.core.tweets import _key as lookup_key  # the parser's own check of a key
from relay.errors import MalformedPayload


def parse_stored(line: bytes | str) -> Parsed:
    """Read one stored tweet object (a served object, as JSON) into the tweet and the
    users the store would hold for it; :class:`~relay.errors.MalformedPayload` when it
    is not one."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"not JSON: {exc}", reason="not_json") from None
    if not isinstance(value, dict):
        raise MalformedPayload(
            f"expected a stored tweet object, got {type(value).__name__}", reason="not_object"
        )
    tweet = tweet_from_stored(value)
    return Parsed(tweets=(tweet,), users=tuple(users_of(tweet.object)))


def tweet_from_stored(stored: Mapping[str, Any], *, encode: bool = True) -> Tweet:
    """The Tweet a stored object was built from: the object without the store's fields,
    its rules from ``matching_rules``, its indexed fields as the parser derives them.
    Without ``encode`` the Tweet has no encoded object: for a caller that stores the
    stored object as it is (a restore, same seq and receive time)."""
    tweet_id = tweet_id_of(stored.get("id"))
    if tweet_id is None or tweet_id != stored.get("id"):
        raise MalformedPayload("a stored tweet without a usable id", reason="no_id")
    text = stored.get("text")
    if not isinstance(text, str):
        raise MalformedPayload(f"stored tweet {tweet_id} has no text", reason="no_text")
    obj: JSON = {key: value for key, value in stored.items() if key not in STORE_KEYS}
    author = obj.get("author")
    author = author if isinstance(author, dict) else None
    author_id = lookup_key(obj.get("author_id"))
    # As the parser wrote them: {"id": rule id or "", "tag": tag or ""}.
    rules = tuple(
        Rule(entry["id"], entry["tag"])
        for entry in _dicts(obj.get("matching_rules"))
        if isinstance(entry.get("id"), str)
        and isinstance(entry.get("tag"), str)
        and (entry["id"] or entry["tag"])
    )
    lang = obj.get("lang")
    created_at = normalise_time(obj.get("created_at"))
    encoded = encode_object(obj) if encode else b""
    return Tweet(
        id=tweet_id,
        text=text,
        author_id=author_id,
        author=author,
        lang=usable_lang(lang),
        created_at=created_at,
        rules=rules,
        has_media=bool(obj.get("media")),
        encoded=encoded,
        author_username=username_of(author),
        appendable=bool(encoded),
        decoded=obj,
    )


def users_of(obj: Mapping[str, Any]) -> list[JSON]:
    """The user objects a stored tweet holds (its author, the authors of the tweets it
    references), as the parser took them from ``includes``: what the store's users are
    rebuilt from."""
    found: dict[str, JSON] = {}
    candidates = [obj.get("author")]
    for ref in _dicts(obj.get("referenced_tweets")):
        included = ref.get("tweet")
        if isinstance(included, dict):
            candidates.append(included.get("author"))
    for user in candidates:
        if isinstance(user, dict) and isinstance(user_id := user.get("id"), str) and user_id:
            found[user_id] = user
    return list(found.values())


def _dicts(value: Any) -> list[JSON]:
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []
