"""The object API's query parameters, parsed and compiled to SQL with bound values only.

``GET /v1/objects/tweets`` takes:

- ``limit`` 1..1000 (50), ``offset`` >= 0 (0);
- ``sort``: Enginio's JSON form ``[{"sortBy": "createdAt", "direction": "desc"}]`` or the
  short form ``-createdAt`` / ``seq`` / ``-createdAt,seq``; fields ``createdAt``, ``seq``,
  ``id``; default ``-seq``. ``seq`` always breaks ties, so paging is stable;
- ``q``: a JSON object of conditions, all of which must hold. Fields: ``id``, ``lang``,
  ``author.username``, ``author.id``, ``rules`` (the tweet matched that rule),
  ``has_media`` (boolean), ``seq`` (integer), ``createdAt`` (ISO time). A value is an
  equality, or an object of operators: ``$in`` (a non-empty list), ``$ne``, and on
  ``seq`` and ``createdAt`` also ``$gt``, ``$gte``, ``$lt``, ``$lte``;
- ``search``: words that must all occur in the text (full-text, not a pattern language);
- ``rule``: a rule tag; ``since_seq``: only tweets with a greater seq;
- ``count``: ``1``/``true`` answers only the count.

Anything else is a :class:`~relay.errors.BadRequest` naming the parameter. Column names
come from a fixed table; every value reaches SQLite as a bound parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from relay.errors import BadRequest
from relay.tweets import normalise_time

MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
PARAMETERS = {"limit", "offset", "sort", "q", "search", "rule", "since_seq", "count"}
SORT_COLUMNS = {"createdAt": "created_at", "seq": "seq", "id": "CAST(id AS INTEGER)"}
RANGE_OPERATORS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
HAS_RULE = "seq IN (SELECT seq FROM tweet_rules WHERE tag = ?)"


@dataclass(frozen=True, slots=True)
class TweetQuery:
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    order_by: tuple[tuple[str, str], ...] = (("seq", "DESC"),)
    conditions: tuple[str, ...] = ()
    params: tuple[Any, ...] = ()
    count_only: bool = False

    def _where(self) -> str:
        return " WHERE " + " AND ".join(self.conditions) if self.conditions else ""

    def select_sql(self) -> tuple[str, tuple[Any, ...]]:
        order = ", ".join(f"{column} {direction}" for column, direction in self.order_by)
        sql = f"SELECT seq, object, received_at FROM tweets{self._where()} ORDER BY {order}"
        return sql + " LIMIT ? OFFSET ?", (*self.params, self.limit, self.offset)

    def count_sql(self) -> tuple[str, tuple[Any, ...]]:
        return f"SELECT count(*) FROM tweets{self._where()}", self.params

    def restricted_to_rules(self, tags: Collection[str]) -> TweetQuery:
        """Only tweets that matched one of ``tags`` (access control narrows, never widens)."""
        marks = ",".join("?" * len(tags)) or "NULL"
        condition = f"seq IN (SELECT seq FROM tweet_rules WHERE tag IN ({marks}))"
        return replace(self, conditions=(*self.conditions, condition), params=(*self.params, *tags))


def parse_tweet_query(params: Mapping[str, Sequence[str]]) -> TweetQuery:
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

    conditions: list[str] = []
    bound: list[Any] = []
    if "q" in values:
        for condition, args in _query_conditions(values["q"]):
            conditions.append(condition)
            bound.extend(args)
    if "search" in values:
        conditions.append("seq IN (SELECT rowid FROM tweets_fts WHERE tweets_fts MATCH ?)")
        bound.append(_fts_expression(values["search"]))
    if "rule" in values:
        if not values["rule"]:
            raise BadRequest("parameter 'rule' must not be empty")
        conditions.append(HAS_RULE)
        bound.append(values["rule"])
    if "since_seq" in values:
        conditions.append("seq > ?")
        bound.append(_int(values["since_seq"], "since_seq", 0, None))
    return TweetQuery(
        limit=_int(values.get("limit", str(DEFAULT_LIMIT)), "limit", 1, MAX_LIMIT),
        offset=_int(values.get("offset", "0"), "offset", 0, None),
        order_by=_sort(values.get("sort", "-seq")),
        conditions=tuple(conditions),
        params=tuple(bound),
        count_only=_flag(values.get("count", "0"), "count"),
    )


def _int(text: str, name: str, low: int, high: int | None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"parameter {name!r} must be an integer, got {text[:40]!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f">= {low}"
        raise BadRequest(f"parameter {name!r} must be {bounds}, got {value}")
    return value


def _flag(text: str, name: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true"):
        return True
    if lowered in ("0", "false"):
        return False
    raise BadRequest(f"parameter {name!r} must be 1, true, 0 or false")


def _sort(text: str) -> tuple[tuple[str, str], ...]:
    keys: list[tuple[str, bool]] = []
    if text.lstrip().startswith("["):
        try:
            spec = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise BadRequest("parameter 'sort' is not valid JSON") from None
        for item in spec:
            if not isinstance(item, dict) or not isinstance(item.get("sortBy"), str):
                raise BadRequest("parameter 'sort' entries need a sortBy field")
            direction = item.get("direction", "asc")
            if direction not in ("asc", "desc"):
                raise BadRequest("parameter 'sort' direction must be asc or desc")
            keys.append((item["sortBy"], direction == "desc"))
    else:
        for part in text.split(","):
            part = part.strip()
            keys.append((part.lstrip("-+"), part.startswith("-")))
    if not keys:
        raise BadRequest("parameter 'sort' names no field")
    order: list[tuple[str, str]] = []
    for field, descending in keys:
        if field not in SORT_COLUMNS:
            raise BadRequest(
                f"parameter 'sort' cannot sort by {field[:40]!r}; use createdAt, seq or id"
            )
        order.append((SORT_COLUMNS[field], "DESC" if descending else "ASC"))
    if not any(column == "seq" for column, _ in order):
        order.append(("seq", order[-1][1]))
    return tuple(order)


def _fts_expression(text: str) -> str:
    terms = text.split()
    if not terms:
        raise BadRequest("parameter 'search' must contain a word")
    # Each term quoted: FTS5 syntax (OR, NEAR, *, -, ") in user text stays plain text.
    return " ".join('"' + term.replace('"', '""') + '"' for term in terms)


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"q: {field} takes a string")
    return value


def _seq(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"q: {field} takes an integer")
    return value


def _time(value: Any, field: str) -> str:
    moment = normalise_time(value)
    if moment is None:
        raise BadRequest(f"q: {field} takes an ISO 8601 time, got {str(value)[:40]!r}")
    return moment


def _bool(value: Any, field: str) -> int:
    if not isinstance(value, bool):
        raise BadRequest(f"q: {field} takes true or false")
    return int(value)


# field -> (SQL with one ? for the value, value checker, whether ranges are allowed)
FIELDS: dict[str, tuple[str, Callable[[Any, str], Any], bool]] = {
    "id": ("id {op} ?", _string, False),
    "lang": ("lang {op} ?", _string, False),
    "author.username": ("author_username {op} ?", _string, False),
    "author.id": ("author_id {op} ?", _string, False),
    "has_media": ("has_media {op} ?", _bool, False),
    "seq": ("seq {op} ?", _seq, True),
    "createdAt": ("created_at {op} ?", _time, True),
}


def _query_conditions(text: str) -> list[tuple[str, list[Any]]]:
    try:
        query = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise BadRequest("parameter 'q' is not valid JSON") from None
    if not isinstance(query, dict):
        raise BadRequest("parameter 'q' must be a JSON object")
    return [_condition(field, value) for field, value in query.items()]


def _condition(field: str, value: Any) -> tuple[str, list[Any]]:
    check: Callable[[Any, str], Any]
    if field == "rules":
        template, check, ranges = (
            "seq {op} (SELECT seq FROM tweet_rules WHERE tag = ?)",
            _string,
            False,
        )
        equal, unequal = "IN", "NOT IN"
    elif field in FIELDS:
        template, check, ranges = FIELDS[field]
        equal, unequal = "=", "!="
    else:
        raise BadRequest(f"q: unknown field {field[:40]!r}; known: rules, " + ", ".join(FIELDS))
    if not isinstance(value, dict):
        return template.format(op=equal), [check(value, field)]
    parts: list[str] = []
    args: list[Any] = []
    for operator, operand in value.items():
        if operator == "$in":
            if not isinstance(operand, list) or not operand:
                raise BadRequest(f"q: {field} $in takes a non-empty list")
            alternatives = [template.format(op=equal) for _ in operand]
            parts.append("(" + " OR ".join(alternatives) + ")")
            args.extend(check(item, field) for item in operand)
        elif operator == "$ne":
            parts.append(template.format(op=unequal))
            args.append(check(operand, field))
        elif operator in RANGE_OPERATORS and ranges:
            parts.append(template.format(op=RANGE_OPERATORS[operator]))
            args.append(check(operand, field))
        else:
            raise BadRequest(f"q: operator {str(operator)[:20]!r} is not supported on {field}")
    if not parts:
        raise BadRequest(f"q: {field} has an empty operator object")
    return " AND ".join(parts), args
