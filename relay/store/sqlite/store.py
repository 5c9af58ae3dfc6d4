"""The default store: one SQLite file in WAL mode, through sqlite-utils.

SQLite stays off the event loop. All writes go through one writer thread fed by
a queue; it takes every job waiting and commits them in one transaction (group
commit), so a burst of small batches costs one fsync-free WAL commit, not many.
Reads run on two small thread pools, each thread with its own read-only connection;
WAL lets them read while the writer writes. The object API's queries have their own
pool and a time limit, so that catch-ups, ``/v1/info`` and ``/readyz`` never wait
behind a heavy query.

Because the writer thread is the only writer, it knows the next ``seq`` and
stores each tweet's served object complete with its seq: reads hand the stored
bytes straight to clients without decoding them. So one process writes a file
(:class:`~relay.store.sqlite.file_lock.WriterLock` refuses a second); any number of
processes on the same machine may open it to read (``writer=False``: ``relay serve``
beside ``relay ingest``). Scale-out across machines uses PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

from relay.core.query import Condition, TweetQuery
from relay.core.times import time_from_unix
from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX, Tweet
from relay.errors import StoreCorrupt, StoreError, StoreNotReady
from relay.store import (
    AppendResult,
    BodyPage,
    StoredBody,
    StoredTweet,
    StoreStats,
    Trimmed,
    parse_time,
)
from relay.store.sqlite import query as sqlite_query
from relay.store.sqlite.deletions import apply_pending, deletions_after, last_deletion
from relay.store.sqlite.file_lock import WriterLock, describe_self
from relay.store.sqlite.query import check_order
from relay.store.sqlite.retention import checkpoint, trim_oldest
from relay.store.sqlite.schema import MIGRATIONS as MIGRATIONS  # re-exported
from relay.store.sqlite.schema import check_schema, migrate
from relay.store.sqlite.search import SEARCH_LAG, index_committed, indexed_seq
from relay.store.sqlite.write import DATA_ERRORS, Seq, append_rows
from relay.store.types import Deleted

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Job:
    run: Callable[[sqlite3.Connection], Any]
    careful: Callable[[sqlite3.Connection], Any] | None = None
    """The same work, leaving out what cannot be stored: run when ``run`` fails on data."""
    future: Future[Any] = field(default_factory=Future)


class _DataError(Exception):
    """A job failed on a value it holds (its ``__cause__``), not because of the store."""


def _store_error(exc: Exception, path: str) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, sqlite3.DatabaseError) and is_corruption(exc):
        return StoreCorrupt(f"the store {path} is damaged: commit failed: {exc}")
    return StoreError(f"commit failed: {exc}")


CORRUPTION_CODES = (11, 26)
"""SQLITE_CORRUPT and SQLITE_NOTADB (primary codes; the extended ones share the low byte)."""


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """SQLite found the file damaged ("database disk image is malformed", ...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in CORRUPTION_CODES
    return "malformed" in str(exc)


def _checked(path: str, run: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """``run(conn)``, with SQLite's corruption errors raised as :class:`StoreCorrupt`."""
    try:
        return run(conn)
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc):
            raise StoreCorrupt(f"the store {path} is damaged: {exc}") from None
        raise


def newest_seq(conn: sqlite3.Connection) -> int:
    """The newest tweet's seq (0 when there is none), read with the one before it.

    A damaged last page can make ``max(seq)`` read a row whose seq is garbage (96 in a
    store of 1,500: every serving process would then end its data there). Walking back
    two rows costs the same descent; the two must come out in order.
    """
    rows = conn.execute("SELECT seq FROM tweets ORDER BY seq DESC LIMIT 2").fetchall()
    if len(rows) == 2 and rows[1][0] >= rows[0][0]:
        raise StoreCorrupt(
            f"damaged: seq {rows[1][0]} comes before its newest seq {rows[0][0]} "
            "(rows out of order): run `relay check`"
        )
    return int(rows[0][0]) if rows else 0


def check_head(conn: sqlite3.Connection) -> tuple[int, int]:
    """The highest seq ever given and the newest tweet's, checked against each other at
    open: what a start can check without reading the whole file (``relay check`` does).

    Reading the newest tweets walks the table's pages from its root to its last leaf,
    so a file damaged there fails here, in one line. The newest seq can never be past
    the highest ever given (SQLite raises that with every insert): if it is, that seq is
    damaged, and the writer would go on numbering after it, leaving a hole.
    """
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tweets'").fetchone()
    given = int(row[0]) if row else 0
    head = newest_seq(conn)
    if head > given:
        raise StoreCorrupt(
            f"damaged: its newest seq {head} is past the highest seq ever given ({given}); "
            "run `relay check`"
        )
    return given, head


def _range_end(path: str, seq: int, rows: sqlite3.Cursor) -> None:
    """``seq``, the first row past a read's range, is where the range ends only if it is
    in order with the row after it (or, the last row, no higher than any seq ever
    given): a row with a damaged seq would otherwise end the read early, quietly."""
    following = rows.fetchone()
    if following is not None:
        check_order(path, seq, following[0])
        return
    # Read after the rows' snapshot: a later one can only have given more seqs.
    given = rows.connection.execute(
        "SELECT seq FROM sqlite_sequence WHERE name = 'tweets'"
    ).fetchone()
    if given is not None and seq > given[0]:
        raise StoreCorrupt(
            f"the store {path} is damaged: seq {seq} is past the highest seq ever "
            f"given ({given[0]}): run `relay check`"
        )


def _missing(path: str, channel: str, seq: int) -> StoreCorrupt:
    return StoreCorrupt(
        f"the store {path} is damaged: {channel} lists seq {seq}, which the tweets table "
        "does not hold: run `relay check`"
    )


_STOP = object()


def _bytes(body: str | bytes) -> bytes:
    """A stored object as bytes. Reads ask for ``CAST(object AS BLOB)``, which hands
    SQLite's UTF-8 text over as bytes (no decoding, no encoding back): stored as TEXT
    since schema version 6, and any value that is not reads back the same."""
    return body if isinstance(body, bytes) else body.encode()


@dataclass
class _IndexNow:
    """A request to the writer: index everything committed, then give the new mark."""

    future: Future[int] = field(default_factory=Future)


WRITER_CACHE_KIB = 65536
"""The writer's page cache (``PRAGMA cache_size``, KiB). At SQLite's default of 2 MiB a
group commit of a few thousand 2 KB tweets spills pages to the WAL before it commits
(the profile of the old writer showed ``sqlite3PcacheFetchStress`` and ``pwrite``
inside the inserts); 64 MiB holds a whole group and the hot index pages."""
WAL_CHECKPOINT_PAGES = 10_000
"""Pages the WAL grows to before a commit copies them into the file (``PRAGMA
wal_autocheckpoint``; SQLite's default is 1,000). The copy runs inside the committing
append; fewer, larger ones write each hot index page once instead of ten times. At
30,000 tweets appended alone: 15,000 -> 18,600 and 12,400 -> 17,300 tweets/s, 55-62 ->
48 µs of CPU a tweet; the WAL file grows to about 40 MB."""
BUSY_TIMEOUT_MS = 5000
"""How long a connection waits for a lock another one holds."""
IDLE_CHECKPOINT = 1.0
"""Seconds without a write after which the writer copies the WAL into the database file
and truncates it (``wal_checkpoint(TRUNCATE)``). The automatic checkpoint copies but
never shrinks the file: a trickle of small commits (a demo, a quiet rule) would leave a
WAL of tens of MB beside a database of a few hundred KB."""
CHECKPOINT_EVERY = 5.0
"""Seconds after which the writer truncates the WAL even while writes keep coming, at the
first moment no job waits: a steady trickle is never idle for long. Under load the
automatic checkpoint copies as much in between, so this costs little."""
MMAP_BYTES = 256 * 2**20
"""Reads of the database file through a memory map (``PRAGMA mmap_size``): the
id lookups of each append and the readers' pages, without a copy a page."""


class SQLiteStore:
    """A :class:`relay.store.Store` on one SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        readers: int = 3,
        query_readers: int = 2,
        writer: bool = True,
        idle_checkpoint: float = IDLE_CHECKPOINT,
        checkpoint_every: float = CHECKPOINT_EVERY,
    ) -> None:
        self.path = str(path)
        self.idle_checkpoint = idle_checkpoint
        self.checkpoint_every = checkpoint_every
        self._wal_dirty = False
        """Commits since the last checkpoint that truncated the WAL."""
        self._checkpointed_at = time.monotonic()
        self.epoch = ""
        self.is_writer = writer
        """Whether this store writes (``claim_writer`` has nothing more to do for SQLite)."""
        self.holder = describe_self()
        self.fenced = asyncio.Event()
        """Never set for SQLite: the file lock cannot be taken away from a live process."""
        self._lock = WriterLock(self.path) if writer and self.path != ":memory:" else None
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="store-read")
        self._query_readers = ThreadPoolExecutor(query_readers, thread_name_prefix="store-query")
        self._writer: threading.Thread | None = None
        self._seq = Seq()
        self.commits = 0
        self.schema_version = 0
        self.search_indexed = 0
        """The highest seq the full-text index holds (the writer's count; see
        :mod:`relay.store.sqlite.search`)."""
        self._indexed_at = 0.0
        self._index_failed = False
        self.on_damage: Callable[[StoreCorrupt], None] | None = None
        """Called on the event loop each time a read or commit finds the file damaged."""
        self.damage_found = 0

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        query_readers: int = 2,
        writer: bool = True,
        idle_checkpoint: float = IDLE_CHECKPOINT,
        checkpoint_every: float = CHECKPOINT_EVERY,
    ) -> SQLiteStore:
        """Open (and as the writer, create and migrate) the file.

        The writer takes the file's writer lock first, before anything is written;
        a reader never writes and raises :class:`StoreNotReady` while the file or
        its schema is not there yet.
        """
        store = cls(
            path,
            query_readers=query_readers,
            writer=writer,
            idle_checkpoint=idle_checkpoint,
            checkpoint_every=checkpoint_every,
        )
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, store._open_sync if writer else store._open_reader)
        return store

    async def claim_writer(self, on_standby: Callable[[str], None]) -> None:
        """Nothing to wait for: the writer lock was taken at open (or refused there)."""
        if not self.is_writer:
            raise StoreError(f"{self.path} was opened to read only")

    def _open_reader(self) -> None:
        if self.path == ":memory:":
            raise StoreError("an in-memory database cannot be shared with a serving process")
        if not Path(self.path).exists():
            raise StoreNotReady(
                f"no database at {self.path} yet: start `relay ingest` or run `relay migrate`"
            )
        conn = self._connect()
        try:
            check_schema(conn)
            self.schema_version = conn.execute("PRAGMA user_version").fetchone()[0]
            self.epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
            check_head(conn)
        except StoreNotReady as exc:
            raise StoreNotReady(f"{self.path}: {exc}") from None
        except (sqlite3.DatabaseError, StoreError, TypeError) as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        finally:
            conn.close()

    def _open_sync(self) -> None:
        if self.path != ":memory:" and not Path(self.path).parent.exists():
            raise StoreError(f"database folder does not exist: {Path(self.path).parent}")
        if self._lock is not None:
            self._lock.acquire()  # before any write: a second writer changes nothing
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            migrate(conn)  # first: it refuses another application's file before any write
            self.schema_version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute("PRAGMA journal_mode = WAL")
            epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
            if epoch is None or not isinstance(epoch[0], str):
                raise StoreError("not a tweet-relay database (it has no epoch)")
            self.epoch = epoch[0]
            given, head = check_head(conn)
            self._seq.next = max(given, head) + 1
            self.search_indexed = indexed_seq(conn)
            conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB:d}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES:d}")
        except (sqlite3.DatabaseError, StoreError) as exc:
            if conn is not None:
                conn.close()
            if self._lock is not None:
                self._lock.abandon()
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="store-writer", daemon=True
        )
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        # NORMAL in WAL mode survives a crash of the process (kill -9); only an OS
        # crash can lose the last commits, and the source redelivers those.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES:d}")
        return conn

    # -- writing -------------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        while True:
            # Search catches up when no append waits, and at least every SEARCH_LAG
            # seconds while they keep coming.
            if self._jobs.empty() or time.monotonic() - self._indexed_at >= SEARCH_LAG:
                self._index(conn)
            due = time.monotonic() - self._checkpointed_at >= self.checkpoint_every
            if self._wal_dirty and self._jobs.empty() and due:
                self._checkpoint(conn)
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
            if flushes or stop:
                self._index(conn)
                for flush in flushes:
                    if flush.future.set_running_or_notify_cancel():
                        flush.future.set_result(self.search_indexed)
            if stop:
                conn.close()
                return

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database file and truncate it, if no reader holds an
        older snapshot now; else try again at the next idle moment. Never waits: the
        writer must not stall behind a long query."""
        self._checkpointed_at = time.monotonic()
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
            self.search_indexed = index_committed(conn, self.search_indexed, self._seq.next - 1)
        except sqlite3.Error as exc:
            if not self._index_failed:  # once per run of failures: it retries every step
                log.warning("full-text indexing failed, search misses new tweets: %s", exc)
            self._index_failed = True
            return
        if self._index_failed:
            log.info("full-text indexing works again")
        self._index_failed = False

    async def _search_ready(self) -> None:
        """In the writing process, a search sees every tweet committed before it: the
        writer indexes now rather than within SEARCH_LAG. Waiting stops after SEARCH_LAG
        (a long commit ahead of it): the search then runs on what is indexed."""
        if self._writer is None or self.search_indexed >= self._seq.next - 1:
            return
        with contextlib.suppress(TimeoutError, StoreError):
            await asyncio.wait_for(asyncio.shield(self.search_caught_up()), SEARCH_LAG)

    async def search_caught_up(self) -> int:
        """Return once every tweet committed before this call is searchable; the mark.

        The writer indexes by itself within :data:`SEARCH_LAG` seconds of a commit;
        this asks it to do so now (tests, tools, a clean shutdown).
        """
        if self._writer is None or not self._writer.is_alive():
            raise StoreError("store is closed" if self.is_writer else "store opened to read only")
        request = _IndexNow()
        self._jobs.put(request)
        return await asyncio.wrap_future(request.future)

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
        next_seq = self._seq.next
        conn.execute("BEGIN IMMEDIATE")
        try:
            try:
                results = [run(conn) for run in runs]
            except DATA_ERRORS as exc:
                raise _DataError(str(exc)) from exc
            conn.execute("COMMIT")
        except BaseException:
            self._seq.next = next_seq
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self.commits += 1
        return results

    async def _write(
        self,
        run: Callable[[sqlite3.Connection], T],
        careful: Callable[[sqlite3.Connection], T] | None = None,
    ) -> T:
        if self._writer is None or not self._writer.is_alive():
            raise StoreError("store is closed" if self.is_writer else "store opened to read only")
        job = _Job(run, careful)
        self._jobs.put(job)
        try:
            result: T = await asyncio.wrap_future(job.future)
        except StoreCorrupt as exc:
            self._damaged(exc)
            raise
        return result

    async def append(
        self, tweets: Sequence[Tweet], users: Sequence[dict[str, Any]], received_at: float
    ) -> AppendResult:
        received = time_from_unix(received_at)
        return await self._write(
            lambda conn: append_rows(
                conn, self._seq, tweets, users, received, received_at=received_at
            ),
            lambda conn: append_rows(
                conn, self._seq, tweets, users, received, careful=True, received_at=received_at
            ),
        )

    async def trim(self, *, through_seq: int, received_before: float | None, limit: int) -> Trimmed:
        before = time_from_unix(received_before) if received_before is not None else None
        return await self._write(
            lambda conn: trim_oldest(
                conn,
                through_seq=through_seq,
                received_before=before,
                limit=limit,
                indexed=self.search_indexed,
            )
        )

    async def apply_deletions(self, limit: int) -> list[Deleted]:
        now = time_from_unix(time.time())
        return await self._write(lambda conn: apply_pending(conn, limit, self.search_indexed, now))

    async def deletions_after(self, after: int, limit: int) -> list[Deleted]:
        return await self._read(lambda conn: deletions_after(conn, after, limit))

    async def last_deletion(self) -> int:
        return await self._read(last_deletion)

    async def checkpoint(self) -> None:
        if self.path != ":memory:":
            await asyncio.to_thread(checkpoint, self.path)

    async def set_state(self, key: str, value: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO source_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    # -- reading -------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            sqlite_query.register_functions(conn)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._readers, lambda: _checked(self.path, run, self._reader())
            )
        except StoreCorrupt as exc:
            self._damaged(exc)
            raise

    async def _query(self, run: Callable[[sqlite3.Connection], T], timeout: float | None) -> T:
        """An object API read: on its own pool, stopped ``timeout`` seconds after now.

        The clock starts here, not when a reader picks the query up: the wait counts.
        """
        loop = asyncio.get_running_loop()
        accepted = time.monotonic()

        def limited(conn: sqlite3.Connection) -> T:
            return sqlite_query.limited(conn, run, timeout, accepted=accepted)

        try:
            return await loop.run_in_executor(
                self._query_readers, lambda: _checked(self.path, limited, self._reader())
            )
        except StoreCorrupt as exc:
            self._damaged(exc)
            raise

    def _damaged(self, exc: StoreCorrupt) -> None:
        """A read or a commit found the file damaged: count it, tell the relay."""
        self.damage_found += 1
        if self.on_damage is not None:
            self.on_damage(exc)

    async def head(self) -> int:
        path = self.path

        def run(conn: sqlite3.Connection) -> int:
            try:
                return newest_seq(conn)
            except StoreCorrupt as exc:
                raise StoreCorrupt(f"the store {path} is {exc}") from None

        return await self._read(run)

    async def read_after(
        self,
        channel: str,
        after: int,
        until: int,
        limit: int,
        *,
        max_bytes: int | None = None,
        conditions: Sequence[Condition] = (),
    ) -> list[StoredTweet]:
        columns = "seq, rules, CAST(object AS BLOB), lang, author_username, has_media, text"
        sql, params = sqlite_query.channel_range(channel, columns, after, until, conditions)
        # Two rows more than the page: the one the range ends at, and the one after it
        # (see _range_end).
        sql, params = sql + " ORDER BY seq LIMIT ?", (*params, limit + 2)
        path = self.path

        def run(conn: sqlite3.Connection) -> list[StoredTweet]:
            page: list[StoredTweet] = []
            size = 0
            previous = after
            # Rows come one at a time from the cursor: a byte budget stops the read early.
            rows = conn.execute(sql, params)
            for seq, rules, body, lang, author, has_media, text in rows:
                check_order(path, previous, seq)
                previous = seq
                if seq > until:
                    _range_end(path, seq, rows)
                    break
                if body is None:
                    raise _missing(path, channel, seq)
                encoded = _bytes(body)
                page.append(
                    StoredTweet(
                        seq=seq,
                        channels=(ALL_CHANNEL, *(RULE_PREFIX + key for key in orjson.loads(rules))),
                        body=encoded,
                        lang=lang,
                        author=author,
                        has_media=bool(has_media),
                        text=text,
                    )
                )
                size += len(encoded)
                if len(page) >= limit or (max_bytes is not None and size >= max_bytes):
                    break
            return page

        return await self._read(run)

    async def read_bodies(
        self,
        channel: str,
        after: int,
        until: int,
        limit: int,
        build: Callable[[list[StoredBody]], T],
        *,
        max_bytes: int | None = None,
        conditions: Sequence[Condition] = (),
    ) -> BodyPage[T]:
        # Two columns, and the rows kept as the cursor makes them: a catch-up page costs
        # a tuple, an int and one copy of the body a tweet (1.3 µs against 4.3-5.4 µs for
        # read_after's decoded rules and StoredTweet). CAST: the stored TEXT comes out as
        # the bytes the frame needs, without a decode and an encode in Python.
        sql, params = sqlite_query.channel_range(
            channel, "seq, CAST(object AS BLOB)", after, until, conditions
        )
        sql += " ORDER BY seq LIMIT ?"
        params = (*params, limit + 2)  # the row the range ends at and the one after it
        budget = max_bytes if max_bytes is not None else -1
        path = self.path

        def run(conn: sqlite3.Connection) -> BodyPage[T]:
            page: list[StoredBody] = []
            append = page.append
            size = 0
            cut = False
            previous = after
            rows = conn.execute(sql, params)
            for row in rows:  # a byte budget stops the read early
                seq = row[0]
                # In order, or the file is damaged: a read must never end early quietly.
                if seq <= previous:
                    check_order(path, previous, seq)
                previous = seq
                if seq > until:
                    _range_end(path, seq, rows)
                    break
                body = row[1]
                if body is None:
                    raise _missing(path, channel, seq)
                append(row)
                size += len(body)
                if size >= budget >= 0 or len(page) >= limit:
                    cut = True
                    break
            count = len(page)
            last = page[-1][0] if page else 0
            # Built here, in the reader thread: the loop only writes the result.
            return BodyPage(build(page), count, last, not cut)

        return await self._read(run)

    async def count_after(
        self, channel: str, after: int, until: int, *, cap: int | None = None
    ) -> int:
        inner, inner_params = sqlite_query.channel_count(channel, after, until)
        # Counting stops after cap + 1 rows: a subscribe from seq 0 never scans the store.
        limit = -1 if cap is None else cap + 1
        sql, params = f"SELECT count(*) FROM ({inner} LIMIT ?)", (*inner_params, limit)
        return await self._read(lambda conn: int(conn.execute(sql, params).fetchone()[0]))

    async def query(
        self, query: TweetQuery, *, timeout: float | None = None
    ) -> tuple[list[bytes], int]:
        count_sql, count_params = sqlite_query.count(query)
        select_sql, select_params = sqlite_query.select(query)
        if any(c.field == "text" and c.op == "search" for c in query.conditions):
            await self._search_ready()
        # Seq is unique, so a first sort key of seq orders the page alone: True ascending.
        first, descending = query.order_by[0]
        by_seq = (not descending) if first == "seq" else None

        def run(conn: sqlite3.Connection) -> tuple[list[bytes], int]:
            # One read transaction: the page and its count see the same commits.
            conn.execute("BEGIN")
            total = int(conn.execute(count_sql, count_params).fetchone()[0])
            page: list[int] = []
            found: dict[int, str | bytes] = {}
            if not query.count_only:
                page = [row[0] for row in conn.execute(select_sql, select_params)]
                if page:
                    found = dict(conn.execute(sqlite_query.objects(len(page)), page).fetchall())
            conn.execute("COMMIT")
            if by_seq is not None:  # sorted by seq: out of order is a damaged row
                for before, seq in itertools.pairwise(page if by_seq else page[::-1]):
                    check_order(self.path, before, seq)
            missing = [seq for seq in page if seq not in found]
            if missing:  # one snapshot: a seq the page listed and no row is damage
                raise _missing(self.path, "the query", missing[0])
            return [_bytes(found[seq]) for seq in page], total

        return await self._query(run, timeout)

    async def tweet(
        self, tweet_id: str, scope: Sequence[Condition] = (), *, timeout: float | None = None
    ) -> bytes | None:
        clause, params = sqlite_query.where(scope, per_row=True)
        sql = "SELECT CAST(object AS BLOB) FROM tweets WHERE id = ?" + clause.replace(
            " WHERE ", " AND ", 1
        )
        return await self._one(sql, [tweet_id, *params], timeout)

    async def user(
        self, user_id: str, scope: Sequence[Condition] = (), *, timeout: float | None = None
    ) -> bytes | None:
        sql = "SELECT CAST(object AS BLOB) FROM users WHERE id = ?"
        params: list[Any] = [user_id]
        if scope:
            clause, scope_params = sqlite_query.where(scope, per_row=True)
            sql += " AND EXISTS (SELECT 1 FROM tweets" + clause + " AND author_id = users.id)"
            params.extend(scope_params)
        return await self._one(sql, params, timeout)

    async def _one(self, sql: str, params: list[Any], timeout: float | None) -> bytes | None:
        def run(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(sql, params).fetchone()
            return _bytes(row[0]) if row else None

        return await self._query(run, timeout)

    async def oldest_seq(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT min(seq) FROM tweets").fetchone()[0] or 0)

        return await self._read(run)

    async def stats(self) -> StoreStats:
        def run(conn: sqlite3.Connection) -> tuple[int, str | None]:
            row = conn.execute("SELECT seq, received_at FROM tweets ORDER BY seq LIMIT 1")
            found = row.fetchone()
            return (int(found[0]), found[1]) if found else (0, None)

        oldest_seq, received = await self._read(run)
        sizes = [0, 0]
        for number, name in enumerate((self.path, self.path + "-wal")):
            with contextlib.suppress(OSError):  # no WAL file after a clean close
                sizes[number] = os.stat(name).st_size
        database, wal = sizes
        return StoreStats(
            database + wal, oldest_seq, parse_time(received) if received else None, wal_bytes=wal
        )

    async def rule_keys(self) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT tag FROM rules ORDER BY tag").fetchall()
            return [row[0] for row in rows]

        return await self._read(run)

    async def highest_tweet_id(self, rule_key: str | None = None) -> str | None:
        # Ids are decimal strings of growing length: compare by length, then text.
        sql = "SELECT id FROM tweets"
        params: tuple[str, ...] = ()
        if rule_key is not None:
            sql += " WHERE seq IN (SELECT seq FROM tweet_rules WHERE tag = ?)"
            params = (rule_key,)
        sql += " ORDER BY length(id) DESC, id DESC LIMIT 1"

        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(sql, params).fetchone()
            return row[0] if row else None

        return await self._read(run)

    async def get_state(self, key: str) -> str | None:
        return await self._one_text("SELECT value FROM source_state WHERE key = ?", key)

    async def current_epoch(self) -> str:
        epoch = await self._one_text("SELECT value FROM meta WHERE key = ?", "epoch")
        if epoch is None:
            raise StoreError(f"{self.path} lost its epoch: not a tweet-relay database now")
        return epoch

    async def _one_text(self, sql: str, value: str) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(sql, (value,)).fetchone()
            return str(row[0]) if row else None

        return await self._read(run)

    async def close(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._jobs.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
        self._readers.shutdown(wait=True)
        self._query_readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        if self._lock is not None:
            self._lock.release()
