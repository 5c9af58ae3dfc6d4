"""Connecting to the SQLite file: the settings every connection of the store shares."""

from __future__ import annotations

import sqlite3

BUSY_TIMEOUT_MS = 5000
"""How long a connection waits for a lock another one holds."""
MMAP_BYTES = 256 * 2**20
"""Reads of the database file through a memory map (``PRAGMA mmap_size``): the
id lookups of each append, without a copy a page."""
READER_MMAP_BYTES = 2**31 - 2**16
"""The readers' memory map: the whole file up to 2 GB (SQLite's own ceiling), so a
catch-up reads its rows in place instead of by ``pread`` past the first 256 MB (a
copy and a call a page). Address space only: the pages are the kernel's file cache,
shared by every connection and given back under memory pressure."""


def connect(path: str, *, mmap_bytes: int = MMAP_BYTES) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are begun explicitly), usable from
    the thread that is given it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    # NORMAL in WAL mode survives a crash of the process (kill -9); only an OS
    # crash can lose the last commits, and the source redelivers those.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA mmap_size = {mmap_bytes:d}")
    return conn
