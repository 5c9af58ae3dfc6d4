"""X API v2 payloads in, stored tweet objects out. Pure: no I/O, no clock.

Three payload shapes reach the relay, all one JSON object a line:

* a filtered-stream message: ``{"data": {...}, "includes": {...}, "matching_rules": [...]}``;
* the same as written by twarc2, with a ``__twarc`` metadata object (or ours, ``__relay``);
* a search-response page: ``{"data": [...], "includes": {...}, "meta": {...}}``.

Beyond ``id`` and ``text`` every field may be absent: the API sends only the
fields and expansions that were asked for. A blank line is a keep-alive. A line
that is not such a payload raises :class:`~relay.errors.MalformedPayload`, and
nothing else whatever the line holds; one bad tweet inside a good page is
skipped and reported (:class:`Skip`), the rest is kept.

The stream is hostile input: every field the relay derives something from is
checked for type and range here, so that the store, the hub and the filters past
this point can trust their types. A tweet whose field cannot be used is kept with
its object as sent and that derived value left empty (an unusable author name is
not indexed, an unusable time falls back to the receive time). Only a tweet
without a usable ``id`` or ``text`` is skipped.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay.core.times import normalise_time
from relay.errors import MalformedPayload

OBJECT_TYPE = "objects.tweets"
ALL_CHANNEL = "tweets"
RULE_PREFIX = "rule:"
METADATA_KEYS = ("__twarc", "__relay")

JSON = dict[str, Any]

MAX_ID = 2**64 - 1
"""X ids are unsigned 64-bit snowflakes: at most 20 decimal digits."""
MAX_KEY_LENGTH = 64
"""Other keys (user ids, media keys, place ids, rule ids) are short text."""
MAX_TAG_LENGTH = 256
"""A rule tag names a channel; longer ones fall back to the rule id."""
MAX_LANG_LENGTH = 35
"""The longest BCP 47 tag in practice; X sends two or three letters, or ``qme``."""
MAX_USERNAME_LENGTH = 64
"""X handles have at most 15 characters; filters take names up to 64."""


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
    """The author's user object as sent, whatever its fields hold."""
    lang: str | None
    created_at: str | None
    rules: tuple[Rule, ...]
    has_media: bool
    encoded: bytes = field(repr=False)
    """The tweet as served (X's own fields, expanded, without store fields), as orjson
    encodes it: the parser encodes it once, the store only appends its own fields."""
    author_username: str | None = None
    """The author's handle when it is a usable name: what is indexed and filtered on."""
    appendable: bool = True
    """Whether the object holds none of the store's fields, so that they can be
    appended to ``encoded`` as they are (else the stored object is built again)."""
    decoded: JSON | None = field(default=None, repr=False, compare=False)
    """The object as a dict when the parser still has it (not after a process hop)."""

    @property
    def object(self) -> JSON:
        """The tweet as served: X's own fields, expanded, without store fields."""
        if self.decoded is not None:
            return self.decoded
        decoded: JSON = orjson.loads(self.encoded)
        return decoded

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Across a process boundary (the parser process) a plain tuple, and without
        # the dict: the encoded bytes hold it, and decoding is the receiver's to skip.
        return _tweet_from_fields, (
            self.id,
            self.text,
            self.author_id,
            self.author,
            self.lang,
            self.created_at,
            tuple([(rule.id, rule.tag) for rule in self.rules]),
            self.has_media,
            self.encoded,
            self.author_username,
            self.appendable,
            None if self.encoded else self.decoded,
        )

    @property
    def channels(self) -> tuple[str, ...]:
        """Every channel this tweet is published on, ``tweets`` first."""
        seen = dict.fromkeys([ALL_CHANNEL, *(rule.channel for rule in self.rules)])
        return tuple(seen)


def _tweet_from_fields(
    tweet_id: str,
    text: str,
    author_id: str | None,
    author: JSON | None,
    lang: str | None,
    created_at: str | None,
    rules: tuple[tuple[str, str], ...],
    has_media: bool,
    encoded: bytes,
    author_username: str | None,
    appendable: bool,
    decoded: JSON | None,
) -> Tweet:
    return Tweet(
        tweet_id,
        text,
        author_id,
        author,
        lang,
        created_at,
        _rules_of(rules),
        has_media,
        encoded,
        author_username,
        appendable,
        decoded,
    )


_RULES: dict[tuple[tuple[str, str], ...], tuple[Rule, ...]] = {}
_MAX_RULE_SETS = 4096


def _rules_of(pairs: tuple[tuple[str, str], ...]) -> tuple[Rule, ...]:
    """The rules of a tweet that crossed from a parser process: a stream has few
    distinct sets of matching rules, so each set is built once (Rules are immutable)."""
    rules = _RULES.get(pairs)
    if rules is None:
        if len(_RULES) >= _MAX_RULE_SETS:  # a stream of ever new rules: start over
            _RULES.clear()
        rules = _RULES[pairs] = tuple([Rule(rule_id, tag) for rule_id, tag in pairs])
    return rules


STORE_KEYS = frozenset({"objectType", "seq", "createdAt", "updatedAt", "received_at"})
"""The fields the store adds to a tweet object (see :func:`stored_object`)."""


def stored_body(tweet: Tweet, *, seq: int, received_at: str) -> bytes:
    """``orjson.dumps(stored_object(tweet.object, ...))``, byte for byte, without
    decoding or encoding the object again when its fields can simply be appended."""
    if not tweet.appendable:
        return orjson.dumps(stored_object(tweet.object, seq=seq, received_at=received_at))
    return appended_body(tweet.encoded, tweet.created_at, seq, received_at)


def appended_body(encoded: bytes, created_at: str | None, seq: int, received_at: str) -> bytes:
    """:func:`stored_body` of an appendable tweet from its encoded object and its
    normalised ``created_at`` (what a store reads from
    :class:`~relay.core.tweet_rows.TweetRows`)."""
    # Times are ASCII digits and punctuation (normalise_time, time_from_unix): no escaping.
    received = received_at.encode()
    return b'%s,%s%d,"createdAt":"%s","updatedAt":"%s","received_at":"%s"}' % (
        encoded[:-1],
        _STORE_HEAD,
        seq,
        created_at.encode() if created_at else received,
        received,
        received,
    )


_STORE_HEAD = b'"objectType":"%s","seq":' % OBJECT_TYPE.encode()


@dataclass(frozen=True, slots=True)
class Skip:
    """A tweet left out of a good payload: a ``reason`` for counters, a detail for logs."""

    reason: str
    """``not_object``, ``no_id`` or ``no_text``."""
    detail: str

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True, slots=True)
class Parsed:
    """What one line held."""

    tweets: tuple[Tweet, ...] = ()
    users: tuple[JSON, ...] = ()
    """Included user objects with a usable ``id`` (as text), otherwise as sent."""
    api_errors: tuple[JSON, ...] = ()
    """The ``errors`` array of the payload (operational disconnects, partial errors)."""
    skipped: tuple[Skip, ...] = ()
    """Each unusable tweet inside an otherwise good payload, and why."""
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
        raise MalformedPayload(f"not JSON: {exc}", reason="not_json") from None
    if not isinstance(payload, dict):
        raise MalformedPayload(
            f"expected a JSON object, got {type(payload).__name__}", reason="not_object"
        )
    return parse_payload(payload, default_rules=default_rules)


def parse_payload(payload: Mapping[str, Any], *, default_rules: Sequence[Rule] = ()) -> Parsed:
    """Read one decoded payload; see :func:`parse_line`."""
    data = payload.get("data")
    api_errors = _dicts(payload.get("errors"))
    if data is None:
        if api_errors:
            return Parsed(api_errors=api_errors)
        raise MalformedPayload("payload has neither data nor errors", reason="no_data")
    if isinstance(data, dict):
        items: list[Any] = [data]
    elif isinstance(data, list):
        items = data
    else:
        raise MalformedPayload(
            f"data must be an object or a list, got {type(data).__name__}", reason="bad_data"
        )

    includes = payload.get("includes")
    index = _Includes(includes if isinstance(includes, dict) else {})
    rules = tuple(_rules(payload.get("matching_rules"))) or tuple(default_rules)

    tweets: list[Tweet] = []
    skipped: list[Skip] = []
    for item in items:
        tweet = _tweet(item, index, rules)
        if isinstance(tweet, Skip):
            skipped.append(tweet)
        else:
            tweets.append(tweet)
    return Parsed(
        tweets=tuple(tweets),
        users=tuple(index.users.values()),
        api_errors=api_errors,
        skipped=tuple(skipped),
    )


def stored_object(tweet_object: Mapping[str, Any], *, seq: int, received_at: str) -> JSON:
    """The object the API and the stream serve: the tweet plus the Enginio fields."""
    obj = dict(tweet_object)
    obj["objectType"] = OBJECT_TYPE
    obj["seq"] = seq
    obj["createdAt"] = obj.get("created_at") or received_at
    obj["updatedAt"] = received_at
    obj["received_at"] = received_at
    return obj


def username_of(user: Any) -> str | None:
    """A user object's handle when it is a usable name (indexed, filtered on), else None."""
    if not isinstance(user, dict):
        return None
    name = user.get("username")
    if isinstance(name, str) and 0 < len(name) <= MAX_USERNAME_LENGTH:
        return name
    return None


def display_name_of(user: Mapping[str, Any]) -> str | None:
    """A user object's display name when it is text, else None."""
    name = user.get("name")
    return name if isinstance(name, str) else None


def tweet_id_of(value: Any) -> str | None:
    """A tweet id as canonical decimal text, from digits or an int in 0 to 2**64-1.

    Ids arrive as strings, and as numbers from older or drifting producers.
    Anything else (negative, fractional, too long, not digits) is no id: the
    store orders ids by length then text, and the X API takes them back as
    ``since_id``.
    """
    if isinstance(value, str):
        if not 0 < len(value) <= 20 or not value.isascii() or not value.isdigit():
            return None
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        return None
    return str(number) if 0 <= number <= MAX_ID else None


class _Includes:
    """Lookup tables over a payload's ``includes``."""

    def __init__(self, includes: Mapping[str, Any]) -> None:
        self.users = _by_key(includes.get("users"), "id")
        self.tweets = _by_key(includes.get("tweets"), "id")
        self.media = _by_key(includes.get("media"), "media_key")
        self.places = _by_key(includes.get("places"), "id")
        self.polls = _by_key(includes.get("polls"), "id")


def _tweet(item: Any, index: _Includes, rules: tuple[Rule, ...]) -> Tweet | Skip:
    if not isinstance(item, dict):
        return Skip("not_object", f"a tweet must be a JSON object, got {type(item).__name__}")
    tweet_id = tweet_id_of(item.get("id"))
    if tweet_id is None:
        return Skip("no_id", f"tweet without a usable id ({_brief(item.get('id'))})")
    text = item.get("text")
    if not isinstance(text, str):
        return Skip("no_text", f"tweet {tweet_id} has no text ({_brief(text)})")

    obj: JSON = dict(item)
    obj["id"] = tweet_id
    author_id = _key(item.get("author_id"))
    author = index.users.get(author_id) if author_id else None
    obj["author"] = author
    obj["rules"] = [rule.tag or rule.id for rule in rules]
    obj["matching_rules"] = [{"id": rule.id, "tag": rule.tag} for rule in rules]

    references = []
    for ref in _dicts(item.get("referenced_tweets")):
        ref = dict(ref)
        ref_id = _key(ref.get("id"))
        if ref_id is not None and ref_id in index.tweets:
            included = dict(index.tweets[ref_id])
            included_author = _key(included.get("author_id"))
            if included_author and included_author in index.users:
                included["author"] = index.users[included_author]
            ref["tweet"] = included
        references.append(ref)
    if references:
        obj["referenced_tweets"] = references

    attachments = item.get("attachments")
    media: list[JSON] = []
    if isinstance(attachments, dict):
        keys = attachments.get("media_keys")
        for key in keys if isinstance(keys, list) else ():
            media_key = _key(key)
            if media_key is not None:
                media.append(index.media.get(media_key, {"media_key": media_key}))
    obj["media"] = media

    geo = item.get("geo")
    place_id = _key(geo.get("place_id")) if isinstance(geo, dict) else None
    if place_id is not None:
        place = index.places.get(place_id)
        if place is not None:
            obj["place"] = place

    # The served created_at is the normalised text or null, never another type:
    # clients sort and parse it. The store falls back to the receive time.
    created_at = normalise_time(item.get("created_at"))
    obj["created_at"] = created_at
    lang = item.get("lang")
    encoded = encode_object(obj)
    return Tweet(
        id=tweet_id,
        text=text,
        author_id=author_id,
        author=author,
        lang=usable_lang(lang),
        created_at=created_at,
        rules=rules,
        has_media=bool(media),
        encoded=encoded,
        author_username=username_of(author),
        appendable=bool(encoded) and STORE_KEYS.isdisjoint(obj),
        decoded=obj,
    )


def rule_keys(value: Any) -> tuple[str, ...]:
    """The channel keys of a payload's ``matching_rules`` value, as the parser reads them."""
    return tuple([rule.tag or rule.id for rule in _rules(value)])


def _rules(value: Any) -> Iterable[Rule]:
    # Schema drift seen in real captures: ids as numbers, tags null or missing.
    for entry in _dicts(value):
        rule_id = _key(entry.get("id"))
        tag = entry.get("tag")
        if not isinstance(tag, str) or len(tag) > MAX_TAG_LENGTH:
            tag = ""
        if rule_id is None and not tag:
            continue
        yield Rule(id=rule_id or "", tag=tag)


def _key(value: Any) -> str | None:
    """A lookup key (user id, media key, rule id...): short text, or an unsigned 64-bit int."""
    if isinstance(value, str):
        return value if 0 < len(value) <= MAX_KEY_LENGTH else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID:
        return str(value)
    return None


def _brief(value: Any) -> str:
    """A value for a log line: its type and the start of its text, never all of it."""
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _dicts(value: Any) -> tuple[JSON, ...]:
    if not isinstance(value, list):
        return ()
    return tuple([entry for entry in value if isinstance(entry, dict)])


def _by_key(value: Any, key: str) -> dict[str, JSON]:
    """Entries by their key, the key as text (the store binds it); keyless ones dropped."""
    table: dict[str, JSON] = {}
    if not isinstance(value, list):  # most payloads include users only
        return table
    for entry in _dicts(value):
        entry_key = _key(entry.get(key))
        if entry_key is not None:
            table[entry_key] = entry if entry[key] == entry_key else {**entry, key: entry_key}
    return table


def usable_lang(lang: Any) -> str | None:
    """A tweet's ``lang`` as filters and the store take it: a short string, else none."""
    return lang if isinstance(lang, str) and 0 < len(lang) <= MAX_LANG_LENGTH else None


def encode_object(obj: JSON) -> bytes:
    """The served object as the store keeps it; empty when it cannot be encoded (nested
    past the encoder's depth, say): the store tries once more and leaves out only it."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return b""
