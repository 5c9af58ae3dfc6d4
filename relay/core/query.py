"""The object API's query parameters, parsed into a structured, store-neutral query.

``GET /v1/objects/tweets`` takes:

- ``limit`` 1..1000 (50), ``offset`` 0..``max_offset`` (0);
- ``sort``: Enginio's JSON form ``[{"sortBy": "createdAt", "direction": "desc"}]`` or the
  short form ``-createdAt`` / ``seq`` / ``-createdAt,seq``; fields ``createdAt``, ``seq``,
  ``id``, each at most once; default ``-seq``. ``seq`` always breaks ties, so paging is
  stable;
- ``q``: a JSON object of conditions, all of which must hold. Fields: ``id``, ``lang``,
  ``author.username``, ``author.id``, ``rules`` (the tweet matched that rule),
  ``has_media`` (boolean), ``seq`` (integer), ``createdAt`` (ISO time). A value is an
  equality, or an object of operators: ``$in`` (a non-empty list of at most
  ``max_in_items``), ``$ne``, and on ``seq`` and ``createdAt`` also ``$gt``, ``$gte``,
  ``$lt``, ``$lte``;
- ``search``: words that must all occur in the text (full-text, not a pattern language);
- ``rule``: a rule tag; ``since_seq``: only tweets with a greater seq;
- ``since_time``: an ISO 8601 time or a time back (``-15m``): the tweets from the first
  one received at or after that moment on, in seq order (the rewind of the stream, with
  the same meaning: :meth:`relay.store.Log.seq_at`);
- ``count``: ``1``/``true`` answers only the count.

Anything else is a :class:`~relay.errors.BadRequest` naming the parameter. The result is
a :class:`TweetQuery` of :class:`Condition` values (field, operator, values): no SQL here.
Each store compiles it (``relay/store/sqlite_query.py``), with every value bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from relay.core.protocol import rewind_time
from relay.core.times import normalise_time
from relay.errors import BadRequest, ProtocolError

MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
INT64_MAX = (1 << 63) - 1
"""Stores keep seq and offsets as signed 64-bit integers; larger values are refused."""
PARAMETERS = {"limit", "offset", "sort", "q", "search", "rule", "since_seq", "since_time", "count"}
SORT_FIELDS = ("createdAt", "seq", "id")
MAX_SEARCH_WORDS = 32
MAX_SEARCH_LENGTH = 500

# Fields a condition may name. The first group is what ``q`` offers; the second is what
# pinned filters need (see relay.core.filters), with the stream's exact meaning:
#   author        the author's username as the stream folds it: str.lower(), "" when none
#   text contains a case-insensitive substring: ``value in text.lower()``
#   text search   full-text words, all of which must occur
# and what since_time asks:
#   received since   from the first seq received at or after a moment (unix seconds) on
Q_FIELDS = ("id", "lang", "author.username", "author.id", "has_media", "seq", "createdAt")
FIELDS = frozenset((*Q_FIELDS, "rules", "author", "text", "received"))
OPERATORS = frozenset(("eq", "ne", "in", "gt", "gte", "lt", "lte", "contains", "search", "since"))
RANGE_OPERATORS = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition on a tweet: ``field`` ``op`` ``values``.

    ``eq``, ``ne``, ``gt``... take one value; ``in`` takes any number (none matches
    nothing); ``contains`` one lowered substring; ``search`` the words to find.
    """

    field: str
    op: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if self.field not in FIELDS or self.op not in OPERATORS:
            raise ValueError(f"no such condition: {self.field} {self.op}")


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """What one query may ask for; larger asks are a 400 (see ``config/relay.toml``)."""

    max_in_items: int = 100
    max_sort_terms: int = 3
    max_offset: int = 100_000


@dataclass(frozen=True, slots=True)
class TweetQuery:
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    order_by: tuple[tuple[str, bool], ...] = (("seq", True),)
    """(field, descending) pairs; fields from :data:`SORT_FIELDS`, ``seq`` always last."""
    conditions: tuple[Condition, ...] = ()
    count_only: bool = False

    def narrowed(self, conditions: Sequence[Condition]) -> TweetQuery:
        """The same query with more conditions (access control narrows, never widens)."""
        return replace(self, conditions=(*self.conditions, *conditions))


def rules_condition(tags: Sequence[str]) -> Condition:
    """Tweets that matched one of ``tags``; none when ``tags`` is empty."""
    return Condition("rules", "in", tuple(tags))


def parse_tweet_query(
    params: Mapping[str, Sequence[str]],
    limits: QueryLimits | None = None,
    now: float | None = None,
) -> TweetQuery:
    """``now``: the unix time a relative ``since_time`` (``-15m``) counts back from."""
    limits = limits or QueryLimits()
    unknown = sorted(set(params) - PARAMETERS)
    if unknown:
        raise BadRequest(
            f"unknown parameter {unknown[0][:40]!r}; known: " + ", ".join(sorted(PARAMETERS))
        )
    values: dict[str, str] = {}
    for name, given in params.items():
        if len(given) != 1:
            raise BadRequest(f"parameter {name!r} given more than once")
        values[name] = given[0]

    conditions: list[Condition] = []
    if "q" in values:
        conditions.extend(_query_conditions(values["q"], limits))
    if "search" in values:
        conditions.append(Condition("text", "search", _search_words(values["search"])))
    if "rule" in values:
        if not values["rule"]:
            raise BadRequest("parameter 'rule' must not be empty")
        conditions.append(Condition("rules", "eq", (values["rule"],)))
    if "since_seq" in values:
        since = parse_int(values["since_seq"], "since_seq", 0, INT64_MAX)
        conditions.append(Condition("seq", "gt", (since,)))
    if "since_time" in values:
        conditions.append(since_time(values["since_time"], time.time() if now is None else now))
    offset = parse_int(values.get("offset", "0"), "offset", 0, INT64_MAX)
    if offset > limits.max_offset:
        raise BadRequest(
            f"parameter 'offset' must be at most {limits.max_offset}; page deep lists with "
            "since_seq (sort=seq) or a createdAt/seq range in q instead"
        )
    return TweetQuery(
        limit=parse_int(values.get("limit", str(DEFAULT_LIMIT)), "limit", 1, MAX_LIMIT),
        offset=offset,
        order_by=_sort(values.get("sort", "-seq"), limits.max_sort_terms),
        conditions=tuple(conditions),
        count_only=_flag(values.get("count", "0"), "count"),
    )


def since_time(text: str, now: float) -> Condition:
    """The ``since_time`` parameter as a condition: from the first seq received at or
    after the moment on (the meaning a rewind of the stream has)."""
    try:
        moment = rewind_time(text, now, "parameter 'since_time'")
    except ProtocolError as exc:
        raise BadRequest(exc.message) from None
    return Condition("received", "since", (moment,))


def parse_int(text: str, name: str, low: int, high: int) -> int:
    # int() would read "١٢" or "1_000" and very long digit strings slowly; keep to ASCII.
    stripped = text.strip()
    digits = stripped.removeprefix("-")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:
        raise BadRequest(f"parameter {name!r} must be an integer, got {text[:40]!r}")
    value = int(stripped)
    if value < low or value > high:
        bounds = f"{low}..{high}" if high != INT64_MAX else f">= {low} (and below 2^63)"
        raise BadRequest(f"parameter {name!r} must be {bounds}, got {str(value)[:40]}")
    return value


def _flag(text: str, name: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false"):
        return False
    raise BadRequest(f"parameter {name!r} must be 1, true, 0 or false")


def _sort(text: str, max_terms: int) -> tuple[tuple[str, bool], ...]:
    keys: list[tuple[Any, bool]] = []
    if text.lstrip().startswith("["):
        try:
            spec = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise BadRequest("parameter 'sort' is not valid JSON") from None
        if not isinstance(spec, list):
            raise BadRequest("parameter 'sort' must be a JSON list")
        if len(spec) > max_terms:
            raise BadRequest(f"parameter 'sort' takes at most {max_terms} terms")
        for item in spec:
            if not isinstance(item, dict) or not isinstance(item.get("sortBy"), str):
                raise BadRequest("parameter 'sort' entries need a sortBy field")
            direction = item.get("direction", "asc")
            if direction not in ("asc", "desc"):
                raise BadRequest("parameter 'sort' direction must be asc or desc")
            keys.append((item["sortBy"], direction == "desc"))
    else:
        parts = text.split(",", max_terms)
        if len(parts) > max_terms:
            raise BadRequest(f"parameter 'sort' takes at most {max_terms} terms")
        for part in parts:
            part = part.strip()
            keys.append((part.lstrip("-+"), part.startswith("-")))
    if not keys:
        raise BadRequest("parameter 'sort' names no field")
    order: list[tuple[str, bool]] = []
    for field, descending in keys:
        if field not in SORT_FIELDS:
            raise BadRequest(
                f"parameter 'sort' cannot sort by {str(field)[:40]!r}; use createdAt, seq or id"
            )
        if any(field == seen for seen, _ in order):
            raise BadRequest(f"parameter 'sort' names {field} twice")
        order.append((field, descending))
    if order[-1][0] != "seq" and not any(field == "seq" for field, _ in order):
        order.append(("seq", order[-1][1]))
    return tuple(order)


def _search_words(text: str) -> tuple[str, ...]:
    if len(text) > MAX_SEARCH_LENGTH:
        raise BadRequest(f"parameter 'search' takes at most {MAX_SEARCH_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in text if c not in "\t\n\r"):
        raise BadRequest("parameter 'search' must not contain control characters")
    words = tuple(text.split())
    if not words:
        raise BadRequest("parameter 'search' must contain a word")
    if len(words) > MAX_SEARCH_WORDS:
        raise BadRequest(f"parameter 'search' takes at most {MAX_SEARCH_WORDS} words")
    return words


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"q: {field} takes a string")
    if "\x00" in value:
        raise BadRequest(f"q: {field} must not contain NUL")
    return value


def _seq(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"q: {field} takes an integer")
    if not -INT64_MAX - 1 <= value <= INT64_MAX:
        raise BadRequest(f"q: {field} takes an integer below 2^63")
    return value


def _time(value: Any, field: str) -> str:
    try:
        moment = normalise_time(value)
    except (OverflowError, ValueError, TypeError):  # a time no store can hold
        moment = None
    if moment is None:
        raise BadRequest(f"q: {field} takes an ISO 8601 time, got {str(value)[:40]!r}")
    return moment


def _bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"q: {field} takes true or false")
    return value


# field -> (value checker, whether ranges are allowed)
CHECKS: dict[str, tuple[Callable[[Any, str], Any], bool]] = {
    "id": (_string, False),
    "lang": (_string, False),
    "author.username": (_string, False),
    "author.id": (_string, False),
    "has_media": (_bool, False),
    "seq": (_seq, True),
    "createdAt": (_time, True),
    "rules": (_string, False),
}


def _query_conditions(text: str, limits: QueryLimits) -> list[Condition]:
    try:
        query = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadRequest("parameter 'q' is not valid JSON") from None
    if not isinstance(query, dict):
        raise BadRequest("parameter 'q' must be a JSON object")
    conditions: list[Condition] = []
    for field, value in query.items():
        conditions.extend(_conditions(field, value, limits))
    return conditions


def _conditions(field: str, value: Any, limits: QueryLimits) -> list[Condition]:
    if field not in CHECKS:
        raise BadRequest(f"q: unknown field {field[:40]!r}; known: " + ", ".join(CHECKS))
    check, ranges = CHECKS[field]
    if not isinstance(value, dict):
        return [Condition(field, "eq", (check(value, field),))]
    conditions: list[Condition] = []
    for operator, operand in value.items():
        if operator == "$in":
            if not isinstance(operand, list) or not operand:
                raise BadRequest(f"q: {field} $in takes a non-empty list")
            if len(operand) > limits.max_in_items:
                raise BadRequest(f"q: {field} $in takes at most {limits.max_in_items} items")
            items = tuple(dict.fromkeys(check(item, field) for item in operand))
            conditions.append(Condition(field, "in", items))
        elif operator == "$ne":
            conditions.append(Condition(field, "ne", (check(operand, field),)))
        elif operator in RANGE_OPERATORS and ranges:
            conditions.append(Condition(field, RANGE_OPERATORS[operator], (check(operand, field),)))
        else:
            raise BadRequest(f"q: operator {str(operator)[:20]!r} is not supported on {field}")
    if not conditions:
        raise BadRequest(f"q: {field} has an empty operator object")
    return conditions
