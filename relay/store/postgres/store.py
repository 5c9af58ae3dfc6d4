"""The store on PostgreSQL (``DATABASE_URL``), for processes on machines that share no disk.

Reads go through two connection pools: one for the stream side (catch-ups, counts,
``/v1/info``, ``/readyz``), one for the object API's queries with their time limit
(``statement_timeout``, and the wait for a connection counts), so a heavy query never
holds up a catch-up. Writes go through one writer task on its own connection
(:mod:`relay.store.postgres.writer`): group commit, tweets sent with COPY after one
look-up of the ids already stored (:mod:`relay.store.postgres.write`). Each tweet's
served object is stored with its seq in a ``json`` column, kept byte for byte: reads
hand the stored bytes to clients.

One active writer: a lease, not an advisory lock. A session advisory lock is held for
as long as its connection lives, and a PaaS machine that dies does not close its
sockets: the lock would stay taken until TCP keepalive gives up (hours by default);
and transaction-mode connection poolers (PgBouncer) hand a session's connection to
others between transactions, which breaks session locks altogether. The lease is the
row ``writer_lease`` (holder, generation, expires_at on the database's clock,
``now()``): a process claims it once it has expired (generation + 1) and renews it
every third of its time to live; every write transaction first updates that row
where holder and generation are still its own, or fails with
:class:`~relay.errors.WriterFenced`. A frozen writer (SIGSTOP) inside a transaction
is ended by the server after ``idle_in_transaction_session_timeout`` (the lease's
time to live), which frees the row for the standby; TCP keepalives and
``tcp_user_timeout`` on every connection notice a dead peer in seconds.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from relay.core.query import Condition, TweetQuery
from relay.core.rule_set import Channels
from relay.core.tweets import Tweet
from relay.errors import QueryTimeout, StoreCorrupt, StoreError, StoreNotReady
from relay.store import Store
from relay.store.postgres import deletions as postgres_deletions
from relay.store.postgres import query as postgres_query
from relay.store.postgres import read, receive_order
from relay.store.postgres.conn import configure_types, connect, conninfo, describe, redact
from relay.store.postgres.retention import trim_oldest
from relay.store.postgres.schema import (
    MIGRATIONS,
    check_version,
    migrate_connection,
    schema_version,
)
from relay.store.postgres.write import Batch, Cursor, append_careful, append_fast, restore_rows
from relay.store.postgres.writer import WriterTask
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

READ_WAIT = 3.0
"""Longest wait for a stream-side reader: the catch-ups at once stay under the readers,
so a longer wait means the database is down, and callers (a client's catch-up, /readyz,
an object API request) should hear so while they still wait."""

T = TypeVar("T")


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class PostgresStore:
    """A :class:`relay.store.Store` on PostgreSQL, with a writer lease."""

    def __init__(
        self, url: str, *, writer: bool, query_readers: int, lease_ttl: float, holder: str
    ) -> None:
        self.url = url
        self.where = describe(url)
        self.epoch = ""
        self.holder = holder
        self._writer_mode = writer
        self._query_readers = query_readers
        self._writer = WriterTask(url, self.where, lease_ttl=lease_ttl, holder=holder)
        self._pool: AsyncConnectionPool | None = None
        self._query_pool: AsyncConnectionPool | None = None
        self.on_damage: Callable[[StoreCorrupt], None] | None = None
        """Not called yet: PostgreSQL's own damage errors (XX001, XX002) are not told
        apart from other failures."""
        self._body_bytes = 0
        """The mean body size of the last catch-up page read (0: none yet), to ask the
        server for about a byte budget's worth of rows instead of the whole row limit."""

    @property
    def commits(self) -> int:
        """Write transactions committed so far."""
        return self._writer.commits

    async def claim_writer(self, on_standby: Callable[[str], None] | None = None) -> None:
        """Return once this process holds the writer lease.

        While another process holds a live lease, ``on_standby`` gets one line ("standing
        by: the writer lease is held by HOLDER until TIME"), again only when the holder
        changes, and the claim is retried every third of the lease's time to live.
        """
        if not self._writer_mode:
            raise StoreError("opened as a reader: it cannot become the writer")
        await self._writer.claim_writer(on_standby)

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
                    raise StoreNotReady(f"no relay schema in {self.where}: run `relay migrate`")
                check_version(version)
                if version < len(MIGRATIONS):  # its reads would miss what this relay reads
                    raise StoreNotReady(
                        f"the schema of {self.where} (version {version}) is older than this "
                        f"relay's ({len(MIGRATIONS)}): run `relay migrate`"
                    )
            cur = await conn.execute("SELECT value FROM meta WHERE key = 'epoch'")
            row = await cur.fetchone()
            if row is None:
                raise StoreError("not a tweet-relay database (it has no epoch)")
            self.epoch = str(row[0])
        except (psycopg.Error, StoreError) as exc:
            await conn.close()
            if isinstance(exc, StoreNotReady):
                raise  # the caller retries until the release phase has migrated
            raise StoreError(
                f"cannot open database {self.where}: {redact(str(exc), self.url)}"
            ) from None
        except BaseException:
            await conn.close()
            raise
        if self._writer_mode:
            await self._writer.start(conn)
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

    # -- the Writer role -------------------------------------------------------

    async def append(
        self,
        tweets: Sequence[Tweet],
        users: Sequence[dict[str, Any]],
        received_at: float | Received,
    ) -> AppendResult:
        batch = Batch.of(tweets, users, Received.of(received_at, len(tweets), len(users)))
        if not self._writer_mode:
            raise StoreError("not the active writer: opened as a reader")
        writer = self._writer
        return await writer.write(
            lambda cur: append_fast(cur, writer, batch),
            lambda cur: append_careful(cur, writer, batch),
        )

    async def restore(self, batch: RestoreBatch) -> int:
        """Store a batch of :meth:`relay.store.Admin.restore` under its own seqs."""
        if not self._writer_mode:
            raise StoreError("not the active writer: opened as a reader")
        writer = self._writer
        return await writer.write(lambda cur: restore_rows(cur, writer, batch))

    async def trim(self, *, through_seq: int, received_before: float | None, limit: int) -> Trimmed:
        if not self._writer_mode:
            raise StoreError("not the active writer: opened as a reader")
        return await self._writer.write(
            lambda cur: trim_oldest(
                cur, through_seq=through_seq, received_before=received_before, limit=limit
            )
        )

    async def apply_deletions(self, limit: int) -> list[Deleted]:
        if not self._writer_mode:
            raise StoreError("not the active writer: opened as a reader")
        return await self._writer.write(lambda cur: postgres_deletions.apply_pending(cur, limit))

    async def checkpoint(self) -> None:
        """Nothing: PostgreSQL's autovacuum reclaims deleted rows by itself."""

    async def set_state(self, key: str, value: str) -> None:
        async def run(cur: Cursor) -> None:
            await cur.execute(
                "INSERT INTO source_state (key, value) VALUES (%s, %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )

        if not self._writer_mode:
            raise StoreError("not the active writer: opened as a reader")
        await self._writer.write(run)

    async def get_state(self, key: str) -> str | None:
        sql = "SELECT value FROM source_state WHERE key = %s"
        return await self._read(lambda cur: read.one_text(cur, sql, [key]))

    # -- reading -------------------------------------------------------------

    async def _read(self, run: Callable[[Cursor], Awaitable[T]]) -> T:
        """A stream-side read; a database that is down fails it within ``READ_WAIT``."""
        assert self._pool is not None
        try:
            async with self._pool.connection(timeout=READ_WAIT) as conn, conn.cursor() as cur:
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

    # -- the Log role ----------------------------------------------------------

    async def head(self) -> int:
        return await self._read(read.head)

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
            read.tweets_after(channel, after, until, limit, max_bytes, conditions)
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
        if max_bytes is not None and self._body_bytes:
            # The server reads (and detoasts) every row up to the limit before it cuts to
            # the budget: ask for about the budget's worth, a quarter more. Fewer rows than
            # asked and under the budget still means complete, and a full page goes on.
            limit = min(limit, max(16, max_bytes * 5 // (4 * self._body_bytes) + 1))
        rows = await self._read(
            read.bodies_after(channel, after, until, limit, conditions, max_bytes)
        )
        if rows:
            self._body_bytes = max(1, sum(len(body) for _, body in rows) // len(rows))
        cut = False
        if max_bytes is not None:
            size = 0
            for count, (_, body) in enumerate(rows, 1):
                size += len(body)
                if size >= max_bytes:
                    cut = True
                    del rows[count:]
                    break
        count = len(rows)
        last = rows[-1][0] if rows else 0
        return BodyPage(build(rows), count, last, not cut and count < limit)

    async def count_after(
        self, channel: str, after: int, until: int, *, cap: int | None = None
    ) -> int:
        return await self._read(read.count_after(channel, after, until, cap))

    async def oldest_seq(self) -> int:
        return await self._read(read.oldest_seq)

    async def seq_at(self, moment: float) -> int:
        return await self._read(receive_order.seq_at(moment))

    async def current_epoch(self) -> str:
        sql = "SELECT value FROM meta WHERE key = 'epoch'"
        epoch = await self._read(lambda cur: read.one_text(cur, sql, []))
        if epoch is None:
            raise StoreError(f"{self.where} lost its epoch: not a tweet-relay database now")
        return epoch

    async def known_channels(self) -> Channels:
        return await self._read(read.known_channels)

    async def deletions_after(self, after: int, limit: int) -> list[Deleted]:
        return await self._read(lambda cur: postgres_deletions.deletions_after(cur, after, limit))

    async def last_deletion(self) -> int:
        return await self._read(postgres_deletions.last_deletion)

    # -- the Catalog role ------------------------------------------------------

    async def query(
        self, query: TweetQuery, *, timeout: float | None = None
    ) -> tuple[list[bytes], int]:
        count_sql, count_params = postgres_query.count(query)
        select_sql, select_params = postgres_query.select(query)

        async def run(cur: Cursor) -> tuple[list[bytes], int]:
            total = await read.one_int(cur, count_sql, count_params)
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

    async def stats(self) -> StoreStats:
        async def run(cur: Cursor) -> tuple[int, int, float | None]:
            await cur.execute("SELECT pg_database_size(current_database())")
            size = await cur.fetchone()
            await cur.execute("SELECT seq, received_at FROM tweets ORDER BY seq LIMIT 1")
            found = await cur.fetchone()
            oldest = (int(found[0]), found[1].timestamp()) if found else (0, None)
            return (int(size[0]) if size else 0, *oldest)

        return StoreStats(*await self._read(run))

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
        return await self._read(lambda cur: read.one_text(cur, sql, params))

    async def close(self) -> None:
        await self._writer.close()
        for pool in (self._pool, self._query_pool):
            if pool is not None:
                await pool.close()


def _is_a_store(store: PostgresStore) -> Store:
    return store  # mypy checks here that PostgresStore keeps every role
