"""The PostgreSQL store's writer: one task, one connection, group commit, the lease.

Every write goes through one task: it takes every job waiting and commits them in one
transaction (group commit), and keeps the next ``seq`` in memory, read from
``max(seq)`` when it becomes the writer and after every reconnect. When the connection
is lost (PostgreSQL restarted, the network cut) it reconnects with backoff and runs
again what was not committed; only a permanent error (disk full, fenced) fails a write.

Every write transaction first checks and extends the writer lease (see
:mod:`relay.store.postgres.store` for why a lease): it updates the lease row where the
holder and generation are still this process's, which holds the row's lock until
commit, so a takeover and a write never overlap. A lease that expired but that nobody
claimed still carries this process's generation: the writer goes on (safety rests on
the generation, expiry only lets a standby in). When the row names another holder or
generation, the writer is fenced for good: :class:`~relay.errors.WriterFenced`. A
transaction that stored tweets records their receive order in it
(:mod:`relay.store.postgres.receive_order`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from relay.errors import StoreError, WriterFenced
from relay.obs.waits import Outage
from relay.store.postgres.conn import FIRST_WAIT, LONGEST_WAIT, connect, redact
from relay.store.postgres.receive_order import record as record_receive_order
from relay.store.postgres.write import DATA_ERRORS

log = logging.getLogger(__name__)
T = TypeVar("T")
Cursor = psycopg.AsyncCursor[Any]

TRANSIENT_STATES = ("08", "57P")
"""Connection exceptions and operator intervention (shutdown, restart): retried."""


CLAIM_LOCK_WAIT_MS = 2000
"""Longest wait of a claim for the lease row's lock; then it tries again later."""


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


class WriterTask:
    """The one writer of a :class:`~relay.store.postgres.store.PostgresStore`."""

    def __init__(self, url: str, where: str, *, lease_ttl: float, holder: str) -> None:
        self.url = url
        self.where = where
        self.holder = holder
        self.lease_ttl = lease_ttl
        self.fenced = asyncio.Event()
        self.commits = 0
        self.next_seq = 1
        self._generation: int | None = None
        self._fenced_error: WriterFenced | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._renew_task: asyncio.Task[None] | None = None
        self._outage = Outage(log, f"PostgreSQL at {where}")
        """The writer's waits for a lost server: one line when lost, one when back."""

    @property
    def is_writer(self) -> bool:
        """Whether this process holds the writer lease now (as far as it knows)."""
        return self._generation is not None and not self.fenced.is_set()

    async def start(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Take over ``conn`` (autocommit) and start the writer task."""
        await self._writer_session(conn)
        self._conn = conn
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")

    async def _writer_session(self, conn: psycopg.AsyncConnection[Any]) -> None:
        # A writer frozen in a transaction holds the lease row's lock: the server ends
        # its session after this long, so a standby's claim is not held up for long.
        # The keepalives are the server's side of those the client sets: the server
        # notices a dead writer's socket in seconds and frees what it held. A commit is
        # durable before the writer hands its seqs out, whatever the server's default:
        # with synchronous_commit off, a server crash loses the last commits, and their
        # seqs would be given again to other tweets.
        idle_ms = max(1000, int(self.lease_ttl * 1000))
        await conn.execute(
            "SELECT set_config('synchronous_commit', 'on', false), "
            "set_config('idle_in_transaction_session_timeout', %s, false), "
            "set_config('tcp_keepalives_idle', '5', false), "
            "set_config('tcp_keepalives_interval', '2', false), "
            "set_config('tcp_keepalives_count', '3', false), "
            "set_config('tcp_user_timeout', '15000', false)",
            [str(idle_ms)],
        )

    # -- the writer lease ----------------------------------------------------

    async def claim_writer(self, on_standby: Callable[[str], None] | None = None) -> None:
        """Return once this process holds the writer lease.

        While another holder's lease is live, ``on_standby`` is called with one line
        (again only when the holder changes) and the claim is retried every third
        of the lease's time to live.
        """
        told: str | None = None
        while True:
            claimed = await self.job(self._try_claim)
            if claimed is not None:
                break
            holder, until = await self.job(self._lease_row)
            if holder != told and on_standby is not None:
                on_standby(f"standing by: the writer lease is held by {holder} until {until}")
            told = holder
            await asyncio.sleep(self.lease_ttl / 3)
        log.info("writer lease claimed by %s (generation %d)", self.holder, self._generation)
        self._renew_task = asyncio.create_task(self._renew(), name="store-lease")

    async def _try_claim(self, cur: Cursor) -> int | None:
        # Expired on the database's clock? A plain read never waits for the row's lock.
        await cur.execute("SELECT expires_at <= now() FROM writer_lease WHERE name = 'writer'")
        expired = await cur.fetchone()
        if expired is None or not expired[0]:
            return None
        # The expired holder may still hold the row's lock: frozen in the middle of a
        # statement (a COPY waiting for its rows), which neither
        # idle_in_transaction_session_timeout nor statement_timeout ends while the
        # client sends nothing. End its session: its transaction rolls back, and when
        # it wakes its next write finds the lease gone (fenced).
        await cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks "
            "WHERE locktype = 'relation' AND relation = 'writer_lease'::regclass "
            "AND mode = 'RowExclusiveLock' AND granted AND pid <> pg_backend_pid()"
        )
        await cur.execute("SELECT set_config('lock_timeout', %s, false)", [str(CLAIM_LOCK_WAIT_MS)])
        try:
            await cur.execute(
                "UPDATE writer_lease SET holder = %s, generation = generation + 1, "
                "expires_at = now() + make_interval(secs => %s) "
                "WHERE name = 'writer' AND expires_at <= now() RETURNING generation",
                [self.holder, self.lease_ttl],
            )
            row = await cur.fetchone()
        except pg_errors.LockNotAvailable:
            return None  # taken meanwhile, or a holder still ending: the next try sees
        finally:
            await cur.execute("SELECT set_config('lock_timeout', '0', false)")
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
                await self.write(self._nothing)

    @staticmethod
    async def _nothing(cur: Cursor) -> None:
        return None

    # -- writing -------------------------------------------------------------

    async def job(self, run: Callable[[Cursor], Awaitable[T]]) -> T:
        """Run ``run`` on the writer's connection outside a write transaction (claims)."""
        result: T = await self._submit(_Job(run, plain=True))
        return result

    async def write(
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
        if self._task is None or self._task.done():
            raise StoreError("store is closed")
        await self._jobs.put(job)
        return await job.future

    async def _write_loop(self) -> None:
        try:
            await self._serve()
        except Exception as exc:  # a bug: fail what waits rather than leave it hanging
            log.exception("the store writer failed")
            while not self._jobs.empty():
                job = self._jobs.get_nowait()
                if job is not None:
                    _settle(job, error=StoreError(f"the store writer failed: {exc}"))
            raise

    async def _serve(self) -> None:
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
                self._outage.answered()
                return
            except _Lost as exc:
                jobs = [job for job in jobs if not job.future.done()]
                self._outage.failed(
                    f"lost while writing: {redact(str(exc.__cause__), self.url)}", delay
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
        conn = await connect(self.url, wait=True, outage=self._outage)
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
                if self.next_seq != next_seq:  # tweets went in: their receive order too
                    await record_receive_order(cur)
        except BaseException as exc:
            self.next_seq = next_seq
            if self._lost(exc):
                raise _Lost() from exc
            raise
        self.commits += 1
        return results

    async def close(self) -> None:
        """Hand the lease over (a standby need not wait for it to expire), finish the
        jobs queued, and disconnect; bounded when the server is gone."""
        if self._renew_task is not None:
            self._renew_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renew_task
        if self._task is None or self._task.done():
            return
        if self.is_writer:
            with contextlib.suppress(StoreError, TimeoutError):
                await asyncio.wait_for(self.job(self._release), self.lease_ttl)
        await self._jobs.put(None)
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.lease_ttl)
        except TimeoutError:  # still retrying a lost connection: give up on it
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if self._conn is not None:
                await self._conn.close()

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
