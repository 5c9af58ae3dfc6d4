"""Connecting to the SQLite file: the settings every connection of the store shares."""

from __future__ import annotations

import sqlite3

BUSY_TIMEOUT_MS = 5000
"""How long a connection waits for a lock another one holds."""
MMAP_BYTES = 256 * 2**20
"""Reads of the database file through a memory map (``PRAGMA mmap_size``): the
id lookups of each append and the readers' pages, without a copy a page."""


def connect(path: str) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are begun explicitly), usable from
    the thread that is given it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
    # NORMAL in WAL mode survives a crash of the process (kill -9); only an OS
    # crash can lose the last commits, and the source redelivers those.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES:d}")
    return conn
