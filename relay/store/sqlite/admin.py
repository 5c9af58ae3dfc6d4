"""The SQLite store's admin side: ``relay migrate``, ``delete``, ``backup``, ``check`` and
``restore`` on a file, each beside a writer that may hold it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Sequence
from pathlib import Path

from relay.errors import WriterBusy
from relay.store.restore import Progress, State, restore_into
from relay.store.sqlite.backup import backup
from relay.store.sqlite.backup import new_epoch as renew_epoch
from relay.store.sqlite.check import integrity_check
from relay.store.sqlite.deletions import queue_deletions
from relay.store.sqlite.schema import MIGRATIONS
from relay.store.sqlite.store import SQLiteStore
from relay.store.types import Backup, Checked, Migrated, RestoreBatch, Restored


class SQLiteAdmin:
    """A :class:`relay.store.Admin` on the SQLite file at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.where = path

    async def migrate(
        self, *, new_epoch: bool = False, force: bool = False, give_up_after: float | None = None
    ) -> Migrated:
        """Opening the file as its writer migrates it. ``force`` and ``give_up_after``
        have nothing to do here: the file lock dies with its process, and a file does
        not keep anyone waiting."""
        try:
            store = await SQLiteStore.open(self.path)
        except WriterBusy as busy:
            # A running writer migrated the file when it opened it: nothing to do when it
            # is current; an older schema needs that writer stopped first.
            reader = await SQLiteStore.open(self.path, writer=False)
            version = reader.schema_version
            await reader.close()
            if version < len(MIGRATIONS) or new_epoch:
                raise busy from None
            return Migrated(version)
        try:
            # While this process holds the writer lock: nobody writes the file meanwhile.
            epoch = await asyncio.to_thread(renew_epoch, self.path) if new_epoch else ""
            return Migrated(store.schema_version, epoch)
        finally:
            await store.close()

    async def queue_deletions(self, ids: Sequence[str]) -> int:
        return await asyncio.to_thread(queue_deletions, self.path, ids)

    async def backup(self, out: Path) -> Backup:
        return await asyncio.to_thread(backup, self.path, out)

    async def integrity_check(self, *, quick: bool = False) -> Checked:
        return await asyncio.to_thread(integrity_check, self.path, quick=quick)

    async def restore(
        self,
        batches: AsyncIterable[RestoreBatch],
        *,
        epoch: str,
        state: State,
        progress: Progress | None = None,
    ) -> Restored:
        store = await SQLiteStore.open(self.path, query_readers=1)  # the writer lock
        try:
            return await restore_into(
                store, self.where, batches, epoch=epoch, state=state, progress=progress
            )
        finally:
            await store.close()
