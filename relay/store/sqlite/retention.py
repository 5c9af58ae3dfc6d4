"""Deleting the oldest tweets of a SQLite store, a small batch per transaction.

Runs on the writer thread between appends (one job of the group commit), so a large
backlog of old tweets is removed over many short transactions instead of one that
would stall ingest. Everything a tweet brought goes with it: its full-text entry, its
rule memberships and its author when no kept tweet has that author any more.
"""

from __future__ import annotations

import sqlite3

import orjson

from relay.store.sqlite.search import INDEXED_TEXT
from relay.store.types import Trimmed


def trim_oldest(
    conn: sqlite3.Connection,
    *,
    through_seq: int,
    received_before: str | None,
    limit: int,
    indexed: int,
) -> Trimmed:
    """Delete at most ``limit`` of the oldest tweets that have ``seq <= through_seq``
    or were received before ``received_before`` (store time text), oldest first and
    without a hole: deletion stops at the first tweet that is kept. The newest tweet
    is always kept (the next seq is counted from it). ``indexed`` is the highest seq
    the full-text index holds. Runs inside the caller's transaction."""
    head = conn.execute("SELECT max(seq) FROM tweets").fetchone()[0] or 0
    last = 0
    for seq, received in conn.execute(
        "SELECT seq, received_at FROM tweets WHERE seq < ? ORDER BY seq LIMIT ?", (head, limit)
    ):
        if seq > through_seq and (received_before is None or received >= received_before):
            break
        last = seq
    if last == 0:
        return Trimmed(0, _oldest(conn))
    tags = [row[0] for row in conn.execute("SELECT tag FROM rules")]
    deleted = remove_tweets(conn, 1, last, tags, indexed)
    return Trimmed(deleted, _oldest(conn))


def remove_tweets(
    conn: sqlite3.Connection, first: int, last: int, tags: list[str], indexed: int
) -> int:
    """Delete the tweets with ``first <= seq <= last`` and what they brought: their
    full-text entries (``indexed``: the highest seq the index holds), their rows of
    ``tweet_rules`` under ``tags``, and authors no kept tweet has. How many went.
    Retention removes a range, a deletion request one tweet: the same steps."""
    # The index holds a copy of the text (external content): it is removed with the
    # very text it indexed, before the row goes.
    conn.execute(
        "INSERT INTO tweets_fts (tweets_fts, rowid, text) "
        f"SELECT 'delete', seq, {INDEXED_TEXT} FROM tweets WHERE seq BETWEEN ? AND ?",
        (first, min(last, indexed)),
    )
    authors = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT author_id FROM tweets "
            "WHERE seq BETWEEN ? AND ? AND author_id IS NOT NULL",
            (first, last),
        )
    ]
    # tweet_rules is keyed by (tag, seq): one range per tag, never a scan of the table.
    conn.executemany(
        "DELETE FROM tweet_rules WHERE tag = ? AND seq BETWEEN ? AND ?",
        [(tag, first, last) for tag in tags],
    )
    deleted = conn.execute("DELETE FROM tweets WHERE seq BETWEEN ? AND ?", (first, last)).rowcount
    conn.execute(
        "DELETE FROM users WHERE id IN (SELECT value FROM json_each(?)) "
        "AND NOT EXISTS (SELECT 1 FROM tweets WHERE tweets.author_id = users.id)",
        (orjson.dumps(authors),),
    )
    return int(deleted)


def _oldest(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT min(seq) FROM tweets").fetchone()[0] or 0)


def checkpoint(path: str) -> tuple[int, int]:
    """Copy the WAL back into the database file and truncate it (after large deletes);
    ``(frames in the WAL, frames checkpointed)``. Never waits on readers for long."""
    conn = sqlite3.connect(path, timeout=1.0)
    try:
        busy, logged, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:  # a reader holds an old snapshot: copy what can be copied, truncate later
            busy, logged, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(logged), int(done)
    finally:
        conn.close()
