"""The PostgreSQL store's admin side: ``relay migrate``, ``delete`` and ``restore`` on a
URL.

Backups and integrity checks are PostgreSQL's own tools' work (``pg_dump``,
``pg_amcheck``): those commands say so.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable, Sequence
from pathlib import Path

import psycopg

from relay.errors import ConfigError, StoreError, WriterBusy
from relay.store.postgres.conn import connect, describe, redact
from relay.store.postgres.deletions import queue_deletions
from relay.store.postgres.schema import migrate_connection
from relay.store.restore import Progress, State, restore_into
from relay.store.types import Backup, Checked, Migrated, RestoreBatch, Restored


async def migrate(
    url: str, *, target: int | None = None, wait: bool = True, give_up_after: float | None = None
) -> int:
    """Create or update the schema of the database at ``url``; the schema version.

    Safe to run from several processes at once (an advisory lock orders them). With
    ``give_up_after``, a server that does not answer within that many seconds raises
    :class:`~relay.errors.StoreUnreachable`."""
    conn = await connect(url, wait=wait, give_up_after=give_up_after)
    try:
        return await migrate_connection(conn, target=target)
    except psycopg.Error as exc:
        raise StoreError(f"cannot migrate {describe(url)}: {redact(str(exc), url)}") from None
    finally:
        await conn.close()


async def set_new_epoch(url: str, *, force: bool = False) -> str:
    """A new epoch for the database at ``url`` (after a restore); returns it.

    Refused with :class:`~relay.errors.WriterBusy`, naming the holder, while the writer
    lease is live: an ingester still writes the old history, and serving processes
    would mix the two. ``force`` goes on anyway (a holder known to be dead, whose lease
    has not run out yet)."""
    epoch = secrets.token_hex(8)
    conn = await connect(url, wait=False)
    try:
        async with conn.transaction():
            # The lease row locked until commit: no ingester claims it meanwhile.
            cur = await conn.execute(
                "SELECT holder, to_char(expires_at AT TIME ZONE 'UTC', "
                '\'YYYY-MM-DD"T"HH24:MI:SS"Z"\'), expires_at > now() '
                "FROM writer_lease WHERE name = 'writer' FOR UPDATE"
            )
            lease = await cur.fetchone()
            if lease is not None and lease[2] and not force:
                raise WriterBusy(
                    f"the writer lease of {describe(url)} is held by {lease[0]} until "
                    f"{lease[1]}: stop `relay ingest` first (--force only when that "
                    "process is dead)"
                )
            await conn.execute("UPDATE meta SET value = %s WHERE key = 'epoch'", (epoch,))
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot set a new epoch in {describe(url)}: {redact(str(exc), url)}"
        ) from None
    finally:
        await conn.close()
    return epoch


class PostgresAdmin:
    """A :class:`relay.store.Admin` on the database at ``url``."""

    where = "PostgreSQL"

    def __init__(self, url: str) -> None:
        self.url = url

    async def migrate(
        self, *, new_epoch: bool = False, force: bool = False, give_up_after: float | None = None
    ) -> Migrated:
        version = await migrate(self.url, give_up_after=give_up_after)
        epoch = await set_new_epoch(self.url, force=force) if new_epoch else ""
        return Migrated(version, epoch)

    async def queue_deletions(self, ids: Sequence[str]) -> int:
        return await queue_deletions(self.url, ids)

    async def backup(self, out: Path) -> Backup:
        raise ConfigError(
            "DATABASE_URL is set: back up PostgreSQL with pg_dump (docs/deployment.md); "
            "give --db to copy a SQLite store"
        )

    async def integrity_check(self, *, quick: bool = False) -> Checked:
        raise ConfigError(
            "DATABASE_URL is set: check PostgreSQL with pg_amcheck; give --db to check a "
            "SQLite store"
        )

    async def restore(
        self,
        batches: AsyncIterable[RestoreBatch],
        *,
        epoch: str,
        state: State,
        progress: Progress | None = None,
    ) -> Restored:
        from relay.store.postgres.store import PostgresStore

        def refuse(line: str) -> None:
            # A live ingester writes this database: a restore would mix two histories.
            raise WriterBusy(f"{describe(self.url)}: {line}: stop `relay ingest` first")

        store = await PostgresStore.open(
            self.url, writer=True, readers=1, query_readers=1, wait=False
        )
        try:
            await store.claim_writer(on_standby=refuse)
            return await restore_into(
                store, self.where, batches, epoch=epoch, state=state, progress=progress
            )
        finally:
            await store.close()
