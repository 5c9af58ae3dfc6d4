"""The default store: one SQLite file in WAL mode, through sqlite-utils.

SQLite stays off the event loop. All writes go through one writer thread
(:mod:`relay.store.sqlite.writer`: group commit). Reads run on two small thread pools,
each thread with its own read-only connection; WAL lets them read while the writer
writes. The object API's queries have their own pool and a time limit, so that
catch-ups, ``/v1/info`` and ``/readyz`` never wait behind a heavy query.

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
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from relay.core.query import Condition, TweetQuery
from relay.core.rule_set import Channels
from relay.core.times import time_from_unix
from relay.core.tweets import Tweet
from relay.errors import StoreCorrupt, StoreError
from relay.store import Store
from relay.store.sqlite import query as sqlite_query
from relay.store.sqlite import read, receive_order
from relay.store.sqlite.conn import READER_MMAP_BYTES, connect
from relay.store.sqlite.damage import check_order, checked, missing
from relay.store.sqlite.deletions import apply_pending, deletions_after, last_deletion
from relay.store.sqlite.file_lock import WriterLock, describe_self
from relay.store.sqlite.opening import check_folder, check_readable, open_for_writing
from relay.store.sqlite.retention import checkpoint, trim_oldest
from relay.store.sqlite.write import append_rows, restore_rows
from relay.store.sqlite.writer import (
    CHECKPOINT_EVERY,
    IDLE_CHECKPOINT,
    WriterThread,
)
from relay.store.types import (
    AppendResult,
    BodyPage,
    Deleted,
    Received,
    RestoreBatch,
    StoredBody,
    StoredTweet,
    StoreStats,
    Trimmed,
)

T = TypeVar("T")


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
        self.epoch = ""
        self.holder = describe_self()
        self.schema_version = 0
        self.on_damage: Callable[[StoreCorrupt], None] | None = None
        """Called on the event loop each time a read or commit finds the file damaged."""
        self._writes = writer
        self._idle_checkpoint = idle_checkpoint
        self._checkpoint_every = checkpoint_every
        self._lock = WriterLock(self.path) if writer and self.path != ":memory:" else None
        self._writer: WriterThread | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="store-read")
        self._pages = ThreadPoolExecutor(1, thread_name_prefix="store-pages")
        """Catch-up pages (:meth:`read_bodies`), every one read by the same thread: one
        connection whose memory map and page cache stay warm (spread over the readers,
        each of their maps faulted the same file pages in again: 0.4-0.8 µs a row)."""
        self._query_readers = ThreadPoolExecutor(query_readers, thread_name_prefix="store-query")

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
        await loop.run_in_executor(None, store._open_writer if writer else store._open_reader)
        return store

    @property
    def commits(self) -> int:
        """Write transactions committed so far."""
        return self._writer.commits if self._writer is not None else 0

    @property
    def search_indexed(self) -> int:
        """The highest seq the full-text index holds (the writer's count; see
        :mod:`relay.store.sqlite.search`)."""
        return self._writer.search_indexed if self._writer is not None else 0

    async def claim_writer(self, on_standby: Callable[[str], None] | None = None) -> None:
        """Nothing to wait for: the writer lock was taken at open (or refused there)."""
        if not self._writes:
            raise StoreError(f"{self.path} was opened to read only")

    def _open_reader(self) -> None:
        self.schema_version, self.epoch = check_readable(self.path)

    def _open_writer(self) -> None:
        check_folder(self.path)
        if self._lock is not None:
            self._lock.acquire()  # before any write: a second writer changes nothing
        try:
            start = open_for_writing(self.path)
        except StoreError:
            if self._lock is not None:
                self._lock.abandon()
            raise
        self.schema_version, self.epoch = start.schema_version, start.epoch
        self._writer = WriterThread(
            self.path,
            start.conn,
            next_seq=start.next_seq,
            search_indexed=start.search_indexed,
            idle_checkpoint=self._idle_checkpoint,
            checkpoint_every=self._checkpoint_every,
        )

    # -- the Writer role -------------------------------------------------------

    async def _write(
        self,
        run: Callable[[sqlite3.Connection], T],
        careful: Callable[[sqlite3.Connection], T] | None = None,
    ) -> T:
        if self._writer is None:
            raise StoreError("store opened to read only")
        try:
            return await self._writer.write(run, careful)
        except StoreCorrupt as exc:
            self._damaged(exc)
            raise

    async def append(
        self,
        tweets: Sequence[Tweet],
        users: Sequence[dict[str, Any]],
        received_at: float | Received,
    ) -> AppendResult:
        if self._writer is None:
            raise StoreError("store opened to read only")
        received = Received.of(received_at, len(tweets), len(users))
        seq = self._writer.seq
        return await self._write(
            lambda conn: append_rows(conn, seq, tweets, users, received),
            lambda conn: append_rows(conn, seq, tweets, users, received, careful=True),
        )

    async def restore(self, batch: RestoreBatch) -> int:
        """Store a batch of :meth:`relay.store.Admin.restore` under its own seqs."""
        if self._writer is None:
            raise StoreError("store opened to read only")
        seq = self._writer.seq
        return await self._write(lambda conn: restore_rows(conn, seq, batch))

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

    async def checkpoint(self) -> None:
        if self.path != ":memory:":
            await asyncio.to_thread(checkpoint, self.path)

    async def get_state(self, key: str) -> str | None:
        return await self._read(read.one_text("SELECT value FROM source_state WHERE key = ?", key))

    async def set_state(self, key: str, value: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO source_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    async def search_caught_up(self) -> int:
        """Return once every tweet committed before this call is searchable; the mark.

        The writer indexes by itself within
        :data:`~relay.store.sqlite.search.SEARCH_LAG` seconds of a commit; this asks it
        to do so now (tests, tools, a clean shutdown).
        """
        if self._writer is None:
            raise StoreError("store opened to read only")
        return await self._writer.search_caught_up()

    # -- reading ---------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, mmap_bytes=READER_MMAP_BYTES)
            conn.execute("PRAGMA query_only = 1")
            sqlite_query.register_functions(conn)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(
        self, run: Callable[[sqlite3.Connection], T], on: ThreadPoolExecutor | None = None
    ) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                on or self._readers, lambda: checked(self.path, run, self._reader())
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
                self._query_readers, lambda: checked(self.path, limited, self._reader())
            )
        except StoreCorrupt as exc:
            self._damaged(exc)
            raise

    def _damaged(self, exc: StoreCorrupt) -> None:
        """A read or a commit found the file damaged: tell the relay."""
        if self.on_damage is not None:
            self.on_damage(exc)

    # -- the Log role ----------------------------------------------------------

    async def head(self) -> int:
        return await self._read(read.head(self.path))

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
        return await self._read(
            read.tweets_after(self.path, channel, after, until, limit, max_bytes, conditions)
        )

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
        return await self._read(
            read.bodies_after(
                self.path, channel, after, until, limit, build, max_bytes, conditions
            ),
            self._pages,
        )

    async def count_after(
        self, channel: str, after: int, until: int, *, cap: int | None = None
    ) -> int:
        return await self._read(read.count_after(channel, after, until, cap))

    async def oldest_seq(self) -> int:
        return await self._read(read.oldest_seq)

    async def seq_at(self, moment: float) -> int:
        return await self._read(receive_order.seq_at(moment))

    async def current_epoch(self) -> str:
        epoch = await self._read(read.one_text("SELECT value FROM meta WHERE key = ?", "epoch"))
        if epoch is None:
            raise StoreError(f"{self.path} lost its epoch: not a tweet-relay database now")
        return epoch

    async def known_channels(self) -> Channels:
        return await self._read(read.known_channels)

    async def deletions_after(self, after: int, limit: int) -> list[Deleted]:
        return await self._read(lambda conn: deletions_after(conn, after, limit))

    async def last_deletion(self) -> int:
        return await self._read(last_deletion)

    # -- the Catalog role ------------------------------------------------------

    async def query(
        self, query: TweetQuery, *, timeout: float | None = None
    ) -> tuple[list[bytes], int]:
        count_sql, count_params = sqlite_query.count(query)
        select_sql, select_params = sqlite_query.select(query)
        if self._writer is not None and any(
            c.field == "text" and c.op == "search" for c in query.conditions
        ):
            await self._writer.search_ready()
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
            lost = [seq for seq in page if seq not in found]
            if lost:  # one snapshot: a seq the page listed and no row is damage
                raise missing(self.path, "the query", lost[0])
            return [read.as_bytes(found[seq]) for seq in page], total

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
            return read.as_bytes(row[0]) if row else None

        return await self._query(run, timeout)

    async def rule_keys(self) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT tag FROM rules ORDER BY tag").fetchall()
            return [row[0] for row in rows]

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
        oldest_at = read.parse_time(received) if received else None
        return StoreStats(database + wal, oldest_seq, oldest_at, wal_bytes=wal)

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

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.stop()
        self._readers.shutdown(wait=True)
        self._pages.shutdown(wait=True)
        self._query_readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        if self._lock is not None:
            self._lock.release()


def _is_a_store(store: SQLiteStore) -> Store:
    return store  # mypy checks here that SQLiteStore keeps every role
