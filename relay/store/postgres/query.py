"""PostgreSQL SQL for the reads: the object API's structured queries (:mod:`relay.core.query`)
and the stream's channel ranges, with the meaning :mod:`relay.store.sqlite.query` gives
them.

Column names and SQL come from the fixed tables below; every value is a bound parameter
(``%s``). The filters' folded forms (``author``, ``text contains``) read columns the
writer fills with Python's own ``str.lower()`` (``author_fold``, ``text_fold``): the
database's ``lower()`` follows its locale and differs from Python on letters such as
``İ``, and a pinned filter must mean here exactly what
:meth:`relay.core.filters.TweetFilter.matches` means on the stream.

Full-text search (``text search``) uses an expression GIN index on the text with its
punctuation turned into spaces, through the ``simple`` configuration (lower case, no
stemming, no stop words); each search word goes through the same two steps and must
occur as a phrase (``los-gatos`` finds "los gatos", as in FTS5), and every word must
occur. Taking punctuation out first makes PostgreSQL's parser split words where
SQLite's FTS5 ``unicode61`` tokenizer does (runs of letters and digits) instead of
keeping host names, e-mail addresses and URLs as tokens of their own. What still
differs: FTS5 strips diacritics (``cafe`` finds ``café``), PostgreSQL keeps them; a
word with no letter or digit (``--``) matches nothing on either, but on PostgreSQL it
is ignored when other words are given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from relay.core.filters import fold
from relay.core.query import Condition, TweetQuery
from relay.core.segment import index_form, needs_scan
from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX
from relay.store.postgres.receive_order import first_received

SEARCH_VECTOR = (
    "to_tsvector('simple'::regconfig, "
    "regexp_replace(relay_index_form(text), '[[:punct:]]+', ' ', 'g'))"
)
"""The indexed expression (``tweets_search``); queries must spell it the same way."""

COLUMNS = {
    "id": "id",
    "lang": "lang",
    "author.username": "author_username",
    "author.id": "author_id",
    "has_media": "has_media",
    "seq": "seq",
    "createdAt": "created_at",
    "author": "author_fold",  # fold(author_username), filled by the writer
}
CASTS = {"createdAt": "::timestamptz"}
"""createdAt values are ISO times (``relay.core.query`` normalises them): compared as times."""
# Ids are decimal strings without leading zeros: by length, then text, is numeric order.
SORT_COLUMNS = {
    "createdAt": ("created_at",),
    "seq": ("seq",),
    "id": ("length(id)", "id"),
}
COMPARISONS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
IN_RULES = "seq IN (SELECT seq FROM tweet_rules WHERE tag {test})"
HAS_RULE = "EXISTS (SELECT 1 FROM tweet_rules WHERE tweet_rules.seq = tweets.seq AND tag {test})"


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
    """The objects of one page, in order.

    The page's seqs are sorted first (an array keeps their order), then their objects
    read: sorting whole rows would carry every object of a deep offset through the sort.
    """
    clause, params = where(query.conditions)
    order = ", ".join(
        f"{column} {'DESC' if descending else 'ASC'}"
        for field, descending in query.order_by
        for column in SORT_COLUMNS[field]
    )
    sql = (
        f"SELECT t.object FROM unnest(ARRAY(SELECT seq FROM tweets{clause} ORDER BY {order} "
        "LIMIT %s OFFSET %s)) WITH ORDINALITY AS page (seq, n) "
        "JOIN tweets t USING (seq) ORDER BY page.n"
    )
    return sql, [*params, query.limit, query.offset]


def count(query: TweetQuery) -> tuple[str, list[Any]]:
    clause, params = where(query.conditions)
    return f"SELECT count(*) FROM tweets{clause}", params


def _condition(condition: Condition, in_rules: str) -> tuple[str, list[Any]]:
    field, op, values = condition.field, condition.op, list(condition.values)
    if field == "has_media":
        values = [bool(v) for v in values]
    if field == "text" and op == "contains":
        return "strpos(text_fold, %s) > 0", values
    if field == "text" and op == "search":
        return _search(values)
    if field == "received" and op == "since":
        first, params = first_received(values[0])
        return f"seq >= {first}", params
    if field == "rules":
        if op == "in":
            if not values:
                return "false", []
            return in_rules.format(test="= ANY(%s)"), [values]
        if op == "eq":
            return in_rules.format(test="= %s"), values
        if op == "ne":
            return "NOT " + in_rules.format(test="= %s"), values
    elif field in COLUMNS:
        column = COLUMNS[field]
        cast = CASTS.get(field, "")
        if op == "in":
            if not values:
                return "false", []
            return f"{column} IN ({','.join([f'%s{cast}'] * len(values))})", values
        if op in COMPARISONS:
            return f"{column} {COMPARISONS[op]} %s{cast}", values
    raise ValueError(f"cannot compile {field} {op}")


def _search(words: Sequence[str]) -> tuple[str, list[Any]]:
    """As on SQLite: each word in its index form (Python's, the same the index's SQL
    function gives) as a phrase; a word holding a lone character of the scripts cut
    into bigrams is a substring of the folded text instead (a scan)."""
    phrase = "phraseto_tsquery('simple'::regconfig, regexp_replace(%s, '[[:punct:]]+', ' ', 'g'))"
    indexed = [index_form(word) for word in words if not needs_scan(word)]
    scanned = [fold(word) for word in words if needs_scan(word)]
    parts = ["strpos(text_fold, %s) > 0"] * len(scanned)
    if indexed:
        parts.insert(0, f"{SEARCH_VECTOR} @@ ({' && '.join([phrase] * len(indexed))})")
    return "(" + " AND ".join(parts) + ")", [*indexed, *scanned]


def channel_range(
    channel: str,
    columns: str,
    after: int,
    until: int,
    conditions: Sequence[Condition] = (),
) -> tuple[str, list[Any]]:
    """SQL for the tweets of one channel in a seq range that meet every condition; the
    key and the values are always bound. A rule channel walks its ``(tag, seq)`` key."""
    clause, params = where(conditions, per_row=True)
    extra = clause.replace(" WHERE ", " AND ", 1)
    if channel == ALL_CHANNEL:
        return (
            f"SELECT {columns} FROM tweets WHERE seq > %s AND seq <= %s{extra}",
            [after, until, *params],
        )
    key = channel.removeprefix(RULE_PREFIX)
    return (
        f"SELECT {columns} FROM tweet_rules JOIN tweets USING (seq) "
        f"WHERE tweet_rules.tag = %s AND tweet_rules.seq > %s AND tweet_rules.seq <= %s{extra}",
        [key, after, until, *params],
    )


def channel_count(channel: str, after: int, until: int) -> tuple[str, list[Any]]:
    """Rows of one channel in a seq range, from the primary key or the rule key alone."""
    if channel == ALL_CHANNEL:
        return "SELECT 1 FROM tweets WHERE seq > %s AND seq <= %s", [after, until]
    key = channel.removeprefix(RULE_PREFIX)
    return (
        "SELECT 1 FROM tweet_rules WHERE tag = %s AND seq > %s AND seq <= %s",
        [key, after, until],
    )
