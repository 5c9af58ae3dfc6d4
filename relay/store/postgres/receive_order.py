"""The PostgreSQL store's receive order: which seq was the first received at or after a
moment (a rewind, the object API's ``since_time``), with the meaning and the record
:mod:`relay.store.sqlite.receive_order` gives them.

The index ``tweets_received_at`` (``received_at, seq``) finds the first tweet in receive
order at or after the moment in one lookup; it is built without blocking writes
(:data:`relay.store.postgres.schema.ONLINE_INDEXES`). The writer keeps the
``receive_order`` row in the transaction of every append: a tweet found above
``late_through`` and at most ``checked`` is the answer; otherwise the answer comes from
reading the tweets received since the moment. Times are compared as the writer stores
them, to the millisecond (the moment as :func:`relay.core.times.time_from_unix` gives it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from relay.core.times import time_from_unix

Cursor = psycopg.AsyncCursor[Any]

FIRST_RECEIVED = """(SELECT CASE
    WHEN o.received_at >= %s::timestamptz THEN o.seq
    WHEN c.seq IS NULL THEN NULL
    WHEN c.seq > r.late_through AND c.seq <= r.checked THEN c.seq
    ELSE (SELECT min(seq) FROM tweets WHERE received_at >= %s::timestamptz)
  END
  FROM (SELECT seq, received_at FROM tweets ORDER BY seq LIMIT 1) AS o
  LEFT JOIN receive_order AS r ON true
  LEFT JOIN (SELECT seq FROM tweets WHERE received_at >= %s::timestamptz
             ORDER BY received_at, seq LIMIT 1) AS c ON true)"""
"""The lowest seq received at or after the moment bound three times; NULL when no kept
tweet was (see :data:`relay.store.sqlite.receive_order.FIRST_RECEIVED`)."""

RECORD = """
WITH tail AS (
    SELECT seq, received_at, max(received_at) OVER (
        ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prior
    FROM tweets WHERE seq > (SELECT checked FROM receive_order)),
summary AS (
    SELECT max(t.seq) AS last, max(t.received_at) AS newest,
           max(t.seq) FILTER (WHERE t.received_at < greatest(t.prior, r.received_max)) AS late
    FROM tail AS t CROSS JOIN receive_order AS r)
UPDATE receive_order SET
    checked = coalesce(summary.last, checked),
    received_max = greatest(received_max, summary.newest),
    late_through = greatest(late_through, summary.late)
FROM summary
"""
"""Look at every tweet stored since the last record (``greatest`` passes NULLs over)."""


async def record(cur: Cursor) -> None:
    """Bring the ``receive_order`` row up to the newest tweet, in the caller's transaction
    (the writer's, after an append)."""
    await cur.execute(RECORD.encode())


def first_received(moment: float) -> tuple[str, list[Any]]:
    """SQL for the lowest seq received at or after ``moment`` (unix seconds) and its
    parameters: NULL when no kept tweet was."""
    text = time_from_unix(moment)
    return FIRST_RECEIVED, [text, text, text]


def seq_at(moment: float) -> Callable[[Cursor], Awaitable[int]]:
    """:meth:`relay.store.Log.seq_at`, as a read: one statement, one snapshot."""
    sql, params = first_received(moment)
    query = f"SELECT coalesce({sql}, (SELECT coalesce(max(seq), 0) + 1 FROM tweets))".encode()

    async def run(cur: Cursor) -> int:
        await cur.execute(query, params)
        row = await cur.fetchone()
        return int(row[0]) if row else 1

    return run
