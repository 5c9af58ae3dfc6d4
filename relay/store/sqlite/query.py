"""SQLite SQL for the reads: the object API's structured queries (:mod:`relay.core.query`),
the stream's channel ranges, and the time limit object queries run under.

Column names and SQL come from the fixed tables below; every value is a bound
parameter. Two conditions need Python's own string functions, because SQLite's
``lower()`` folds ASCII only: :func:`register_functions` adds them to a connection,
so a pinned filter means here exactly what :meth:`relay.core.filters.TweetFilter.matches`
means on the stream.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from relay.core.filters import fold
from relay.core.query import Condition, TweetQuery
from relay.core.segment import index_form, needs_scan
from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX
from relay.errors import BadRequest, QueryTimeout
from relay.store.sqlite.receive_order import first_received

T = TypeVar("T")

COLUMNS = {
    "id": "id",
    "lang": "lang",
    "author.username": "author_username",
    "author.id": "author_id",
    "has_media": "has_media",
    "seq": "seq",
    "createdAt": "created_at",
    # The filters' forms, through the Python functions registered below.
    "author": "relay_fold(author_username)",
}
SORT_COLUMNS = {"createdAt": "created_at", "seq": "seq", "id": "CAST(id AS INTEGER)"}
COMPARISONS = {"eq": "=", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
IN_RULES = "seq IN (SELECT seq FROM tweet_rules WHERE tag {test})"
# For one row at a time (a lookup by id, a user's tweets): probe the rules of that row
# instead of listing every seq of the rules first (0.1 ms instead of 25 ms on 200k).
HAS_RULE = "EXISTS (SELECT 1 FROM tweet_rules WHERE tweet_rules.seq = tweets.seq AND tag {test})"


def register_functions(conn: sqlite3.Connection) -> None:
    """The filters' folding on this connection (deterministic: usable in indexes too)."""
    conn.create_function("relay_fold", 1, fold, deterministic=True)


def where(conditions: Sequence[Condition], *, per_row: bool = False) -> tuple[str, list[Any]]:
    """`` WHERE ...`` (or "") and its parameters: every condition must hold.

    ``per_row``: the conditions filter a few rows found another way (by id, by author).
    """
    parts: list[str] = []
    params: list[Any] = []
    for condition in conditions:
        sql, args = _condition(condition, HAS_RULE if per_row else IN_RULES)
        parts.append(sql)
        params.extend(args)
    return (" WHERE " + " AND ".join(parts) if parts else ""), params


def select(query: TweetQuery) -> tuple[str, list[Any]]:
    """The seqs of one page, in order; :data:`OBJECTS` then reads their objects.

    Sorting seqs rather than whole rows keeps SQLite's sorter small: with the objects in
    it, ``sort=id&offset=199000`` carried 200,000 objects through the sort (3.8 s on
    200,000 tweets); with seqs only it is a sort of integers.
    """
    clause, params = where(query.conditions)
    order = ", ".join(
        f"{SORT_COLUMNS[field]} {'DESC' if descending else 'ASC'}"
        for field, descending in query.order_by
    )
    sql = f"SELECT seq FROM tweets{clause} ORDER BY {order} LIMIT ? OFFSET ?"
    return sql, [*params, query.limit, query.offset]


def objects(count: int) -> str:
    """The objects of ``count`` seqs (bound as parameters), with their seq."""
    return f"SELECT seq, CAST(object AS BLOB) FROM tweets WHERE seq IN ({','.join('?' * count)})"


def count(query: TweetQuery) -> tuple[str, list[Any]]:
    clause, params = where(query.conditions)
    return f"SELECT count(*) FROM tweets{clause}", params


def _condition(condition: Condition, in_rules: str) -> tuple[str, list[Any]]:
    field, op, values = condition.field, condition.op, list(condition.values)
    if field == "has_media":
        values = [int(bool(v)) for v in values]
    if field == "text" and op == "contains":
        # Python's str.lower() on the text, as the stream's keyword filter does.
        return "instr(relay_fold(text), ?) > 0", values
    if field == "text" and op == "search":
        return _search(values)
    if field == "received" and op == "since":
        first, params = first_received(values[0])
        return f"seq >= {first}", list(params)
    if field == "rules":
        if op == "in":
            if not values:
                return "0", []
            return in_rules.format(test=f"IN ({','.join('?' * len(values))})"), values
        if op == "eq":
            return in_rules.format(test="= ?"), values
        if op == "ne":
            return "NOT " + in_rules.format(test="= ?"), values
    elif field in COLUMNS:
        column = COLUMNS[field]
        if op == "in":
            if not values:
                return "0", []
            return f"{column} IN ({','.join('?' * len(values))})", values
        if op in COMPARISONS:
            return f"{column} {COMPARISONS[op]} ?", values
    raise ValueError(f"cannot compile {field} {op}")


def _search(words: Sequence[str]) -> tuple[str, list[Any]]:
    """Every word must occur: looked up in the index in its index form (a phrase of
    bigrams for scripts without spaces), or, holding a lone character of those scripts
    that no bigram holds alone, found as a substring of the folded text by a scan."""
    indexed = [word for word in words if not needs_scan(word)]
    scanned = [fold(word) for word in words if needs_scan(word)]
    parts = ["instr(relay_fold(text), ?) > 0"] * len(scanned)
    params: list[Any] = list(scanned)
    if indexed:
        parts.insert(0, "seq IN (SELECT rowid FROM tweets_fts WHERE tweets_fts MATCH ?)")
        params.insert(0, _fts_expression(indexed))
    return "(" + " AND ".join(parts) + ")", params


def _fts_expression(words: Sequence[str]) -> str:
    # Each word quoted, as a phrase of its index form's tokens: FTS5 syntax (OR, NEAR,
    # *, -, ") in user text stays plain text.
    return " ".join('"' + index_form(word).replace('"', '""') + '"' for word in words)


PROGRESS_STEPS = 1000
"""SQLite virtual machine steps between two looks at the clock during a limited query."""


def limited(
    conn: sqlite3.Connection,
    run: Callable[[sqlite3.Connection], T],
    timeout: float | None,
    *,
    accepted: float | None = None,
) -> T:
    """``run(conn)``, interrupted with :class:`QueryTimeout` ``timeout`` seconds after
    ``accepted`` (a :func:`time.monotonic` time; default: now).

    The time waited for a reader counts: a query that comes to a reader past its deadline
    raises at once without running, so a queue of heavy queries cannot make a light one
    wait longer than the limit.
    """
    start = time.monotonic()
    deadline = (start if accepted is None else accepted) + (timeout if timeout is not None else 1e9)
    if start > deadline:
        raise QueryTimeout(
            f"the query waited longer than {timeout:g} s for a reader; ask again later"
        )
    if timeout is not None:
        conn.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
    try:
        return run(conn)
    except sqlite3.OperationalError as exc:
        if time.monotonic() > deadline and "interrupt" in str(exc):
            raise QueryTimeout(
                f"the query ran longer than {timeout:g} s; narrow it (q, rule, since_seq)"
            ) from None
        if "fts5" in str(exc):  # full-text syntax the words slipped past: the client's input
            raise BadRequest("parameter 'search' cannot be searched for") from None
        raise
    finally:
        conn.set_progress_handler(None, 0)
        if conn.in_transaction:  # a query stopped half-way leaves its read transaction
            conn.execute("ROLLBACK")


def channel_range(
    channel: str,
    columns: str,
    after: int,
    until: int,
    conditions: Sequence[Condition] = (),
) -> tuple[str, tuple[Any, ...]]:
    """SQL for the tweets of one channel after ``after`` that meet every condition (a
    subscription's filter: :meth:`relay.core.filters.TweetFilter.conditions`), in seq order,
    each row's seq first; the key and the values are always bound.

    The range has no upper bound in SQL: every row past ``until`` passes, so the reader
    sees the row the range ends at (and the one after it) and stops there itself. With
    ``seq <= until`` in SQL, SQLite ends its walk at the first row whose seq is past
    ``until``, and on a damaged page that is a row whose seq is out of order: the read
    ended early and looked complete (a resume that skipped good tweets). Seen here, such
    a row is found out of order (:func:`relay.store.sqlite.damage.check_order`).

    A rule channel walks its ``(tag, seq)`` index in seq order and joins each row, so
    ``ORDER BY seq LIMIT n`` reads n rows, never the whole range first; a rule row whose
    tweet the join does not find comes with NULL columns (every removal takes the rule
    rows with the tweet, so the tweets table is damaged). Conditions are tested on each
    row of the range, in SQLite: rows that fail them never reach Python.
    """
    clause, params = where(conditions, per_row=True)
    test = clause.removeprefix(" WHERE ")
    if channel == ALL_CHANNEL:
        if not conditions:
            return f"SELECT {columns} FROM tweets WHERE seq > ?", (after,)
        return (
            f"SELECT {columns} FROM tweets WHERE seq > ? AND (seq > ? OR {test})",
            (after, until, *params),
        )
    key = channel.removeprefix(RULE_PREFIX)
    # USING (seq): the unqualified seq is tweet_rules' own, there on a missing tweet too.
    sql = (
        f"SELECT {columns} FROM tweet_rules LEFT JOIN tweets USING (seq) "
        "WHERE tweet_rules.tag = ? AND tweet_rules.seq > ?"
    )
    if not conditions:
        return sql, (key, after)
    return (
        sql + f" AND (tweet_rules.seq > ? OR tweets.seq IS NULL OR {test})",
        (key, after, until, *params),
    )


def channel_count(channel: str, after: int, until: int) -> tuple[str, tuple[Any, ...]]:
    """Rows of one channel in a seq range, from the primary key or the rule index alone."""
    if channel == ALL_CHANNEL:
        return "SELECT 1 FROM tweets WHERE seq > ? AND seq <= ?", (after, until)
    key = channel.removeprefix(RULE_PREFIX)
    return (
        "SELECT 1 FROM tweet_rules WHERE tag = ? AND seq > ? AND seq <= ?",
        (key, after, until),
    )
