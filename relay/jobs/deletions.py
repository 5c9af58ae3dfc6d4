"""Deleting tweets on request, as X's terms require once a tweet is deleted on X.

``relay delete`` only queues tweet ids (a table of the store, the one thing a process
other than the writer may write): the active writer applies the queue every few
seconds, removing each tweet with its search entry, rule memberships and lone author,
and records what it removed; every serving process reads that record and sends a
``deleted`` frame to the subscribers of the tweet's channels. The queue works the same
with one process or many, and survives restarts: requests made while no writer runs
are applied when one starts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.obs.metrics import Metrics
    from relay.store import Writer

log = logging.getLogger(__name__)

APPLY_BATCH = 500
"""Requests applied per write transaction."""
DELETIONS_INTERVAL = 2.0
"""Seconds between two applications of the queue (writer) and two reads of the record
(serving processes): how long a deleted tweet may still reach a client."""


async def apply_deletions(store: Writer, metrics: Metrics) -> int:
    """The writer's job: apply every queued request, a batch a transaction."""
    total = 0
    while True:
        applied = await store.apply_deletions(APPLY_BATCH)
        found = [d for d in applied if d.seq]
        total += len(found)
        metrics.deleted.labels("deleted").inc(len(found))
        metrics.deleted.labels("not_stored").inc(len(applied) - len(found))
        if found:
            log.info(
                "deleted %d tweets on request (%d asked for were not stored)",
                len(found),
                len(applied) - len(found),
                extra={"deleted": len(found)},
            )
        if len(applied) < APPLY_BATCH:
            return total
