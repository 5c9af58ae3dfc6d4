"""Retention: the oldest tweets go once the store holds more, or older, than it keeps.

A plain async function (:func:`apply_retention`) run by the active writer on the
relay's scheduler. It deletes in batches of ``batch`` tweets, each its own short
transaction among the appends, so ingest never waits behind a large deletion; after a
large one it gives the space back (SQLite's WAL checkpoint). Resume is gap-free within
the kept history: a client asking for older seqs is told where history starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from relay.config import Settings
from relay.store import Writer

log = logging.getLogger(__name__)

CHECKPOINT_AFTER = 10_000
"""Deleted tweets after which the WAL is checkpointed (about 40 MB of pages)."""


@dataclass(frozen=True, slots=True)
class Retention:
    max_tweets: int = 0
    """Keep at most this many (0: no bound on the count)."""
    max_age: float = 0.0
    """Keep those received within this many seconds (0: no bound on age)."""
    batch: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(settings.kept_tweets, settings.retention_max_age, settings.retention_batch)

    @property
    def active(self) -> bool:
        return bool(self.max_tweets or self.max_age)


async def apply_retention(store: Writer, retention: Retention, now: float) -> int:
    """Delete what ``retention`` no longer keeps; how many tweets went."""
    if not retention.active:
        return 0
    head = await store.head()
    through = head - retention.max_tweets if retention.max_tweets else 0
    before = now - retention.max_age if retention.max_age else None
    total, oldest = 0, 0
    while True:
        step = await store.trim(through_seq=through, received_before=before, limit=retention.batch)
        total += step.deleted
        oldest = step.oldest_seq
        if step.deleted < retention.batch:
            break
    if total:
        log.info(
            "retention deleted %d tweets; history now starts at seq %d",
            total,
            oldest,
            extra={"deleted": total, "oldest_seq": oldest},
        )
    if total >= CHECKPOINT_AFTER:
        await store.checkpoint()
    return total
