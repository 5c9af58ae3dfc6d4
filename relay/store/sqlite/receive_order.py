"""The SQLite store's receive order: which seq was the first received at or after a moment
(a rewind, the object API's ``since_time``), and the record that makes it one lookup.

Receive times (``received_at``, kept to the millisecond) nearly always grow with seq: one
writer stores batches as they come. They step back when a recording is replayed with its
own, older receive times into a store holding newer tweets, or when the clock is set back.
:func:`seq_at` gives the lowest seq received at or after the moment: a rewind from there
misses no tweet received since, and may bring a few received before it that were stored
after one received since (see ``docs/protocol.md``, rewind).

The index ``tweets_received_at`` (``received_at``, and the rowid: the seq) finds the first
tweet in receive order at or after the moment in one lookup. That tweet has the lowest
such seq unless a tweet stored before it was received after it; it is then *late*: received
before a tweet stored ahead of it. The writer keeps, in the transaction of every append,
the ``receive_order`` row: how far it has looked (``checked``), the latest receive time up
to there (``received_max``) and the highest late seq (``late_through``). A tweet found
above ``late_through`` and at most ``checked`` is the answer; otherwise (receive times
stepped back after the moment, or rows no writer of this version looked at yet) the answer
comes from reading the index from the moment on: the same seq, in time proportional to the
tweets received since.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from relay.core.times import time_from_unix
from relay.store.sqlite.damage import newest_seq

FIRST_RECEIVED = """(SELECT CASE
    WHEN o.received_at >= ? THEN o.seq
    WHEN c.seq IS NULL THEN NULL
    WHEN c.seq > r.late_through AND c.seq <= r.checked THEN c.seq
    ELSE (SELECT min(seq) FROM tweets INDEXED BY tweets_received_at WHERE received_at >= ?)
  END
  FROM (SELECT seq, received_at FROM tweets ORDER BY seq LIMIT 1) AS o
  LEFT JOIN receive_order AS r ON 1
  LEFT JOIN (SELECT seq FROM tweets WHERE received_at >= ? ORDER BY received_at, seq LIMIT 1)
    AS c ON 1)"""
"""The lowest seq received at or after the moment bound three times (store time text);
NULL when no kept tweet was. The oldest kept tweet answers at once when it was; otherwise
the first in receive order, unless it is late or past what the writer recorded."""

RECORD = """
WITH tail AS (
    SELECT seq, received_at, max(received_at) OVER (
        ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prior
    FROM tweets WHERE seq > (SELECT checked FROM receive_order)),
summary AS (
    SELECT max(t.seq) AS last, max(t.received_at) AS newest,
           max(CASE WHEN t.received_at < max(coalesce(t.prior, ''), r.received_max)
               THEN t.seq END) AS late
    FROM tail AS t, receive_order AS r)
UPDATE receive_order SET
    checked = coalesce(summary.last, checked),
    received_max = max(received_max, coalesce(summary.newest, '')),
    late_through = max(late_through, coalesce(summary.late, 0))
FROM summary
"""
"""Look at every tweet stored since the last record: the newest seq, the latest receive
time, and the highest seq received before one stored ahead of it."""


def record(conn: sqlite3.Connection) -> None:
    """Bring the ``receive_order`` row up to the newest tweet, in the caller's transaction
    (the writer's, after an append): a look at the new rows only."""
    conn.execute(RECORD)


def first_received(moment: float) -> tuple[str, tuple[Any, ...]]:
    """SQL for the lowest seq received at or after ``moment`` (unix seconds), and its
    parameters: NULL when no kept tweet was."""
    text = time_from_unix(moment)
    return FIRST_RECEIVED, (text, text, text)


def seq_at(moment: float) -> Callable[[sqlite3.Connection], int]:
    """:meth:`relay.store.Log.seq_at`, as a read."""
    sql, params = first_received(moment)

    def run(conn: sqlite3.Connection) -> int:
        conn.execute("BEGIN")  # one snapshot: the lookup and the head agree
        try:
            found = conn.execute(f"SELECT {sql}", params).fetchone()[0]
            return int(found) if found is not None else newest_seq(conn) + 1
        finally:
            conn.execute("COMMIT")

    return run
