"""Copying the SQLite store's WAL back into its file on a thread of its own.

SQLite's automatic checkpoint runs inside the commit that crosses its threshold: that
append then takes tens of milliseconds instead of one (at a live rate of 250 tweets a
second, about one commit in a hundred, which is the stream's 99th percentile latency).
A checkpoint that only copies (``PASSIVE``) needs neither the writer nor the readers to
wait, so this thread does it beside the commits, once a second while they come, and the
writer's connection runs with no automatic checkpoint. Every few seconds of steady writes
it also truncates the WAL (a trickle is never idle long enough for the writer's own
truncation, :mod:`relay.store.sqlite.writer`), right after a copy, so that the moment
commits wait for it is short; it never waits for a commit in progress.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time

log = logging.getLogger(__name__)

COPY_EVERY = 1.0
"""Seconds between two copies while commits come. At ingest speed a second of commits
is about the 40 MiB the automatic checkpoint used to wait for (each hot index page
copied once, not at every commit); at a live rate it is a short copy."""


class Checkpointer:
    """Copies committed WAL frames into the database file at ``path`` every
    :data:`COPY_EVERY` seconds after :meth:`committed` was called, on its own connection,
    and truncates the WAL after a copy once ``truncate_every`` seconds have passed."""

    def __init__(self, path: str, truncate_every: float, every: float = COPY_EVERY) -> None:
        self.path = path
        self.every = min(every, truncate_every)
        self.truncate_every = truncate_every
        self.copies = 0
        self._truncated_at = time.monotonic()
        self._pending = False
        self._stopping = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="store-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """A commit added frames to the WAL (called by the writer thread: a flag, no lock)."""
        self._pending = True

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stopping:
                self._wake.wait(self.every)
                if self._stopping or not self._pending:
                    continue
                self._pending = False
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.copies += 1
                    if time.monotonic() - self._truncated_at >= self.truncate_every:
                        self._truncate(conn)
                except sqlite3.Error as exc:  # another checkpoint holds the lock: next time
                    log.debug("copying the WAL of %s failed, tried again: %s", self.path, exc)
                    self._pending = True
        finally:
            conn.close()

    def _truncate(self, conn: sqlite3.Connection) -> None:
        """Truncate the WAL if no commit is in progress and no reader holds an older
        snapshot now (busy: the next copy tries again)."""
        with contextlib.suppress(sqlite3.Error):
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                self._truncated_at = time.monotonic()
