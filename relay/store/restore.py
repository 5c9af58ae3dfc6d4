"""Rebuilding an empty store from tweets that keep their seqs (``relay restore``): the
part both backends share. Each backend's admin opens its store as the one writer and
hands it here; :meth:`relay.store.Admin.restore` is the contract.

Deletions hold: a tweet whose deletion the new store records, or has queued (``relay
delete`` run on it before the restore, for instance with the ids a compliance feed gave
while the store was lost), is left out. The archive's objects no longer hold the tweets
whose deletions the archive writer had rewritten out of them. A deletion the lost store
had queued or applied but the archive writer had not yet rewritten is known nowhere."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import replace
from typing import Protocol

from relay.core.stored import users_of
from relay.errors import StoreNotEmpty
from relay.store.deletion_record import recorded_ids
from relay.store.types import Deleted, RestoreBatch, Restored

log = logging.getLogger(__name__)
APPLY_BATCH = 500

Progress = Callable[[int, int], None]
"""Called after each committed batch with the tweets restored so far and the last seq."""
State = Callable[[], Mapping[str, str]]
"""Called once every batch is stored: the writer's state to set with the new epoch."""


class Restorable(Protocol):
    """A store opened as its one writer that takes a restore's batches."""

    async def head(self) -> int: ...

    async def restore(self, batch: RestoreBatch) -> int: ...

    async def apply_deletions(self, limit: int) -> list[Deleted]: ...

    async def deletions_after(self, after: int, limit: int) -> list[Deleted]: ...


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
    deleted = await _deleted_ids(store)
    tweets = left_out = 0
    async for batch in batches:
        if deleted:
            kept = _without(batch, deleted)
            left_out += len(batch.tweets) - len(kept.tweets)
            batch = kept
        if not batch.tweets:
            continue
        tweets += await store.restore(batch)
        if progress is not None:
            progress(tweets, batch.tweets[-1].seq)
    await store.restore(RestoreBatch((), state=state(), epoch=epoch))
    if left_out:
        log.info("left out %d tweets the store's deletion record names", left_out)
    return Restored(tweets, await store.head(), epoch)


async def _deleted_ids(store: Restorable) -> frozenset[str]:
    """Every id the store's deletion record names, once its queue is applied (to an
    empty store: each request is recorded as found nowhere, and holds from then on)."""
    while len(await store.apply_deletions(APPLY_BATCH)) == APPLY_BATCH:
        pass
    return await recorded_ids(store)


def _without(batch: RestoreBatch, deleted: frozenset[str]) -> RestoreBatch:
    """The batch without the deleted tweets, and without the users only they held."""
    kept = [t for t in batch.tweets if t.tweet.id not in deleted]
    if len(kept) == len(batch.tweets):
        return batch
    still = {str(user["id"]) for t in kept for user in users_of(t.tweet.object)}
    users = [user for user in batch.users if str(user.get("id")) in still]
    return replace(batch, tweets=kept, users=users)
