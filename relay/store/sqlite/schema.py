"""The SQLite store's schema: its migrations, and the check that a file is a relay's.

``PRAGMA user_version`` records how many migrations have run. Opening refuses,
before writing anything, a database that is not a relay's: a file with tables
and no relay schema version, or one that lacks a table or column the relay uses.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Callable

import sqlite_utils

from relay.errors import StoreError, StoreNotReady
from relay.store.sqlite.receive_order import record as record_receive_order
from relay.store.sqlite.search import INDEXED_TEXT, SEARCH_MARK, register

log = logging.getLogger(__name__)

TWEET_COLUMNS = (
    "seq, id, author_id, author_username, text, lang, created_at, received_at, has_media, "
    "rules, object"
)


PAGE_SIZE = 16384
"""Bytes a page of a new store (SQLite's default is 4096; an existing file keeps its own).
A stored tweet is about 2.5 KB with seven indexes beside it: a 4 KiB page holds one or
two, and each commit wrote (and each checkpoint copied) a page per row, a ``pwrite`` each.
Measured on 30,000 synthetic tweets into the relay's own tables and indexes (the bench's
"own tables" row): 24-28 -> 17 µs of CPU a tweet for the inserts and the commit."""


def _migration_1(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        """CREATE TABLE tweets (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            author_id TEXT,
            author_username TEXT,
            text TEXT NOT NULL,
            lang TEXT,
            created_at TEXT NOT NULL,
            received_at TEXT NOT NULL,
            has_media INTEGER NOT NULL,
            rules TEXT NOT NULL,
            object TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX tweets_created_at ON tweets (created_at)")
    db.execute("CREATE INDEX tweets_lang ON tweets (lang, seq)")
    db.execute("CREATE INDEX tweets_author ON tweets (author_username, seq)")
    db.execute(
        "CREATE TABLE tweet_rules (tag TEXT NOT NULL, seq INTEGER NOT NULL, "
        "PRIMARY KEY (tag, seq)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE users (id TEXT PRIMARY KEY, username TEXT, name TEXT, "
        "object TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    db.execute("CREATE TABLE source_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    # One row per rule key ever seen: /v1/info lists channels without scanning tweet_rules.
    db.execute("CREATE TABLE rules (tag TEXT PRIMARY KEY, first_seq INTEGER NOT NULL)")
    db.table("tweets").enable_fts(["text"], fts_version="FTS5", create_triggers=True)
    db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", [secrets.token_hex(8)])


def _migration_2(db: sqlite_utils.Database) -> None:
    # A user object is served only when one of its tweets is readable: find them fast.
    db.execute("CREATE INDEX IF NOT EXISTS tweets_author_id ON tweets (author_id, seq)")


def _migration_3(db: sqlite_utils.Database) -> None:
    # Full-text indexing leaves the commit path: the writer indexes committed tweets in
    # its own transactions, a little behind (see relay.store.sqlite.search), instead of
    # a trigger doing it row by row inside every append. What the trigger indexed so
    # far stays; the mark says where the indexing goes on from.
    for trigger in ("tweets_ai", "tweets_ad", "tweets_au"):
        db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    db.execute(
        "INSERT INTO meta (key, value) SELECT ?, coalesce(max(seq), 0) FROM tweets",
        [SEARCH_MARK],
    )


def _migration_4(db: sqlite_utils.Database) -> None:
    # Deletion requests (relay delete) and the record of what they removed: the queue is
    # written by any process, applied by the writer, read by the serving processes.
    db.execute(
        """CREATE TABLE deletions (
            n INTEGER PRIMARY KEY AUTOINCREMENT,
            tweet_id TEXT NOT NULL,
            requested_at TEXT NOT NULL,
            applied_n INTEGER UNIQUE,
            applied_at TEXT,
            seq INTEGER,
            channels TEXT)"""
    )
    # applied_n numbers what the writer applied in its commit order (the record serving
    # processes read); a request's own n may commit out of order on PostgreSQL.
    db.execute("CREATE INDEX deletions_pending ON deletions (n) WHERE applied_n IS NULL")


def _migration_5(db: sqlite_utils.Database) -> None:
    # Search in every script: the index holds each text's index form (runs of scripts
    # without spaces cut into bigrams, relay.core.segment), no longer the text itself. The
    # old entries are dropped and what was indexed is indexed again in the new form.
    db.execute("INSERT INTO tweets_fts (tweets_fts) VALUES ('delete-all')")
    db.execute(
        f"INSERT INTO tweets_fts (rowid, text) SELECT seq, {INDEXED_TEXT} FROM tweets "
        "WHERE seq <= (SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?)",
        [SEARCH_MARK],
    )


def _migration_6(db: sqlite_utils.Database) -> None:
    # Objects as JSON text: schema versions 3 to 5 stored them as BLOBs (bytes bound as
    # they were), which SQLite's JSON functions refuse and datasette shows as <Binary>.
    # The cast keeps every byte; one pass over the table, in this one transaction.
    db.execute("UPDATE tweets SET object = CAST(object AS TEXT) WHERE typeof(object) = 'blob'")


def _migration_7(db: sqlite_utils.Database) -> None:
    # Rewind by time: the first seq received at or after a moment in one index lookup
    # (relay.store.sqlite.receive_order), with the record of receive order the writer keeps,
    # here filled for the tweets already stored. Measured on a million tweets (python -m
    # bench.migration): about 2 s in all.
    db.execute("CREATE INDEX tweets_received_at ON tweets (received_at)")
    db.execute(
        "CREATE TABLE receive_order (checked INTEGER NOT NULL, received_max TEXT NOT NULL, "
        "late_through INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO receive_order VALUES (0, '', 0)")
    record_receive_order(db.conn)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
]
"""Schema changes in order; ``PRAGMA user_version`` records how many have run."""

SCHEMA: dict[str, set[str]] = {
    "meta": {"key", "value"},
    "tweets": {column.strip() for column in TWEET_COLUMNS.split(",")},
    "tweet_rules": {"tag", "seq"},
    "users": {"id", "username", "name", "object", "updated_at"},
    "source_state": {"key", "value"},
    "rules": {"tag", "first_seq"},
    "deletions": {"n", "tweet_id", "requested_at", "applied_n", "applied_at", "seq", "channels"},
    "receive_order": {"checked", "received_max", "late_through"},
}
"""The tables and columns the relay reads and writes: checked at open, so another
application's database is refused in one line instead of failing later."""


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema up to date; refuse a database that is not a relay's."""
    db = sqlite_utils.Database(conn)
    register(conn)  # the connection that migrates is the one that writes the index
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this relay ({len(MIGRATIONS)})"
        )
    if version == 0:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        if tables:  # never write into another application's database
            raise StoreError(
                "not a tweet-relay database (it has tables "
                f"{', '.join(tables[:5])[:200]} and no relay schema version)"
            )
        # Before the first table, while the file is empty (and not yet in WAL mode).
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE:d}")
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        # One transaction per migration (sqlite-utils keeps scripts inside it).
        conn.execute("BEGIN IMMEDIATE")
        try:
            migration(db)
            conn.execute(f"PRAGMA user_version = {number:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        log.info("store migrated to schema version %d", number)
    check_schema(conn)


def check_schema(conn: sqlite3.Connection) -> None:
    """Refuse a file that lacks a table or column the relay uses (read-only check)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this relay ({len(MIGRATIONS)})"
        )
    if version == 0:
        raise StoreNotReady("it has no relay schema yet: run `relay migrate` or `relay ingest`")
    for table, columns in SCHEMA.items():
        found = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if not columns <= found:
            missing = "it is missing" if not found else "it lacks columns of"
            if version < len(MIGRATIONS):  # a relay's, from before a migration: not yet
                raise StoreNotReady(
                    f"its schema (version {version}) is older than this relay's "
                    f"({len(MIGRATIONS)}), {missing} the table {table}: run `relay migrate` "
                    "or `relay ingest`"
                )
            raise StoreError(f"not a tweet-relay database ({missing} the table {table})")
