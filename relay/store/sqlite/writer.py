"""The SQLite store's writer: one thread, one connection, group commit, the WAL kept small.

Every write goes through one thread fed by a queue: it takes every job waiting and
commits them in one transaction (group commit), so a burst of small batches costs one
commit, not many. Being the only writer, it knows the next ``seq``
(:class:`~relay.store.sqlite.write.Seq`); a commit that stored tweets records their
receive order in the same transaction (:mod:`relay.store.sqlite.receive_order`). Between
commits it indexes what was committed for full-text search
(:mod:`relay.store.sqlite.search`) and, once writes pause, copies the WAL back into the
file and truncates it. While they come, a thread of its own copies it beside them
(:mod:`relay.store.sqlite.checkpointer`): no commit ever runs a checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from relay.errors import StoreCorrupt, StoreError
from relay.store.sqlite.checkpointer import COPY_EVERY, Checkpointer
from relay.store.sqlite.conn import BUSY_TIMEOUT_MS
from relay.store.sqlite.damage import is_corruption
from relay.store.sqlite.receive_order import record as record_receive_order
from relay.store.sqlite.search import SEARCH_LAG, index_committed
from relay.store.sqlite.write import DATA_ERRORS, Seq

log = logging.getLogger(__name__)
T = TypeVar("T")

WRITER_CACHE_KIB = 65536
"""The writer's page cache (``PRAGMA cache_size``, KiB). At SQLite's default of 2 MiB a
group commit of a few thousand 2 KB tweets spills pages to the WAL before it commits
(the profile of the old writer showed ``sqlite3PcacheFetchStress`` and ``pwrite``
inside the inserts); 64 MiB holds a whole group and the hot index pages."""
IDLE_CHECKPOINT = 1.0
"""Seconds without a write after which the writer copies the WAL into the database file
and truncates it (``wal_checkpoint(TRUNCATE)``). The automatic checkpoint copies but
never shrinks the file: a trickle of small commits (a demo, a quiet rule) would leave a
WAL of tens of MB beside a database of a few hundred KB."""
CHECKPOINT_EVERY = COPY_EVERY
"""Seconds between two copies of the WAL into the file while writes keep coming (a
steady trickle is never idle for long): by the copier thread, beside the commits; the
log then starts over instead of growing (:mod:`relay.store.sqlite.checkpointer`)."""


@dataclass
class _Job:
    run: Callable[[sqlite3.Connection], Any]
    careful: Callable[[sqlite3.Connection], Any] | None = None
    """The same work, leaving out what cannot be stored: run when ``run`` fails on data."""
    future: Future[Any] = field(default_factory=Future)


@dataclass
class _IndexNow:
    """A request to the writer: index everything committed, then give the new mark."""

    future: Future[int] = field(default_factory=Future)


_STOP = object()


class _DataError(Exception):
    """A job failed on a value it holds (its ``__cause__``), not because of the store."""


def _store_error(exc: Exception, path: str) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.DatabaseError) and is_corruption(exc):
        return StoreCorrupt(f"the store {path} is damaged: commit failed: {exc}")
    return StoreError(f"commit failed: {exc}")


class WriterThread:
    """The one writer of a :class:`~relay.store.sqlite.store.SQLiteStore`, on ``conn``
    (opened, migrated and tuned by the store), from seq ``next_seq`` on."""

    def __init__(
        self,
        path: str,
        conn: sqlite3.Connection,
        *,
        next_seq: int,
        search_indexed: int,
        idle_checkpoint: float = IDLE_CHECKPOINT,
        checkpoint_every: float = CHECKPOINT_EVERY,
    ) -> None:
        self.path = path
        self.idle_checkpoint = idle_checkpoint
        self.checkpoint_every = checkpoint_every
        self.seq = Seq(next_seq)
        self.commits = 0
        self.search_indexed = search_indexed
        """The highest seq the full-text index holds (see :mod:`relay.store.sqlite.search`)."""
        self._indexed_at = 0.0
        self._index_failed = False
        self._wal_dirty = False
        """Commits since the last checkpoint that truncated the WAL."""
        self._copier = Checkpointer(path, checkpoint_every) if path != ":memory:" else None
        """Copies the WAL into the file beside the commits (never inside one)."""
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._write_loop, args=(conn,), name="store-writer", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def write(
        self,
        run: Callable[[sqlite3.Connection], T],
        careful: Callable[[sqlite3.Connection], T] | None = None,
    ) -> T:
        """Run ``run`` in a write transaction (group-committed with others)."""
        if not self.alive:
            raise StoreError("store is closed")
        job = _Job(run, careful)
        self._jobs.put(job)
        result: T = await asyncio.wrap_future(job.future)
        return result

    async def search_ready(self) -> None:
        """A search sees every tweet committed before it: the writer indexes now rather
        than within SEARCH_LAG. Waiting stops after SEARCH_LAG (a long commit ahead of
        it): the search then runs on what is indexed."""
        if self.search_indexed >= self.seq.next - 1:
            return
        with contextlib.suppress(TimeoutError, StoreError):
            await asyncio.wait_for(asyncio.shield(self.search_caught_up()), SEARCH_LAG)

    async def search_caught_up(self) -> int:
        """Return once every tweet committed before this call is searchable; the mark."""
        if not self.alive:
            raise StoreError("store is closed")
        request = _IndexNow()
        self._jobs.put(request)
        return await asyncio.wrap_future(request.future)

    async def stop(self) -> None:
        """Commit what is queued, index it, close the connection."""
        if self.alive:
            self._jobs.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    # -- the thread ------------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        while True:
            # Search catches up when no append waits, and at least every SEARCH_LAG
            # seconds while they keep coming.
            if self._jobs.empty() or time.monotonic() - self._indexed_at >= SEARCH_LAG:
                self._index(conn)
            if self._copier is not None and self._jobs.empty():
                self._copier.idle()
            try:
                # With commits not yet checkpointed, wait only as long as idle lasts.
                jobs = [self._jobs.get(timeout=self.idle_checkpoint if self._wal_dirty else None)]
            except queue.Empty:
                self._checkpoint(conn)
                continue
            while True:  # group commit: take whatever else is already waiting
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stop = any(job is _STOP for job in jobs)
            flushes = [job for job in jobs if isinstance(job, _IndexNow)]
            # A job whose caller gave up (its future cancelled) is not run; one
            # that runs can no longer be cancelled, so its outcome is always set.
            jobs = [
                job
                for job in jobs
                if isinstance(job, _Job) and job.future.set_running_or_notify_cancel()
            ]
            if jobs:
                self._commit(conn, jobs)
                self._wal_dirty = self.path != ":memory:"
                if self._copier is not None:
                    self._copier.committed()
            if flushes or stop:
                self._index(conn)
                for flush in flushes:
                    if flush.future.set_running_or_notify_cancel():
                        flush.future.set_result(self.search_indexed)
            if stop:
                if self._copier is not None:
                    self._copier.stop()
                conn.close()
                return

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database file and truncate it, if no reader holds an
        older snapshot now; else try again at the next idle moment. Never waits: the
        writer must not stall behind a long query."""
        busy = 1
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.debug("checkpoint of %s failed, tried again later: %s", self.path, exc)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        self._wal_dirty = bool(busy)

    def _index(self, conn: sqlite3.Connection) -> None:
        """Index what was committed since the last step; a failure is logged, retried later."""
        self._indexed_at = time.monotonic()
        try:
            self.search_indexed = index_committed(conn, self.search_indexed, self.seq.next - 1)
        except sqlite3.Error as exc:
            if not self._index_failed:  # once per run of failures: it retries every step
                log.warning("full-text indexing failed, search misses new tweets: %s", exc)
            self._index_failed = True
            return
        if self._index_failed:
            log.info("full-text indexing works again")
        self._index_failed = False

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        """Commit every job in one transaction; never raises.

        When a job fails on its data (a value that cannot be bound or encoded),
        the group is retried a job at a time, and a failing append once more a
        tweet at a time, so that only what cannot be stored is left out. A store
        failure fails every job of the group: ingest stops and says why.
        """
        try:
            results = self._transaction(conn, [job.run for job in jobs])
        except _DataError as exc:
            log.debug("a commit of %d jobs failed on its data (%s): one at a time", len(jobs), exc)
            self._commit_each(conn, jobs)
            return
        except Exception as exc:
            for job in jobs:
                job.future.set_exception(_store_error(exc, self.path))
            return
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)

    def _commit_each(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        for number, job in enumerate(jobs):
            try:
                try:
                    (result,) = self._transaction(conn, [job.run])
                except _DataError:
                    if job.careful is None:
                        raise
                    (result,) = self._transaction(conn, [job.careful])
            except _DataError as exc:
                job.future.set_exception(StoreError(f"cannot store: {exc.__cause__}"))
                continue
            except Exception as exc:  # the store itself failed: nothing more goes in
                for failed in jobs[number:]:
                    failed.future.set_exception(_store_error(exc, self.path))
                return
            job.future.set_result(result)

    def _transaction(
        self, conn: sqlite3.Connection, runs: list[Callable[[sqlite3.Connection], Any]]
    ) -> list[Any]:
        """Run ``runs`` in one transaction; all or nothing, the next seq included.

        Raises :class:`_DataError` when a run failed on its data, else what failed.
        """
        next_seq = self.seq.next
        conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                results = [run(conn) for run in runs]
            except DATA_ERRORS as exc:
                raise _DataError(str(exc)) from exc
            if self.seq.next != next_seq:  # tweets went in: their receive order too
                record_receive_order(conn)
            conn.execute("COMMIT")
        except BaseException:
            self.seq.next = next_seq
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self.commits += 1
        return results
