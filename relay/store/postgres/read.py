"""The PostgreSQL store's reads for the stream side (the :class:`~relay.store.Log` role).

Each function builds its SQL where it is called and returns the work to run on a
cursor of the stream-side pool (:meth:`~relay.store.postgres.store.PostgresStore._read`).
Stored objects come out as the bytes stored (a ``json`` column read as bytes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from relay.core.query import Condition
from relay.core.rule_set import STATE_KEY, Channels, RuleSet
from relay.store.postgres import query as postgres_query
from relay.store.postgres.write import Cursor
from relay.store.types import StoredBody, StoredTweet

T = TypeVar("T")
Read = Callable[[Cursor], Awaitable[T]]


async def head(cur: Cursor) -> int:
    return await one_int(cur, "SELECT coalesce(max(seq), 0) FROM tweets", [])


async def oldest_seq(cur: Cursor) -> int:
    return await one_int(cur, "SELECT coalesce(min(seq), 0) FROM tweets", [])


def tweets_after(
    channel: str,
    after: int,
    until: int,
    limit: int,
    max_bytes: int | None,
    conditions: Sequence[Condition],
) -> Read[list[StoredTweet]]:
    """:meth:`relay.store.Log.read_after`."""
    columns = "seq, rules, object, lang, author_username, has_media, text, received_at"
    sql, params = postgres_query.channel_range(channel, columns, after, until, conditions)

    async def run(cur: Cursor) -> list[StoredTweet]:
        page: list[StoredTweet] = []
        size = 0
        await cur.execute((sql + " ORDER BY seq LIMIT %s").encode(), [*params, limit])
        async for seq, rules, body, lang, author, has_media, text, received in cur:
            page.append(
                StoredTweet.read(
                    seq, rules, body, lang, author, has_media, text, received.timestamp()
                )
            )
            size += len(body)
            if max_bytes is not None and size >= max_bytes:
                break
        return page

    return run


def bodies_after(
    channel: str,
    after: int,
    until: int,
    limit: int,
    conditions: Sequence[Condition],
    max_bytes: int | None = None,
) -> Read[list[StoredBody]]:
    """The rows of :meth:`relay.store.Log.read_bodies`: with ``max_bytes``, cut in the
    server after the first row that reaches it (a page of 1,000 rows of ~3 KB is six
    budgets: without the cut every page sent, decoded and dropped most of its rows)."""
    sql, params = postgres_query.channel_range(channel, "seq, object", after, until, conditions)
    sql += " ORDER BY seq LIMIT %s"
    values = [*params, limit]
    if max_bytes is not None:
        sql = (
            "SELECT seq, object FROM (SELECT seq, object, sum(octet_length(object::text)) "
            "OVER (ORDER BY seq) - octet_length(object::text) AS before "
            f"FROM ({sql}) AS page) AS sized WHERE before < %s ORDER BY seq"
        )
        values.append(max_bytes)
    query = sql.encode()

    async def run(cur: Cursor) -> list[StoredBody]:
        await cur.execute(query, values)
        # The whole result is on the client already: one call, not an await a row.
        rows: list[StoredBody] = await cur.fetchall()
        return rows

    return run


def count_after(channel: str, after: int, until: int, cap: int | None) -> Read[int]:
    inner, params = postgres_query.channel_count(channel, after, until)
    # Counting stops after cap + 1 rows: a subscribe from seq 0 never scans the store.
    sql = f"SELECT count(*) FROM ({inner} LIMIT %s) AS counted"
    limit = None if cap is None else cap + 1
    return lambda cur: one_int(cur, sql, [*params, limit])


async def known_channels(cur: Cursor) -> Channels:
    declared = await one_text(cur, "SELECT value FROM source_state WHERE key = %s", [STATE_KEY])
    await cur.execute(b"SELECT tag FROM rules")
    keys = frozenset(str(row[0]) for row in await cur.fetchall())
    return Channels(RuleSet.decode(declared), keys)


async def one_int(cur: Cursor, sql: str, params: Sequence[Any]) -> int:
    await cur.execute(sql.encode(), params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def one_text(cur: Cursor, sql: str, params: Sequence[Any]) -> str | None:
    await cur.execute(sql.encode(), params)
    row = await cur.fetchone()
    return str(row[0]) if row else None
