"""The ids a store's deletion record names: what a replay or a restore must leave out."""

from __future__ import annotations

from typing import Protocol

from relay.store.types import Deleted

PAGE = 10_000
"""Entries of the record read at a time."""


class DeletionRecord(Protocol):
    async def deletions_after(self, after: int, limit: int) -> list[Deleted]: ...


async def recorded_ids(record: DeletionRecord) -> frozenset[str]:
    """Every tweet id the record names, found or not when it was applied."""
    ids: set[str] = set()
    after = 0
    while page := await record.deletions_after(after, PAGE):
        ids.update(entry.tweet_id for entry in page)
        after = page[-1].n
    return frozenset(ids)
