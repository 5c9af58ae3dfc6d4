"""The one place that picks a store: PostgreSQL when ``database_url`` is set, else SQLite.

Every process and command opens its store here (:func:`open_store`) or reaches its admin
side here (:func:`admin_for`), so a new backend is added in one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.config import Settings
    from relay.store import Admin, Store


async def open_store(
    settings: Settings, *, writer: bool, serves: bool = True, wait: bool = True
) -> Store:
    """Open the store the settings name, once.

    ``writer``: to write (created and migrated first; writes wait for
    :meth:`~relay.store.Writer.claim_writer`), else to read only, raising
    :class:`~relay.errors.StoreNotReady` while there is no store yet. ``serves``: this
    process answers clients, and gets full reader pools; otherwise one reader of each
    kind (a worker's few reads, a command's one). ``wait``: wait for a PostgreSQL server
    that does not answer yet, instead of one try.
    """
    if settings.database_url:
        from relay.store.postgres.store import PostgresStore

        # A worker serves no clients: one reader and one query connection (opened on
        # demand) keep it to 3 of a small plan's ~20 connections.
        return await PostgresStore.open(
            settings.database_url,
            writer=writer,
            readers=3 if serves else 1,
            query_readers=settings.query_readers if serves else 1,
            lease_ttl=settings.lease_ttl,
            wait=wait,
        )
    from relay.store.sqlite.store import SQLiteStore

    return await SQLiteStore.open(
        settings.db, query_readers=settings.query_readers if serves else 1, writer=writer
    )


def admin_for(settings: Settings) -> Admin:
    """The admin side of the store the settings name (nothing is opened yet)."""
    if settings.database_url:
        from relay.store.postgres.admin import PostgresAdmin

        return PostgresAdmin(settings.database_url)
    from relay.store.sqlite.admin import SQLiteAdmin

    return SQLiteAdmin(settings.db)
