"""The SQLite store's full-text index, filled behind the commits instead of inside them.

An FTS5 trigger on ``tweets`` indexed each row inside its append: a statement, a
virtual-table savepoint and index pages per tweet, and ingest ran at about half the
rate it has without it. The writer thread now indexes what was committed since the
last time, with one ``INSERT ... SELECT`` in a transaction of its own, whenever it has
no append waiting or :data:`SEARCH_LAG` seconds have passed. ``search`` may so miss
the newest tweets for a moment; nothing else depends on the index (resume, the stream
and every other query read ``tweets`` itself). The mark (``meta``, key
:data:`SEARCH_MARK`) commits with the index rows, so a
crash never indexes a tweet twice nor skips one.

The index holds :func:`relay.core.segment.index_form` of each text (scripts without spaces
cut into bigrams), through the SQL function :data:`INDEX_FORM` that :func:`register`
adds to the writer connection. It is external-content FTS5: removing an entry needs the
very text that was indexed, so every statement that adds or removes entries spells it
:data:`INDEXED_TEXT` (here, in retention, in deletions and in the migration).
"""

from __future__ import annotations

import sqlite3

from relay.core.segment import index_form

INDEX_FORM = "relay_index_form"
"""The SQL function (on the writer connection) that gives the indexed form of a text."""

INDEXED_TEXT = f"{INDEX_FORM}(text)"
"""The expression, over a ``tweets`` row, of what the full-text index holds for it."""

SEARCH_MARK = "search_indexed_seq"
"""The ``meta`` key of the highest seq whose text the full-text index holds."""

SEARCH_LAG = 0.5
"""Seconds the writer lets pass at most between two indexing steps while appends keep
coming (when none waits it indexes at once). Indexing is cheap once it is one statement:
30,000 committed tweets index in 0.09 s here (320,000 a second), so a step over 0.5 s
of tweets at 50,000 a second takes under 0.1 s and search trails the last commit by
well under a second."""


def register(conn: sqlite3.Connection) -> None:
    """Add :data:`INDEX_FORM` to a connection that writes the index (deterministic)."""
    conn.create_function(INDEX_FORM, 1, index_form, deterministic=True)


def indexed_seq(conn: sqlite3.Connection) -> int:
    """The highest seq the full-text index holds (every lower one is in it too)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (SEARCH_MARK,)).fetchone()
    return int(row[0]) if row else 0


def index_committed(conn: sqlite3.Connection, indexed: int, head: int) -> int:
    """Index the text of every tweet with ``indexed < seq <= head``, in one transaction;
    returns the new mark (``head``). Raises what SQLite raised, having rolled back."""
    if head <= indexed:
        return indexed
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            f"INSERT INTO tweets_fts (rowid, text) "
            f"SELECT seq, {INDEXED_TEXT} FROM tweets WHERE seq > ? AND seq <= ?",
            (indexed, head),
        )
        conn.execute("UPDATE meta SET value = ? WHERE key = ?", (str(head), SEARCH_MARK))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return head
