"""Copying the SQLite store's WAL back into its file on a thread of its own.

SQLite's automatic checkpoint runs inside the commit that crosses its threshold: that
append then takes tens of milliseconds instead of one (at a live rate of 250 tweets a
second, about one commit in a hundred, which is the stream's 99th percentile latency).
A checkpoint that only copies (``PASSIVE``) needs neither the writer nor the readers to
wait, so this thread does it beside the commits, once a second while they come, and the
writer's connection runs with no automatic checkpoint.

Nothing waits for the WAL to shrink while writes go on, either: once a copy has taken
every frame, the writer's next transaction starts the WAL over from its beginning (SQLite
does so when no reader still reads from the log), and ``journal_size_limit``
(:data:`WAL_KEPT_BYTES`) cuts a file a burst left large as it does. A truncating
checkpoint makes the next commit wait for it (it holds the writer's lock while it syncs
the file: 20-60 ms every time it ran, which a live stream saw as its 99th percentile), so
it runs only when the log outgrew :data:`WAL_TRUNCATE_BYTES` because copies never caught
up (a bulk ingest, readers that kept old snapshots), and when writes pause
(:mod:`relay.store.sqlite.writer`).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

COPY_EVERY = 1.0
"""Seconds between two copies while commits come. At ingest speed a second of commits
is about the 40 MiB the automatic checkpoint used to wait for (each hot index page
copied once, not at every commit); at a live rate it is a short copy."""
CHASES = 3
"""Copies, each when the writer next waits, after a copy (:meth:`Checkpointer._copy`)."""
WAL_KEPT_BYTES = 32 * 1024 * 1024
"""``journal_size_limit`` of the writer: a WAL file the log starts over in is cut to this."""
WAL_TRUNCATE_BYTES = 256 * 1024 * 1024
"""A log of more than this after a copy is truncated (making one commit wait): the
copies did not catch up with the writes, so the log never started over."""


class Checkpointer:
    """Copies committed WAL frames into the database file at ``path`` every ``every``
    seconds after :meth:`committed` was called, on its own connection, and truncates
    the WAL after a copy that left it over ``truncate_above`` bytes."""

    def __init__(
        self, path: str, every: float = COPY_EVERY, truncate_above: int = WAL_TRUNCATE_BYTES
    ) -> None:
        self.path = path
        self.every = every
        self.truncate_above = truncate_above
        self.copies = 0
        self.truncations = 0
        self._pending = False
        self._chasing = False
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

    def idle(self) -> None:
        """The writer waits for work now (called by the writer thread): the moment to copy
        what a copy left behind, before the next commit."""
        if self._chasing:
            self._wake.set()

    def _loop(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            while not self._stopping:
                self._wake.wait(self.every)
                self._wake.clear()
                if self._stopping or not self._pending:
                    continue
                self._pending = False
                try:
                    frames = self._copy(conn)
                    if frames * page_size > self.truncate_above:
                        self._truncate(conn)
                except sqlite3.Error as exc:  # another checkpoint holds the lock: next time
                    log.debug("copying the WAL of %s failed, tried again: %s", self.path, exc)
                    self._pending = True
                finally:
                    self._chasing = False
        finally:
            conn.close()

    def _copy(self, conn: sqlite3.Connection) -> int:
        """Copy what is committed; the frames the log holds after.

        The log starts over only at a commit that begins with every frame copied, and
        a copy of a second of commits is overtaken by the next commit or the search
        index's commit after it. So the copy is done again when the writer next waits,
        a short one (the few frames since) that is likely done before its next commit;
        again, a few times at most, until one copies every frame."""
        _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self.copies += 1
        for _ in range(CHASES):
            if self._stopping:
                break
            self._chasing = True
            self._wake.wait(self.every)
            self._wake.clear()
            _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.copies += 1
            if copied >= frames:
                break
        return int(frames)

    def _truncate(self, conn: sqlite3.Connection) -> None:
        """Truncate the WAL if no commit is in progress and no reader holds an older
        snapshot now (busy: the next copy tries again)."""
        with contextlib.suppress(sqlite3.Error):
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                self.truncations += 1
