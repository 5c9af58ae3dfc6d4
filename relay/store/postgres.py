"""The store on PostgreSQL (``DATABASE_URL``), for processes on machines that share no disk.

Reads go through two connection pools: one for the stream side (catch-ups, counts,
``/v1/info``, ``/readyz``), one for the object API's queries with their time limit
(``statement_timeout``), so a heavy query never holds up a catch-up. Writes go through
one writer task on one connection: it takes every job waiting and commits them in one
transaction (group commit), tweets sent with COPY after one look-up of the ids already
stored. It keeps the next ``seq`` in memory, read from ``max(seq)`` when it becomes the
writer and after every reconnect, and stores each tweet's served object with its seq
(a ``json`` column, kept byte for byte): reads hand the stored bytes to clients.

One active writer: a lease, not an advisory lock. A session advisory lock is held for
as long as its connection lives, and a PaaS machine that dies does not close its
sockets: the lock would stay taken until TCP keepalive gives up (hours by default); and
transaction-mode connection poolers (PgBouncer) hand a session's connection to others
between transactions, which breaks session locks altogether. The lease is the row
``writer_lease`` (holder, generation, expires_at on the database's clock, ``now()``):
a process claims it when it has expired (generation + 1) and renews it every third of
its time to live; every write transaction first updates that row where the holder and
generation are still its own. The update takes the row's lock until commit, so a claim
and a write transaction never overlap: once another process has claimed the lease,
every later write of the old one finds a new generation and fails with
:class:`~relay.errors.WriterFenced`; nothing it sends after that is committed. (A
writer whose lease merely expired, unclaimed, still holds the generation and goes on.)
A frozen writer (SIGSTOP) inside a transaction is ended by the server after
``idle_in_transaction_session_timeout``, which frees the row for the standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from relay.errors import QueryTimeout, StoreError, WriterFenced
from relay.query import Condition, TweetQuery
from relay.store import AppendResult, StoredTweet, postgres_query
from relay.store.postgres_conn import (
    FIRST_WAIT,
    LONGEST_WAIT,
    configure_types,
    connect,
    conninfo,
    describe,
    redact,
)
from relay.store.postgres_schema import check_version, migrate_connection, schema_version
from relay.store.postgres_write import DATA_ERRORS, Batch, append_careful, append_fast
from relay.tweets import ALL_CHANNEL, RULE_PREFIX, Tweet, time_from_unix

log = logging.getLogger(__name__)
T = TypeVar("T")
Cursor = psycopg.AsyncCursor[Any]

TRANSIENT_STATES = ("08", "57P")
"""Connection exceptions and operator intervention (shutdown, restart): retried."""


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def migrate(url: str, *, target: int | None = None, wait: bool = True) -> int:
    """Create or update the schema of the database at ``url``; the schema version.

    Safe to run from several processes at once (an advisory lock orders them)."""
    conn = await connect(url, wait=wait)
    try:
        return await migrate_connection(conn, target=target)
    except psycopg.Error as exc:
        raise StoreError(f"cannot migrate {describe(url)}: {redact(str(exc), url)}") from None
    finally:
        await conn.close()


@dataclass
class _Job:
    run: Callable[[Cursor], Awaitable[Any]]
    careful: Callable[[Cursor], Awaitable[Any]] | None = None
    """The same work, leaving out what cannot be stored: run when ``run`` fails on data."""
    plain: bool = False
    """Run alone, outside a write transaction and without the lease (claims)."""
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _DataError(Exception):
    """A job failed on a value it holds (its ``__cause__``), not because of the store."""


class _Lost(Exception):
    """The connection went away (server restarted, network cut): reconnect and retry."""


class PostgresStore:
    """A :class:`relay.store.Store` on PostgreSQL, with a writer lease."""

    def __init__(
        self, url: str, *, writer: bool, query_readers: int, lease_ttl: float, holder: str
    ) -> None:
        self.url = url
        self.where = describe(url)
        self.epoch = ""
        self.holder = holder
        self.lease_ttl = lease_ttl
        self.fenced = asyncio.Event()
        self.commits = 0
        self._writer_mode = writer
        self._query_readers = query_readers
        self._generation: int | None = None
        self._fenced_error: WriterFenced | None = None
        self.next_seq = 1
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._pool: AsyncConnectionPool | None = None
        self._query_pool: AsyncConnectionPool | None = None

    @property
    def is_writer(self) -> bool:
        """Whether this process holds the writer lease now (as far as it knows)."""
        return self._generation is not None and not self.fenced.is_set()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        writer: bool,
        query_readers: int = 2,
        readers: int = 3,
        lease_ttl: float = 15.0,
        holder: str | None = None,
        wait: bool = True,
    ) -> PostgresStore:
        """Connect (waiting for the server unless ``wait`` is False), migrate when
        ``writer``, and read the epoch. Writes need :meth:`claim_writer` first."""
        store = cls(
            url,
            writer=writer,
            query_readers=query_readers,
            lease_ttl=lease_ttl,
            holder=holder or default_holder(),
        )
        await store._open(readers, wait)
        return store

    async def _open(self, readers: int, wait: bool) -> None:
        conn = await connect(self.url, wait=wait)
        try:
            if self._writer_mode:
                await migrate_connection(conn)
            else:
                version = await schema_version(conn)
                if not version:
                    raise StoreError(f"no relay schema in {self.where}: run `relay migrate`")
                check_version(version)
            cur = await conn.execute("SELECT value FROM meta WHERE key = 'epoch'")
            row = await cur.fetchone()
            if row is None:
                raise StoreError("not a tweet-relay database (it has no epoch)")
            self.epoch = str(row[0])
        except psycopg.Error as exc:
            await conn.close()
            raise StoreError(
                f"cannot open database {self.where}: {redact(str(exc), self.url)}"
            ) from None
        except BaseException:
            await conn.close()
            raise
        if self._writer_mode:
            await self._writer_session(conn)
            self._conn = conn
            self._writer_task = asyncio.create_task(self._write_loop(), name="store-writer")
        else:
            await conn.close()
        info = conninfo(self.url)
        self._pool = AsyncConnectionPool(
            info,
            min_size=1,
            max_size=readers,
            open=False,
            configure=self._configure_reader,
            check=AsyncConnectionPool.check_connection,
            name="store-read",
        )
        self._query_pool = AsyncConnectionPool(
            info,
            min_size=1,
            max_size=self._query_readers,
            open=False,
            configure=self._configure_reader,
            check=AsyncConnectionPool.check_connection,
            name="store-query",
        )
        await self._pool.open(wait=False)
        await self._query_pool.open(wait=False)

    @staticmethod
    async def _configure_reader(conn: psycopg.AsyncConnection[Any]) -> None:
        configure_types(conn)
        await conn.set_autocommit(True)

    async def _writer_session(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # A writer frozen in a transaction holds the lease row's lock: the server ends
        # its session after this long, so a standby's claim is not held up for long.
        idle_ms = max(1000, int(self.lease_ttl * 1000))
        await conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false), "
            "set_config('tcp_keepalives_idle', '5', false), "
            "set_config('tcp_keepalives_interval', '2', false), "
            "set_config('tcp_keepalives_count', '3', false)",
            [str(idle_ms)],
        )

    # -- the writer lease ----------------------------------------------------

    async def claim_writer(self, on_standby: Callable[[str], None] | None = None) -> None:
        """Return once this process holds the writer lease.

        While another holder's lease is live, ``on_standby`` is called with one line
        (again only when the holder changes) and the claim is retried every third
        of the lease's time to live.
        """
        if not self._writer_mode:
            raise StoreError("opened as a reader: it cannot become the writer")
        told: str | None = None
        while True:
            claimed = await self._job(self._try_claim)
            if claimed is not None:
                break
            holder, until = await self._job(self._lease_row)
            if holder != told and on_standby is not None:
                on_standby(f"standing by: the writer lease is held by {holder} until {until}")
            told = holder
            await asyncio.sleep(self.lease_ttl / 3)
        log.info("writer lease claimed by %s (generation %d)", self.holder, self._generation)
        self._renew_task = asyncio.create_task(self._renew(), name="store-lease")

    async def _try_claim(self, cur: Cursor) -> int | None:
        await cur.execute(
            "UPDATE writer_lease SET holder = %s, generation = generation + 1, "
            "expires_at = now() + make_interval(secs => %s) "
            "WHERE name = 'writer' AND expires_at <= now() RETURNING generation",
            [self.holder, self.lease_ttl],
        )
        row = await cur.fetchone()
        if row is None:
            return None
        self._generation = int(row[0])
        self.fenced.clear()
        self._fenced_error = None
        await self._read_next_seq(cur)
        return self._generation

    async def _read_next_seq(self, cur: Cursor) -> None:
        await cur.execute("SELECT coalesce(max(seq), 0) FROM tweets")
        row = await cur.fetchone()
        assert row is not None
        self.next_seq = int(row[0]) + 1

    @staticmethod
    async def _lease_row(cur: Cursor) -> tuple[str, str]:
        await cur.execute(
            "SELECT holder, to_char(expires_at AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM writer_lease WHERE name = 'writer'"
        )
        row = await cur.fetchone()
        return (str(row[0]), str(row[1])) if row else ("nobody", "never")

    async def _check_lease(self, cur: Cursor) -> None:
        """Inside a write transaction: extend the lease if it is still ours, or fence."""
        if self._fenced_error is not None:
            raise self._fenced_error
        if self._generation is None:
            raise StoreError("not the active writer")
        await cur.execute(
            "UPDATE writer_lease SET expires_at = now() + make_interval(secs => %s) "
            "WHERE name = 'writer' AND holder = %s AND generation = %s RETURNING 1",
            [self.lease_ttl, self.holder, self._generation],
        )
        if await cur.fetchone() is not None:
            return
        holder, _ = await self._lease_row(cur)
        self._fenced_error = WriterFenced(
            f"the writer lease was taken over by {holder}: this process no longer writes"
        )
        self.fenced.set()
        log.error("%s", self._fenced_error)
        raise self._fenced_error

    async def _renew(self) -> None:
        while not self.fenced.is_set():
            await asyncio.sleep(self.lease_ttl / 3)
            with contextlib.suppress(StoreError):  # fenced: the event says so
                await self._write(self._nothing)

    @staticmethod
    async def _nothing(cur: Cursor) -> None:
        return None

    # -- writing -------------------------------------------------------------

    async def _job(self, run: Callable[[Cursor], Awaitable[T]]) -> T:
        """Run ``run`` on the writer's connection outside a write transaction (claims)."""
        result: T = await self._submit(_Job(run, plain=True))
        return result

    async def _write(
        self,
        run: Callable[[Cursor], Awaitable[T]],
        careful: Callable[[Cursor], Awaitable[T]] | None = None,
    ) -> T:
        """Run ``run`` in a write transaction (group-committed with others)."""
        if self._fenced_error is not None:
            raise self._fenced_error
        if self._generation is None:
            raise StoreError("not the active writer")
        result: T = await self._submit(_Job(run, careful))
        return result

    async def _submit(self, job: _Job) -> Any:
        if self._writer_task is None or self._writer_task.done():
            raise StoreError("store is closed" if self._writer_mode else "opened as a reader")
        await self._jobs.put(job)
        return await job.future

    async def _write_loop(self) -> None:
        while True:
            jobs = [await self._jobs.get()]
            while not self._jobs.empty():  # group commit: take whatever else is waiting
                jobs.append(self._jobs.get_nowait())
            stop = any(job is None for job in jobs)
            # A job whose caller gave up (its future cancelled) is not run.
            live = [job for job in jobs if job is not None and not job.future.done()]
            for job in live:
                if job.plain:
                    await self._with_retry([job], self._run_plain)
            writes = [job for job in live if not job.plain]
            if writes:
                await self._with_retry(writes, self._commit)
            if stop:
                if self._conn is not None:
                    await self._conn.close()
                return

    async def _with_retry(
        self, jobs: list[_Job], run: Callable[[list[_Job]], Awaitable[None]]
    ) -> None:
        """``run(jobs)``; when the connection is lost, reconnect and run again what is
        left. A commit whose outcome is unknown (the server went away during COMMIT) is
        run again too: its tweets are then duplicates by id, stored once, left out of
        the result and so not published; followers fill them from the store."""
        delay = FIRST_WAIT
        while jobs:
            try:
                await run(jobs)
                return
            except _Lost as exc:
                jobs = [job for job in jobs if not job.future.done()]
                log.warning(
                    "lost PostgreSQL at %s while writing: %s; retrying in %g s",
                    self.where,
                    redact(str(exc.__cause__), self.url),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, LONGEST_WAIT)
                try:
                    await self._reconnect()
                except StoreError as error:  # the URL stopped working for good
                    for job in jobs:
                        _settle(job, error=error)
                    return
                except psycopg.Error:
                    continue

    async def _reconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        conn = await connect(self.url, wait=True)
        await self._writer_session(conn)
        self._conn = conn
        if self._generation is not None:
            async with conn.cursor() as cur:
                await self._read_next_seq(cur)

    def _lost(self, exc: BaseException) -> bool:
        if not isinstance(exc, psycopg.OperationalError):
            return False
        conn = self._conn
        state = exc.sqlstate or ""
        return conn is None or conn.closed or conn.broken or state.startswith(TRANSIENT_STATES)

    async def _run_plain(self, jobs: list[_Job]) -> None:
        (job,) = jobs
        assert self._conn is not None
        try:
            async with self._conn.cursor() as cur:
                result = await job.run(cur)
        except Exception as exc:
            if self._lost(exc):
                raise _Lost() from exc
            _settle(job, error=_store_error(exc, self.url))
            return
        _settle(job, result)

    async def _commit(self, jobs: list[_Job]) -> None:
        """Commit every job in one transaction. When a job fails on its data, the group
        is run again a job at a time, and a failing append once more a tweet at a time,
        so that only what cannot be stored is left out. Raises only :class:`_Lost`."""
        try:
            results = await self._transaction([job.run for job in jobs])
        except _DataError as exc:
            log.debug("a commit of %d jobs failed on its data (%s): one at a time", len(jobs), exc)
            await self._commit_each(jobs)
            return
        except _Lost:
            raise
        except Exception as exc:
            for job in jobs:
                _settle(job, error=_store_error(exc, self.url))
            return
        for job, result in zip(jobs, results, strict=True):
            _settle(job, result)

    async def _commit_each(self, jobs: list[_Job]) -> None:
        for number, job in enumerate(jobs):
            try:
                try:
                    (result,) = await self._transaction([job.run])
                except _DataError:
                    if job.careful is None:
                        raise
                    (result,) = await self._transaction([job.careful])
            except _DataError as exc:
                _settle(job, error=StoreError(f"cannot store: {exc.__cause__}"))
                continue
            except _Lost:
                raise
            except Exception as exc:  # the store itself failed: nothing more goes in
                for failed in jobs[number:]:
                    _settle(failed, error=_store_error(exc, self.url))
                return
            _settle(job, result)

    async def _transaction(self, runs: list[Callable[[Cursor], Awaitable[Any]]]) -> list[Any]:
        """Run ``runs`` in one transaction that first checks and extends the lease; all
        or nothing, ``_next_seq`` included. Raises :class:`_DataError` when a run failed
        on its data, :class:`_Lost` when the connection went away, else what failed."""
        next_seq = self.next_seq
        conn = self._conn
        try:
            if conn is None:
                raise psycopg.OperationalError("not connected")
            async with conn.transaction(), conn.cursor() as cur:
                await self._check_lease(cur)
                try:
                    results = [await run(cur) for run in runs]
                except DATA_ERRORS as exc:
                    raise _DataError(str(exc)) from exc
        except BaseException as exc:
            self.next_seq = next_seq
            if self._lost(exc):
                raise _Lost() from exc
            raise
        self.commits += 1
        return results

    async def append(
        self, tweets: Sequence[Tweet], users: Sequence[dict[str, Any]], received_at: float
    ) -> AppendResult:
        batch = Batch(tweets, users, time_from_unix(received_at))
        return await self._write(
            lambda cur: append_fast(cur, self, batch),
            lambda cur: append_careful(cur, self, batch),
        )

    async def set_state(self, key: str, value: str) -> None:
        async def run(cur: Cursor) -> None:
            await cur.execute(
                "INSERT INTO source_state (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )

        await self._write(run)

    # -- reading -------------------------------------------------------------

    async def _read(self, run: Callable[[Cursor], Awaitable[T]]) -> T:
        assert self._pool is not None
        try:
            async with self._pool.connection(timeout=LONGEST_WAIT) as conn, conn.cursor() as cur:
                return await run(cur)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreError(f"cannot read {self.where}: {redact(str(exc), self.url)}") from None

    async def _query(self, run: Callable[[Cursor], Awaitable[T]], timeout: float | None) -> T:
        """An object API read: on its own pool, in one REPEATABLE READ snapshot, stopped
        ``timeout`` seconds after now (the wait for a connection counts)."""
        assert self._query_pool is not None
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        try:
            async with self._query_pool.connection(
                timeout=min(timeout if timeout is not None else 30.0, 30.0)
            ) as conn:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolTimeout()
                async with conn.transaction(), conn.cursor() as cur:
                    await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    if timeout is not None:
                        await cur.execute(
                            "SELECT set_config('statement_timeout', %s, true)",
                            [str(max(1, int(remaining * 1000)))],
                        )
                    return await run(cur)
        except PoolTimeout:
            raise QueryTimeout(
                f"the query waited longer than {timeout:g} s for a reader; ask again later"
            ) from None
        except pg_errors.QueryCanceled:
            raise QueryTimeout(
                f"the query ran longer than {timeout:g} s; narrow it (q, rule, since_seq)"
            ) from None
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot read {self.where}: {redact(str(exc), self.url)}") from None

    async def head(self) -> int:
        async def run(cur: Cursor) -> int:
            await cur.execute("SELECT coalesce(max(seq), 0) FROM tweets")
            row = await cur.fetchone()
            return int(row[0]) if row else 0

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
        columns = "seq, rules, object, lang, author_username, has_media, text"
        sql, params = postgres_query.channel_range(channel, columns, after, until, conditions)

        async def run(cur: Cursor) -> list[StoredTweet]:
            page: list[StoredTweet] = []
            size = 0
            await cur.execute((sql + " ORDER BY seq LIMIT %s").encode(), [*params, limit])
            async for seq, rules, body, lang, author, has_media, text in cur:
                page.append(
                    StoredTweet(
                        seq=seq,
                        channels=(ALL_CHANNEL, *(RULE_PREFIX + key for key in rules)),
                        body=body,
                        lang=lang,
                        author=author,
                        has_media=has_media,
                        text=text,
                    )
                )
                size += len(body)
                if max_bytes is not None and size >= max_bytes:
                    break
            return page

        return await self._read(run)

    async def count_after(
        self, channel: str, after: int, until: int, *, cap: int | None = None
    ) -> int:
        inner, params = postgres_query.channel_count(channel, after, until)
        # Counting stops after cap + 1 rows: a subscribe from seq 0 never scans the store.
        sql = f"SELECT count(*) FROM ({inner} LIMIT %s) AS counted"
        limit = None if cap is None else cap + 1
        return await self._read(lambda cur: _one_int(cur, sql, [*params, limit]))

    async def query(
        self, query: TweetQuery, *, timeout: float | None = None
    ) -> tuple[list[bytes], int]:
        count_sql, count_params = postgres_query.count(query)
        select_sql, select_params = postgres_query.select(query)

        async def run(cur: Cursor) -> tuple[list[bytes], int]:
            total = await _one_int(cur, count_sql, count_params)
            if query.count_only:
                return [], total
            await cur.execute(select_sql.encode(), select_params)
            return [row[0] for row in await cur.fetchall()], total

        return await self._query(run, timeout)

    async def tweet(
        self, tweet_id: str, scope: Sequence[Condition] = (), *, timeout: float | None = None
    ) -> bytes | None:
        clause, params = postgres_query.where(scope, per_row=True)
        sql = "SELECT object FROM tweets WHERE id = %s" + clause.replace(" WHERE ", " AND ", 1)
        return await self._one(sql, [tweet_id, *params], timeout)

    async def user(
        self, user_id: str, scope: Sequence[Condition] = (), *, timeout: float | None = None
    ) -> bytes | None:
        sql = "SELECT object FROM users WHERE id = %s"
        params: list[Any] = [user_id]
        if scope:
            clause, scope_params = postgres_query.where(scope, per_row=True)
            sql += " AND EXISTS (SELECT 1 FROM tweets" + clause + " AND author_id = users.id)"
            params.extend(scope_params)
        return await self._one(sql, params, timeout)

    async def _one(self, sql: str, params: list[Any], timeout: float | None) -> bytes | None:
        if any(isinstance(p, str) and "\x00" in p for p in params):
            return None  # no stored text holds NUL: nothing to find

        async def run(cur: Cursor) -> bytes | None:
            await cur.execute(sql.encode(), params)
            row = await cur.fetchone()
            return bytes(row[0]) if row else None

        return await self._query(run, timeout)

    async def rule_keys(self) -> list[str]:
        async def run(cur: Cursor) -> list[str]:
            await cur.execute('SELECT tag FROM rules ORDER BY tag COLLATE "C"')
            return [str(row[0]) for row in await cur.fetchall()]

        return await self._read(run)

    async def highest_tweet_id(self, rule_key: str | None = None) -> str | None:
        # Ids are decimal strings of growing length: compare by length, then text.
        sql = "SELECT id FROM tweets"
        params: list[Any] = []
        if rule_key is not None:
            sql += " WHERE seq IN (SELECT seq FROM tweet_rules WHERE tag = %s)"
            params = [rule_key]
        sql += ' ORDER BY length(id) DESC, id COLLATE "C" DESC LIMIT 1'
        return await self._read(lambda cur: _one_text(cur, sql, params))

    async def get_state(self, key: str) -> str | None:
        sql = "SELECT value FROM source_state WHERE key = %s"
        return await self._read(lambda cur: _one_text(cur, sql, [key]))

    async def close(self) -> None:
        if self._renew_task is not None:
            self._renew_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew_task
        if self._writer_task is not None and not self._writer_task.done():
            if self.is_writer:  # hand over at once: a standby need not wait for expiry
                with contextlib.suppress(StoreError):
                    await self._job(self._release)
            await self._jobs.put(None)
            await self._writer_task
        for pool in (self._pool, self._query_pool):
            if pool is not None:
                await pool.close()

    async def _release(self, cur: Cursor) -> None:
        await cur.execute(
            "UPDATE writer_lease SET expires_at = now() "
            "WHERE name = 'writer' AND holder = %s AND generation = %s",
            [self.holder, self._generation],
        )
        self._generation = None


def _settle(job: _Job, result: Any = None, *, error: BaseException | None = None) -> None:
    if job.future.done():  # its caller gave up while it ran
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


def _store_error(exc: BaseException, url: str) -> StoreError:
    if isinstance(exc, StoreError):
        return exc
    return StoreError(f"commit failed: {redact(str(exc), url)}")


async def _one_int(cur: Cursor, sql: str, params: Sequence[Any]) -> int:
    await cur.execute(sql.encode(), params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _one_text(cur: Cursor, sql: str, params: Sequence[Any]) -> str | None:
    await cur.execute(sql.encode(), params)
    row = await cur.fetchone()
    return str(row[0]) if row else None
