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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from relay import protocol
from relay.tweets import tweet_id_of

if TYPE_CHECKING:
    from relay.hub import Hub
    from relay.metrics import Metrics
    from relay.store import Store

log = logging.getLogger(__name__)

APPLY_BATCH = 500
"""Requests applied per write transaction."""
DELETIONS_INTERVAL = 2.0
"""Seconds between two applications of the queue (writer) and two reads of the record
(serving processes): how long a deleted tweet may still reach a client."""


@dataclass(frozen=True, slots=True)
class Deleted:
    """One applied request: ``seq`` 0 and no channels when the store did not hold it."""

    n: int
    """Its place in the record (increasing)."""
    tweet_id: str
    seq: int
    channels: tuple[str, ...]


def ids_from_lines(lines: Iterable[str]) -> tuple[list[str], list[str]]:
    """Tweet ids from a file: one id a line, or X compliance output (JSON lines of a batch
    compliance job, ``{"id": ..., "action": "delete"}``, or of the compliance stream,
    ``{"data": {"delete": {"tweet": {"id": ...}}}}``). Returns ``(ids, bad lines)``."""
    ids: list[str] = []
    bad: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = _id_of(line)
        if found is None:
            bad.append(line[:80])
        elif found:
            ids.append(found)
    return list(dict.fromkeys(ids)), bad


def _id_of(line: str) -> str | None:
    """The id a line asks to delete; "" for a valid line that asks for no deletion."""
    if line.isdigit():
        return tweet_id_of(line)
    if not line.startswith("{"):
        return None
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    data = event.get("data")
    if isinstance(data, dict):  # the compliance stream: only tweet deletions concern us
        delete = data.get("delete")
        tweet = delete.get("tweet") if isinstance(delete, dict) else None
        if tweet is None:
            return ""
        value = tweet.get("id") if isinstance(tweet, dict) else None
    else:  # a batch compliance job: every action (deleted, suspended, protected...) removes
        value = event.get("id")
    return tweet_id_of(value) if isinstance(value, str) else None


def check_ids(ids: Iterable[str]) -> list[str]:
    """The ids given on the command line, canonical (as the store keeps them), or
    ValueError naming the first bad one. An id is 64 bits: a longer one matches no tweet
    and would only sit in the queue."""
    checked: list[str] = []
    for given in ids:
        tweet_id = tweet_id_of(given)
        if tweet_id is None:
            raise ValueError(f"{given[:40]!r} is not a tweet id (decimal digits, at most 2^64-1)")
        checked.append(tweet_id)
    return list(dict.fromkeys(checked))


async def apply_deletions(store: Store, metrics: Metrics) -> int:
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


class DeletionAnnouncer:
    """A serving process's job: ``deleted`` frames for what the writer removed."""

    def __init__(self, store: Store, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self.after: int | None = None
        """The last record entry announced; None until the first run, which starts at
        the record's end: a process announces what is deleted while it serves."""

    async def run(self) -> int:
        if self.after is None:
            self.after = await self.store.last_deletion()
            return 0
        sent = 0
        while True:
            record = await self.store.deletions_after(self.after, APPLY_BATCH)
            for entry in record:
                for channel in entry.channels:
                    sent += self.hub.announce(
                        channel, protocol.deleted(channel, entry.tweet_id, entry.seq)
                    )
                self.after = entry.n
            if len(record) < APPLY_BATCH:
                return sent
