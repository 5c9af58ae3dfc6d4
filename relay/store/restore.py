"""Rebuilding an empty store from tweets that keep their seqs (``relay restore``): the
part both backends share. Each backend's admin opens its store as the one writer and
hands it here; :meth:`relay.store.Admin.restore` is the contract."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Mapping
from typing import Protocol

from relay.errors import StoreNotEmpty
from relay.store.types import RestoreBatch, Restored

Progress = Callable[[int, int], None]
"""Called after each committed batch with the tweets restored so far and the last seq."""
State = Callable[[], Mapping[str, str]]
"""Called once every batch is stored: the writer's state to set with the new epoch."""


class Restorable(Protocol):
    """A store opened as its one writer that takes a restore's batches."""

    async def head(self) -> int: ...

    async def restore(self, batch: RestoreBatch) -> int: ...


async def restore_into(
    store: Restorable,
    where: str,
    batches: AsyncIterable[RestoreBatch],
    *,
    epoch: str,
    state: State,
    progress: Progress | None = None,
) -> Restored:
    """Refuse a store that holds a tweet; store every batch in its own transaction; then,
    in one more, the ``state()`` and the new ``epoch`` (clients reset, not resume)."""
    if await store.head():
        raise StoreNotEmpty(
            f"{where} already holds tweets: restore into an empty store (a new SQLite "
            "file, or a new database after `relay migrate`)"
        )
    tweets = 0
    async for batch in batches:
        if not batch.tweets:
            continue
        tweets += await store.restore(batch)
        if progress is not None:
            progress(tweets, batch.tweets[-1].seq)
    await store.restore(RestoreBatch((), state=state(), epoch=epoch))
    return Restored(tweets, await store.head(), epoch)
