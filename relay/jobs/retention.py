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
from typing import Protocol

from relay.config import Settings
from relay.core.archive import CURSOR_KEY, parse_mark
from relay.obs.metrics import Metrics
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
    archived: bool = False
    """An archive is configured: never delete a tweet it does not hold yet."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(
            settings.kept_tweets,
            settings.retention_max_age,
            settings.retention_batch,
            bool(settings.archive_url),
        )

    @property
    def active(self) -> bool:
        return bool(self.max_tweets or self.max_age)


class RetainedStore(Writer, Protocol):
    async def seq_at(self, moment: float) -> int: ...

    async def current_epoch(self) -> str: ...

    async def oldest_seq(self) -> int: ...


_told_waiting = False


async def apply_retention(
    store: RetainedStore, retention: Retention, now: float, metrics: Metrics | None = None
) -> int:
    """Delete what ``retention`` no longer keeps; how many tweets went."""
    if not retention.active:
        return 0
    head = await store.head()
    through = head - retention.max_tweets if retention.max_tweets else 0
    before = now - retention.max_age if retention.max_age else None
    if retention.archived:
        through, before = await _within_archive(store, through, before, metrics)
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


async def _within_archive(
    store: RetainedStore, through: int, before: float | None, metrics: Metrics | None
) -> tuple[int, None]:
    """The bounds cut at the archive's cursor: the age bound becomes a seq bound (the
    tweets received before the moment come before :meth:`seq_at`), and no seq past the
    last archived one goes."""
    global _told_waiting
    if before is not None:
        through = max(through, await store.seq_at(before) - 1)
    mark = parse_mark(await store.get_state(CURSOR_KEY))
    epoch = await store.current_epoch()
    archived = mark.seq if mark is not None and mark.epoch == epoch else 0
    oldest = await store.oldest_seq()
    waiting = max(0, through - max(archived, oldest - 1))
    if metrics is not None:
        metrics.retention_waiting.set(waiting)
    if waiting and not _told_waiting:
        _told_waiting = True
        log.warning(
            "retention keeps %d tweets past seq %d that the archive does not hold yet "
            "(it deletes them once archived)",
            waiting,
            archived,
        )
    return min(through, archived), None
