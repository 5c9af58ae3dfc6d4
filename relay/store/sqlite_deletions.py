"""The SQLite side of :mod:`relay.deletions`: queue, apply, read the record."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from relay.deletions import Deleted
from relay.errors import StoreError
from relay.store.sqlite_schema import check_schema
from relay.store.sqlite_search import INDEXED_TEXT
from relay.tweets import ALL_CHANNEL, RULE_PREFIX, time_from_unix


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
        row = conn.execute(
            "SELECT seq, rules, author_id FROM tweets WHERE id = ?", (tweet_id,)
        ).fetchone()
        seq, channels = 0, ()
        if row is not None:
            seq, rules, author = row
            keys = list(dict.fromkeys(orjson.loads(rules)))
            channels = (ALL_CHANNEL, *(RULE_PREFIX + key for key in keys))
            if seq <= indexed:  # the index holds a copy of the text: removed with it
                conn.execute(
                    "INSERT INTO tweets_fts (tweets_fts, rowid, text) "
                    f"SELECT 'delete', seq, {INDEXED_TEXT} FROM tweets WHERE seq = ?",
                    (seq,),
                )
            conn.executemany(
                "DELETE FROM tweet_rules WHERE tag = ? AND seq = ?", [(k, seq) for k in keys]
            )
            conn.execute("DELETE FROM tweets WHERE seq = ?", (seq,))
            if author is not None:
                conn.execute(
                    "DELETE FROM users WHERE id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM tweets WHERE author_id = ?)",
                    (author, author),
                )
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
