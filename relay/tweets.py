"""X API v2 payloads in, stored tweet objects out. Pure: no I/O, no clock.

Three payload shapes reach the relay, all one JSON object a line:

* a filtered-stream message: ``{"data": {...}, "includes": {...}, "matching_rules": [...]}``;
* the same as written by twarc2, with a ``__twarc`` metadata object (or ours, ``__relay``);
* a search-response page: ``{"data": [...], "includes": {...}, "meta": {...}}``.

Beyond ``id`` and ``text`` every field may be absent: the API sends only the
fields and expansions that were asked for. A blank line is a keep-alive. A line
that is not such a payload raises :class:`~relay.errors.MalformedPayload`; one bad
tweet inside a good page is skipped and reported, the rest is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from relay.errors import MalformedPayload

OBJECT_TYPE = "objects.tweets"
ALL_CHANNEL = "tweets"
RULE_PREFIX = "rule:"
METADATA_KEYS = ("__twarc", "__relay")

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rule:
    """A stream rule a tweet matched. ``tag`` is ``""`` when the API sent none."""

    id: str
    tag: str

    @property
    def channel(self) -> str:
        # An untagged rule still needs a channel name: its id is stable and unique.
        return RULE_PREFIX + (self.tag or self.id)


@dataclass(frozen=True, slots=True)
class Tweet:
    """One tweet as the relay stores it: the fields it indexes plus the API object."""

    id: str
    text: str
    author_id: str | None
    author: JSON | None
    lang: str | None
    created_at: str | None
    rules: tuple[Rule, ...]
    has_media: bool
    object: JSON = field(repr=False)
    """The tweet as served: X's own fields, expanded, without store fields."""

    @property
    def channels(self) -> tuple[str, ...]:
        """Every channel this tweet is published on, ``tweets`` first."""
        seen = dict.fromkeys([ALL_CHANNEL, *(rule.channel for rule in self.rules)])
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one line held."""

    tweets: tuple[Tweet, ...] = ()
    users: tuple[JSON, ...] = ()
    api_errors: tuple[JSON, ...] = ()
    """The ``errors`` array of the payload (operational disconnects, partial errors)."""
    skipped: tuple[str, ...] = ()
    """Why each unusable tweet inside an otherwise good payload was skipped."""
    keepalive: bool = False


KEEPALIVE = Parsed(keepalive=True)


def parse_line(line: bytes | str, *, default_rules: Sequence[Rule] = ()) -> Parsed:
    """Read one stream or search line.

    ``default_rules`` are attached to tweets whose payload names no rule (search
    pages, where the poller knows which rule it asked for).
    """
    if not line.strip():
        return KEEPALIVE
    try:
        payload = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedPayload(f"expected a JSON object, got {type(payload).__name__}")
    return parse_payload(payload, default_rules=default_rules)


def parse_payload(payload: Mapping[str, Any], *, default_rules: Sequence[Rule] = ()) -> Parsed:
    """Read one decoded payload; see :func:`parse_line`."""
    data = payload.get("data")
    api_errors = _dicts(payload.get("errors"))
    if data is None:
        if api_errors:
            return Parsed(api_errors=api_errors)
        raise MalformedPayload("payload has neither data nor errors")
    if isinstance(data, dict):
        items: list[Any] = [data]
    elif isinstance(data, list):
        items = data
    else:
        raise MalformedPayload(f"data must be an object or a list, got {type(data).__name__}")

    includes = payload.get("includes")
    index = _Includes(includes if isinstance(includes, dict) else {})
    rules = tuple(_rules(payload.get("matching_rules"))) or tuple(default_rules)

    tweets: list[Tweet] = []
    skipped: list[str] = []
    for item in items:
        try:
            tweets.append(_tweet(item, index, rules))
        except MalformedPayload as exc:
            skipped.append(str(exc))
    return Parsed(
        tweets=tuple(tweets),
        users=tuple(index.users.values()),
        api_errors=api_errors,
        skipped=tuple(skipped),
    )


def normalise_time(value: Any) -> str | None:
    """An X timestamp as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (sorts as text), or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_time(moment)


def format_time(moment: datetime) -> str:
    """The one textual time format of the store and the API."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def time_from_unix(seconds: float) -> str:
    return format_time(datetime.fromtimestamp(seconds, tz=UTC))


def stored_object(tweet_object: Mapping[str, Any], *, seq: int, received_at: str) -> JSON:
    """The object the API and the stream serve: the tweet plus the Enginio fields."""
    obj = dict(tweet_object)
    obj["objectType"] = OBJECT_TYPE
    obj["seq"] = seq
    obj["createdAt"] = obj.get("created_at") or received_at
    obj["updatedAt"] = received_at
    obj["received_at"] = received_at
    return obj


class _Includes:
    """Lookup tables over a payload's ``includes``."""

    def __init__(self, includes: Mapping[str, Any]) -> None:
        self.users = _by_key(includes.get("users"), "id")
        self.tweets = _by_key(includes.get("tweets"), "id")
        self.media = _by_key(includes.get("media"), "media_key")
        self.places = _by_key(includes.get("places"), "id")
        self.polls = _by_key(includes.get("polls"), "id")


def _tweet(item: Any, index: _Includes, rules: tuple[Rule, ...]) -> Tweet:
    if not isinstance(item, dict):
        raise MalformedPayload("a tweet must be a JSON object")
    tweet_id = _id(item.get("id"))
    if tweet_id is None:
        raise MalformedPayload("tweet without a usable id")
    text = item.get("text")
    if not isinstance(text, str):
        raise MalformedPayload(f"tweet {tweet_id} has no text")

    obj: JSON = dict(item)
    obj["id"] = tweet_id
    author_id = _id(item.get("author_id"))
    author = index.users.get(author_id) if author_id else None
    obj["author"] = author
    obj["rules"] = [rule.tag or rule.id for rule in rules]
    obj["matching_rules"] = [{"id": rule.id, "tag": rule.tag} for rule in rules]

    references = []
    for ref in _dicts(item.get("referenced_tweets")):
        ref = dict(ref)
        ref_id = _id(ref.get("id"))
        if ref_id is not None and ref_id in index.tweets:
            included = dict(index.tweets[ref_id])
            included_author = _id(included.get("author_id"))
            if included_author and included_author in index.users:
                included["author"] = index.users[included_author]
            ref["tweet"] = included
        references.append(ref)
    if references:
        obj["referenced_tweets"] = references

    attachments = item.get("attachments")
    media: list[JSON] = []
    if isinstance(attachments, dict):
        for key in attachments.get("media_keys") or ():
            if isinstance(key, str):
                media.append(index.media.get(key, {"media_key": key}))
    obj["media"] = media

    geo = item.get("geo")
    if isinstance(geo, dict) and isinstance(geo.get("place_id"), str):
        place = index.places.get(geo["place_id"])
        if place is not None:
            obj["place"] = place

    created_at = normalise_time(item.get("created_at"))
    obj["created_at"] = created_at
    lang = item.get("lang")
    return Tweet(
        id=tweet_id,
        text=text,
        author_id=author_id,
        author=author,
        lang=lang if isinstance(lang, str) else None,
        created_at=created_at,
        rules=rules,
        has_media=bool(media),
        object=obj,
    )


def _rules(value: Any) -> Iterable[Rule]:
    # Schema drift seen in real captures: ids as numbers, tags null or missing.
    for entry in _dicts(value):
        rule_id = _id(entry.get("id"))
        tag = entry.get("tag")
        if rule_id is None and not isinstance(tag, str):
            continue
        yield Rule(id=rule_id or "", tag=tag if isinstance(tag, str) else "")


def _id(value: Any) -> str | None:
    """Ids arrive as strings, and as numbers from older or drifting producers."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _dicts(value: Any) -> tuple[JSON, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(entry for entry in value if isinstance(entry, dict))


def _by_key(value: Any, key: str) -> dict[str, JSON]:
    table: dict[str, JSON] = {}
    for entry in _dicts(value):
        entry_key = _id(entry.get(key))
        if entry_key is not None:
            table[entry_key] = entry
    return table
