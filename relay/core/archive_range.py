"""Which part of an archive a replay or a restore reads. Pure: no I/O, no clock.

A replay's ``--since`` and ``--until`` are each a seq (digits) or a time (ISO 8601), both
ends included. Objects are picked by their names first (:mod:`relay.core.archive`: seq
range, first and last receive times), so that only the objects that may hold matching
tweets are read; their lines are then filtered one by one. Picking by time trusts that
receive times grow with seq, as the writer stores them; a line outside the range in a
picked object is left out all the same.

A restore keeps seqs, and an archive may hold several epochs whose seqs overlap: a store
restored from a backup gets a new epoch and gives again the seqs of the tail it lost. So
:func:`restore_plan` lets a later epoch win: each epoch's tweets are read up to the first
seq of the next one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from relay.core.archive import ArchivedTweet, ObjectName
from relay.core.times import normalise_time


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of a range: a seq, or a time (unix seconds)."""

    seq: int | None = None
    time: float | None = None


def parse_bound(text: str, *, what: str = "bound") -> Bound:
    """``123`` (a seq) or an ISO 8601 time; ValueError with one line otherwise."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        return Bound(seq=int(text))
    normal = normalise_time(text)
    if normal is None:
        raise ValueError(f"{what} {text!r}: expected a seq (digits) or an ISO 8601 time")
    moment = datetime.strptime(normal, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return Bound(time=round(moment.timestamp(), 3))


@dataclass(frozen=True, slots=True)
class ArchiveRange:
    """The tweets between ``since`` and ``until`` (each included; None: no end)."""

    since: Bound | None = None
    until: Bound | None = None

    def may_hold(self, name: ObjectName) -> bool:
        """Whether the object so named may hold a tweet of the range."""
        return self._meets(name.first_seq, name.last_seq, name.first_received, name.last_received)

    def holds(self, tweet: ArchivedTweet) -> bool:
        return self._meets(tweet.seq, tweet.seq, tweet.received, tweet.received)

    def _meets(self, first_seq: int, last_seq: int, first_time: float, last_time: float) -> bool:
        """Whether seqs ``first_seq..last_seq`` received ``first_time..last_time`` reach
        into the range (a tweet is such a span of one)."""
        since, until = self.since, self.until
        if since is not None:
            if since.seq is not None and last_seq < since.seq:
                return False
            if since.time is not None and last_time < since.time:
                return False
        if until is not None:
            if until.seq is not None and first_seq > until.seq:
                return False
            if until.time is not None and first_time > until.time:
                return False
        return True


@dataclass(frozen=True, slots=True)
class PlannedObject:
    """An object to read, and the seqs of it to keep (``below``: 0 for no limit)."""

    key: str
    name: ObjectName
    below: int = 0


def restore_plan(objects: Sequence[tuple[str, ObjectName]]) -> list[PlannedObject]:
    """The objects a restore reads, in listing order, each with the seq from which a
    later epoch takes over (epochs in the order of their start, as the names sort)."""
    firsts: dict[tuple[float, str], int] = {}
    for _, name in objects:
        epoch = (name.epoch_start, name.epoch)
        firsts[epoch] = min(firsts.get(epoch, name.first_seq), name.first_seq)
    order = sorted(firsts)
    following = {
        epoch: min((firsts[later] for later in order[index + 1 :]), default=0)
        for index, epoch in enumerate(order)
    }
    planned: list[PlannedObject] = []
    for key, name in objects:
        below = following[(name.epoch_start, name.epoch)]
        if below and name.first_seq >= below:
            continue  # wholly in a tail a later epoch gave again
        planned.append(PlannedObject(key, name, below))
    return planned


def cursor_of(plan: Sequence[PlannedObject]) -> int:
    """The last seq a restore of ``plan`` leaves archived: where the writer goes on."""
    return (
        max(
            (min(item.name.last_seq, item.below - 1) if item.below else item.name.last_seq)
            for item in plan
        )
        if plan
        else 0
    )
