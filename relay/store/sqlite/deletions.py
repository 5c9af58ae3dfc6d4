"""The SQLite side of :mod:`relay.jobs.deletions`: queue, apply, read the record."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from relay.core.times import time_from_unix
from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX
from relay.errors import StoreError
from relay.store.sqlite.retention import remove_tweets
from relay.store.sqlite.schema import check_schema
from relay.store.types import Deleted


def queue_deletions(path: str | Path, ids: Sequence[str]) -> int:
    """Queue deletion requests; how many. A short write beside a running writer: SQLite
    serializes it with the writer's transactions (the writer lock guards tweets, not
    this queue)."""
    if not Path(path).is_file():
        raise StoreError(f"no database at {path}")
    conn = sqlite3.connect(path, timeout=10.0)
    try:
        check_schema(conn)
        now = time_from_unix(time.time())
        with conn:
            conn.executemany(
                "INSERT INTO deletions (tweet_id, requested_at) VALUES (?, ?)",
                [(tweet_id, now) for tweet_id in ids],
            )
        return len(ids)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot queue deletions in {path}: {exc}") from None
    finally:
        conn.close()


def apply_pending(conn: sqlite3.Connection, limit: int, indexed: int, now: str) -> list[Deleted]:
    """Apply up to ``limit`` queued requests inside the caller's transaction."""
    pending = conn.execute(
        "SELECT n, tweet_id FROM deletions WHERE applied_n IS NULL ORDER BY n LIMIT ?", (limit,)
    ).fetchall()
    number = int(conn.execute("SELECT coalesce(max(applied_n), 0) FROM deletions").fetchone()[0])
    applied: list[Deleted] = []
    for n, tweet_id in pending:
        row = conn.execute("SELECT seq, rules FROM tweets WHERE id = ?", (tweet_id,)).fetchone()
        seq, channels = 0, ()
        if row is not None:
            seq, keys = row[0], list(dict.fromkeys(orjson.loads(row[1])))
            channels = (ALL_CHANNEL, *(RULE_PREFIX + key for key in keys))
            remove_tweets(conn, seq, seq, keys, indexed)
        number += 1
        conn.execute(
            "UPDATE deletions SET applied_n = ?, applied_at = ?, seq = ?, channels = ? WHERE n = ?",
            (number, now, seq, orjson.dumps(channels).decode(), n),
        )
        applied.append(Deleted(number, tweet_id, seq, channels))
    return applied


def deletions_after(conn: sqlite3.Connection, after: int, limit: int) -> list[Deleted]:
    """The record past ``after``, in the order the writer applied it."""
    rows = conn.execute(
        "SELECT applied_n, tweet_id, seq, channels FROM deletions WHERE applied_n > ? "
        "ORDER BY applied_n LIMIT ?",
        (after, limit),
    )
    return [
        Deleted(number, tweet_id, seq, tuple(orjson.loads(channels)))
        for number, tweet_id, seq, channels in rows
    ]


def last_deletion(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(applied_n), 0) FROM deletions").fetchone()[0])
