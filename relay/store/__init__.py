"""Stores: where tweets live, in seq order, exactly once.

The store assigns each new tweet a ``seq`` that increases strictly within its
``epoch`` (an id made when the store is created), drops tweets whose id it
already holds, and answers the reads the hub and the object API need.

``sqlite/`` and ``postgres/`` hold the two backends under the same file names.

May import: obs, config, core, errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from relay.core.rule_set import STATE_KEY, Channels, RuleSet

if TYPE_CHECKING:
    from relay.core.query import Condition, TweetQuery
    from relay.core.tweets import Tweet
    from relay.errors import StoreCorrupt
    from relay.store.types import Deleted

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredTweet:
    """A tweet the store holds: its position and its served object, encoded once."""

    seq: int
    channels: tuple[str, ...]
    body: bytes
    """The served object as JSON, encoded once and reused in every frame."""
    # What subscription filters look at, so they never decode the body.
    lang: str | None = None
    author: str | None = None
    has_media: bool = False
    text: str = ""
    received: float = 0.0
    """When its line was received (unix seconds; 0 when not known): the delivery latency
    metric measures from here."""


StoredBody = tuple[int, bytes]
"""A stored tweet's seq and its served object: all a catch-up sends (a plain tuple, the
row as the database gives it, so a page of them costs no object a tweet)."""


@dataclass(frozen=True, slots=True)
class BodyPage(Generic[T]):
    """One :meth:`Store.read_bodies` read: what its ``build`` made of the rows, and where
    the read stopped."""

    built: T
    count: int
    """Rows read."""
    last: int
    """The seq of the last row read; 0 when none."""
    complete: bool
    """Neither ``limit`` nor ``max_bytes`` cut the read: no match is left up to ``until``."""


@dataclass(frozen=True, slots=True)
class AppendResult:
    stored: list[StoredTweet]
    duplicates: int
    unstorable: tuple[tuple[str, str], ...] = ()
    """``(tweet id, why)`` of each tweet the store could not hold (skipped, not retried)."""


def parse_time(stored: str) -> float:
    """A stored ``YYYY-MM-DDTHH:MM:SS.mmmZ`` time as unix seconds."""
    return datetime.fromisoformat(stored.replace("Z", "+00:00")).timestamp()


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What /v1/stats and retention need to know of the store as a whole."""

    size_bytes: int
    """On disk: the SQLite file with its WAL, the PostgreSQL database."""
    oldest_seq: int
    """The seq of the oldest kept tweet, 0 when empty (history starts there)."""
    oldest_received_at: float | None
    """When the oldest kept tweet was received (unix seconds), None when empty."""
    wal_bytes: int = 0
    """Of ``size_bytes``, the SQLite write-ahead log (kept small when idle); 0 elsewhere."""


@dataclass(frozen=True, slots=True)
class Trimmed:
    """What one retention step deleted."""

    deleted: int
    oldest_seq: int
    """The oldest kept seq afterwards (history starts there); 0 when empty."""


class Store(Protocol):
    epoch: str

    on_damage: Callable[[StoreCorrupt], None] | None
    """Called on the event loop each time a read or a write finds the store damaged,
    before it raises :class:`~relay.errors.StoreCorrupt` to its caller: the relay counts
    it and stops (``/readyz`` 503, exit 1). A damaged store never answers a read with
    less than it holds: a read that cannot be trusted raises."""

    @property
    def holder(self) -> str:
        """Who this process is, as other processes see it (``process 12 on web.1``)."""
        ...

    @property
    def is_writer(self) -> bool:
        """Opened to write (the ingesting roles); a serving process opens to read only."""
        ...

    async def claim_writer(self, on_standby: Callable[[str], None]) -> None:
        """Return once this process is the one active writer; writes before raise.

        While another writer is active a store that can wait for its turn
        (PostgreSQL's lease) calls ``on_standby`` with one line and waits; one that
        cannot (a SQLite file, whose lock is taken at open) has refused at open. A
        writer that loses its turn later raises :class:`~relay.errors.WriterFenced`
        from every write: it can no longer commit anything.
        """
        ...

    async def append(
        self, tweets: Sequence[Tweet], users: Sequence[dict[str, Any]], received_at: float
    ) -> AppendResult:
        """Store new tweets (dropping known ids) and return them with their seq.

        Returns after commit. A tweet the store cannot hold (a value it cannot
        bind or encode) is left out and listed in ``unstorable``; the others are
        stored. Raises :class:`~relay.errors.StoreError` only when the store itself
        fails (disk full, I/O error, corruption): nothing of the call is stored.
        """
        ...

    async def head(self) -> int:
        """The highest seq stored, 0 when empty."""
        ...

    async def read_after(
        self,
        channel: str,
        after: int,
        until: int,
        limit: int,
        *,
        max_bytes: int | None = None,
        conditions: Sequence[Condition] = (),
    ) -> list[StoredTweet]:
        """Tweets of ``channel`` with ``after < seq <= until`` that meet every condition
        (a subscription's filter), in seq order; the others are never read out.

        At most ``limit`` tweets, and no more once their bodies reach ``max_bytes``
        bytes (the first one always comes). A page shorter than ``limit`` whose bodies
        add up to less than ``max_bytes`` holds every match up to ``until``: the next
        read may start at ``until``.
        """
        ...

    async def read_bodies(
        self,
        channel: str,
        after: int,
        until: int,
        limit: int,
        build: Callable[[list[StoredBody]], T],
        *,
        max_bytes: int | None = None,
        conditions: Sequence[Condition] = (),
    ) -> BodyPage[T]:
        """The rows :meth:`read_after` reads, as ``(seq, body)`` only, handed to ``build``
        where the store reads them (SQLite: in its reader thread, so a catch-up's frames
        are built off the event loop); ``build`` must be pure and must not keep the list."""
        ...

    async def count_after(
        self, channel: str, after: int, until: int, *, cap: int | None = None
    ) -> int:
        """How many tweets ``read_after`` would give in all; counting stops past ``cap``."""
        ...

    async def query(
        self, query: TweetQuery, *, timeout: float | None = None
    ) -> tuple[list[bytes], int]:
        """Encoded objects for one page of the object API, and the total count.

        The store compiles ``query.conditions`` itself, each with the meaning
        :mod:`relay.core.query` gives it (a filter's conditions match exactly the tweets
        :meth:`relay.core.filters.TweetFilter.matches` passes). Page and count come from one
        snapshot. A query not finished ``timeout`` seconds after this call (waiting for a
        reader counts) is stopped, or never started, and raises
        :class:`~relay.errors.QueryTimeout`. Object API reads never hold up the readers
        of the stream side (``read_after``, ``count_after``, ``rule_keys``, ``head``).
        """
        ...

    async def tweet(
        self, tweet_id: str, scope: Sequence[Condition] = (), *, timeout: float | None = None
    ) -> bytes | None:
        """The tweet with this id when it also meets every condition of ``scope``."""
        ...

    async def user(
        self, user_id: str, scope: Sequence[Condition] = (), *, timeout: float | None = None
    ) -> bytes | None:
        """The user with this id; with a ``scope``, only when one of the user's
        tweets meets it (a user is readable when one of its tweets is)."""
        ...

    async def rule_keys(self) -> list[str]:
        """Every rule key that some stored tweet matched."""
        ...

    async def current_epoch(self) -> str:
        """The epoch as the store holds it now, read afresh: ``relay migrate --new-epoch``
        changes it under running processes, whose ``epoch`` attribute says what they
        opened (a stream-side read, cheap enough for every few seconds)."""
        ...

    async def highest_tweet_id(self, rule_key: str | None = None) -> str | None:
        """The newest stored tweet id, of one rule when ``rule_key`` is given."""
        ...

    async def oldest_seq(self) -> int:
        """The seq of the oldest kept tweet, 0 when empty (one index lookup)."""
        ...

    async def stats(self) -> StoreStats:
        """Size on disk and the oldest kept tweet: cheap (an index lookup, a stat)."""
        ...

    async def trim(self, *, through_seq: int, received_before: float | None, limit: int) -> Trimmed:
        """Delete at most ``limit`` of the oldest tweets with ``seq <= through_seq`` or
        received before ``received_before`` (unix seconds), oldest first, stopping at the
        first one kept; never the newest. Their search entries, rule memberships and
        authors no kept tweet has go too. One short write transaction (the writer's)."""
        ...

    async def checkpoint(self) -> None:
        """Give back what large deletes left behind (SQLite: the WAL; PostgreSQL: its
        autovacuum does, nothing to do)."""
        ...

    async def apply_deletions(self, limit: int) -> list[Deleted]:
        """Apply up to ``limit`` queued deletion requests in one write transaction (the
        writer's): each tweet goes with its search entry, rule memberships and lone
        author; each request is added to the record, found or not."""
        ...

    async def deletions_after(self, after: int, limit: int) -> list[Deleted]:
        """The record of applied requests past ``after``, in the writer's order."""
        ...

    async def last_deletion(self) -> int:
        """The newest entry of the record (0 when none)."""
        ...

    async def get_state(self, key: str) -> str | None:
        """Small durable values for sources (``since_id``, offsets) and the ingester's
        rule set (:mod:`relay.core.rule_set`); readable by every process, written by the
        writer only."""
        ...

    async def set_state(self, key: str, value: str) -> None: ...

    async def close(self) -> None: ...


async def read_channels(store: Store) -> Channels:
    """The channels known now: the rule set the ingester recorded, and every rule key a
    stored tweet matched (two small stream-side reads)."""
    declared = RuleSet.decode(await store.get_state(STATE_KEY))
    return Channels(declared, frozenset(await store.rule_keys()))
