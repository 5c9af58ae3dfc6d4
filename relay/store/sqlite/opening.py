"""Opening an SQLite store's file: checked for reading (``relay serve`` beside an
ingester), or brought up to date and set up for the one writer thread."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from relay.errors import StoreError, StoreNotReady
from relay.store.sqlite.checkpointer import WAL_KEPT_BYTES
from relay.store.sqlite.conn import connect
from relay.store.sqlite.damage import check_head
from relay.store.sqlite.schema import check_schema, migrate
from relay.store.sqlite.search import indexed_seq
from relay.store.sqlite.writer import WRITER_CACHE_KIB


def check_readable(path: str) -> tuple[int, str]:
    """The schema version and epoch of a store another process writes; one clear error
    when there is none yet or it is not one."""
    if path == ":memory:":
        raise StoreError("an in-memory database cannot be shared with a serving process")
    if not Path(path).exists():
        raise StoreNotReady(
            f"no database at {path} yet: start `relay ingest` or run `relay migrate`"
        )
    conn = connect(path)
    try:
        check_schema(conn)
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        epoch: str = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        check_head(conn)
        return version, epoch
    except StoreNotReady as exc:
        raise StoreNotReady(f"{path}: {exc}") from None
    except (sqlite3.DatabaseError, StoreError, TypeError) as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    finally:
        conn.close()


@dataclass
class WriterStart:
    """The writer's connection, migrated and tuned, and where its seqs go on."""

    conn: sqlite3.Connection
    schema_version: int
    epoch: str
    next_seq: int
    search_indexed: int


def check_folder(path: str) -> None:
    """The folder a new store's file goes in exists (said before its writer lock is made)."""
    if path != ":memory:" and not Path(path).parent.exists():
        raise StoreError(f"database folder does not exist: {Path(path).parent}")


def open_for_writing(path: str) -> WriterStart:
    """Migrate the file (first: another application's file is refused before any write),
    turn on WAL, and read the epoch, the next seq and how far search has indexed."""
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(path)
        migrate(conn)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        conn.execute("PRAGMA journal_mode = WAL")
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        if epoch is None or not isinstance(epoch[0], str):
            raise StoreError("not a tweet-relay database (it has no epoch)")
        given, head = check_head(conn)
        search_indexed = indexed_seq(conn)
        conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB:d}")
        # No checkpoint inside a commit: the writer's copier thread copies the WAL beside
        # them (relay.store.sqlite.checkpointer), the writer truncates it when writes pause;
        # in between the log starts over in its file, cut to this size when it does.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_KEPT_BYTES:d}")
    except (sqlite3.DatabaseError, StoreError) as exc:
        if conn is not None:
            conn.close()
        raise StoreError(f"cannot open database {path}: {exc}") from None
    return WriterStart(conn, version, epoch[0], max(given, head) + 1, search_indexed)
