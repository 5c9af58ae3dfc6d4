"""Stores: where tweets live, in seq order, exactly once.

The store assigns each new tweet a ``seq`` that increases strictly within its
``epoch`` (an id made when the store is created), drops tweets whose id it
already holds, and answers the reads the hub and the object API need.

It is seen through small roles, one per kind of caller, so each depends only on what
it uses: the :class:`Writer` (ingest and the writer's jobs), the :class:`Log` (the
stream side: hub, follower, deletion announcer), the :class:`Catalog` (the object API,
stats, a source's resume point) and the :class:`Admin` (the one-shot commands:
migrate, delete, backup, check, restore). Every store implements the first three in one object,
a :class:`Store`, and its admin side in another (admin work runs beside a writer
that holds the store). :mod:`relay.store.open` is the one place that picks the backend.

``sqlite/`` and ``postgres/`` hold the two backends under the same file names; the
shared types are in :mod:`relay.store.types`.

May import: obs, config, core, errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from relay.store.types import (
    AppendResult,
    Backup,
    BodyPage,
    Checked,
    Deleted,
    Migrated,
    Received,
    RestoreBatch,
    Restored,
    RestoredTweet,
    StoredBody,
    StoredTweet,
    StoreStats,
    Trimmed,
)

if TYPE_CHECKING:
    from relay.core.query import Condition, TweetQuery
    from relay.core.rule_set import Channels
    from relay.core.tweets import Tweet
    from relay.errors import StoreCorrupt

__all__ = [
    "Admin",
    "AppendResult",
    "Backup",
    "BodyPage",
    "Catalog",
    "Checked",
    "Deleted",
    "Log",
    "Migrated",
    "Received",
    "RestoreBatch",
    "Restored",
    "RestoredTweet",
    "Store",
    "StoreStats",
    "StoredBody",
    "StoredTweet",
    "Trimmed",
    "Writer",
]

T = TypeVar("T")


class Writer(Protocol):
    """The one active writer: ingest appends, its jobs trim, delete and keep state.

    Every write is fenced: a writer that lost its turn can commit nothing more.
    """

    async def claim_writer(self, on_standby: Callable[[str], None] | None = None) -> None:
        """Return once this process is the one active writer; writes before raise.

        While another writer is active a store that can wait for its turn
        (PostgreSQL's lease) calls ``on_standby`` with one line and waits; one that
        cannot (a SQLite file, whose lock is taken at open) has refused at open. A
        writer that loses its turn later raises :class:`~relay.errors.WriterFenced`
        from every write: it can no longer commit anything.
        """
        ...

    async def append(
        self,
        tweets: Sequence[Tweet],
        users: Sequence[dict[str, Any]],
        received_at: float | Received,
    ) -> AppendResult:
        """Store new tweets (dropping known ids) and return them with their seq.

        ``received_at``: when they were received, one time for all or a :class:`Received`
        with each one's own (ingest gives each tweet its line's time, so the batches it
        cuts never change what is stored).

        Returns after commit; seqs follow commit order. A tweet the store cannot hold
        (a value it cannot bind or encode) is left out and listed in ``unstorable``;
        the others are stored. Raises :class:`~relay.errors.StoreError` only when the
        store itself fails (disk full, I/O error, corruption): nothing of the call is
        stored.
        """
        ...

    async def head(self) -> int:
        """The highest seq stored, 0 when empty: what retention counts back from."""
        ...

    async def trim(self, *, through_seq: int, received_before: float | None, limit: int) -> Trimmed:
        """Delete at most ``limit`` of the oldest tweets with ``seq <= through_seq`` or
        received before ``received_before`` (unix seconds), oldest first, stopping at the
        first one kept; never the newest. Their search entries, rule memberships and
        authors no kept tweet has go too. One short write transaction."""
        ...

    async def checkpoint(self) -> None:
        """Give back what large deletes left behind (SQLite: the WAL; PostgreSQL: its
        autovacuum does, nothing to do)."""
        ...

    async def apply_deletions(self, limit: int) -> list[Deleted]:
        """Apply up to ``limit`` queued deletion requests in one write transaction: each
        tweet goes with its search entry, rule memberships and lone author; each request
        is added to the record, found or not."""
        ...

    async def get_state(self, key: str) -> str | None:
        """A small durable value the writer keeps: a source's or a job's cursor, the
        rule set ingest records (:mod:`relay.core.rule_set`); None when never set."""
        ...

    async def set_state(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key``: a write like any other, fenced the same way."""
        ...


class Log(Protocol):
    """The stream side: the history in seq order, read by catch-ups and the follower."""

    epoch: str
    """The epoch this process follows: the store's when opened, changed by the relay when
    the store's changes (:meth:`current_epoch`)."""

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
        (a subscription's filter), in seq order, with their receive times; the others are
        never read out.

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

    async def oldest_seq(self) -> int:
        """The seq of the oldest kept tweet, 0 when empty (one index lookup)."""
        ...

    async def seq_at(self, moment: float) -> int:
        """Where a rewind to ``moment`` (unix seconds) starts: the lowest seq of a kept
        tweet received (``received_at``, to the millisecond) at or after it; ``head() + 1``
        read in the same snapshot when none was.

        Every kept tweet received at or after the moment has this seq or a later one, so
        reading on from here misses none of them. Receive times grow with seq except
        where they stepped back (a recording replayed with its own older times, a clock
        set back): there a tweet received before the moment but stored after one
        received since comes too. One index lookup when receive times follow seq order
        around the moment; otherwise a read of the index from the moment on.
        """
        ...

    async def current_epoch(self) -> str:
        """The epoch as the store holds it now, read afresh: ``relay migrate --new-epoch``
        changes it under running processes, whose ``epoch`` attribute says what they
        opened (cheap enough for every few seconds)."""
        ...

    async def known_channels(self) -> Channels:
        """The channels known now: the rule set the ingester recorded, and every rule key
        a stored tweet matched (a subscription to another one may be refused)."""
        ...

    async def deletions_after(self, after: int, limit: int) -> list[Deleted]:
        """The record of applied deletion requests past ``after``, in the writer's order."""
        ...

    async def last_deletion(self) -> int:
        """The newest entry of the record (0 when none)."""
        ...


class Catalog(Protocol):
    """The stored tweets as objects: the object API, stats, a source's resume point.

    The object API's reads (:meth:`query`, :meth:`tweet`, :meth:`user`) have their own
    readers and a time limit: a heavy query never holds up the :class:`Log`'s reads.
    """

    async def query(
        self, query: TweetQuery, *, timeout: float | None = None
    ) -> tuple[list[bytes], int]:
        """Encoded objects for one page of the object API, and the total count.

        The store compiles ``query.conditions`` itself, each with the meaning
        :mod:`relay.core.query` gives it (a filter's conditions match exactly the tweets
        :meth:`relay.core.filters.TweetFilter.matches` passes). Page and count come from one
        snapshot. A query not finished ``timeout`` seconds after this call (waiting for a
        reader counts) is stopped, or never started, and raises
        :class:`~relay.errors.QueryTimeout`.
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
        """Every rule key that some stored tweet matched, sorted."""
        ...

    async def stats(self) -> StoreStats:
        """Size on disk and the oldest kept tweet: cheap (an index lookup, a stat)."""
        ...

    async def highest_tweet_id(self, rule_key: str | None = None) -> str | None:
        """The newest stored tweet id, of one rule when ``rule_key`` is given: where a
        source resumes (:data:`relay.sources.ResumePoint`)."""
        ...


class Store(Writer, Log, Catalog, Protocol):
    """A store as a process opens it (:func:`relay.store.open.open_store`): every role in
    one object, and what the process itself needs of it."""

    on_damage: Callable[[StoreCorrupt], None] | None
    """Called on the event loop each time a read or a write finds the store damaged,
    before it raises :class:`~relay.errors.StoreCorrupt` to its caller: the relay counts
    it and stops (``/readyz`` 503, exit 1). A damaged store never answers a read with
    less than it holds: a read that cannot be trusted raises."""

    @property
    def holder(self) -> str:
        """Who this process is, as other processes see it (``process 12 on web.1``)."""
        ...

    async def close(self) -> None:
        """Finish what is queued, hand the writer's turn back, close every connection."""
        ...


class Admin(Protocol):
    """A store's one-shot commands (``relay migrate``, ``delete``, ``backup``, ``check``,
    ``restore``):
    each opens what it needs and closes it, beside a writer that may hold the store."""

    where: str
    """What the commands' lines call the store (the SQLite file, ``PostgreSQL``)."""

    async def migrate(
        self, *, new_epoch: bool = False, force: bool = False, give_up_after: float | None = None
    ) -> Migrated:
        """Create or update the schema; with ``new_epoch`` also give the store a new epoch
        (after a restore: clients reset instead of resuming). Refused with
        :class:`~relay.errors.WriterBusy` while a writer holds the store and the schema
        is older or a new epoch is asked for (``force``: the holder is known dead). A
        server that does not answer within ``give_up_after`` seconds raises
        :class:`~relay.errors.StoreUnreachable`."""
        ...

    async def queue_deletions(self, ids: Sequence[str]) -> int:
        """Queue deletion requests for the active writer to apply; how many."""
        ...

    async def backup(self, out: Path) -> Backup:
        """A consistent copy, made while the relay writes, with a new epoch; a store that
        has its own tools for it raises :class:`~relay.errors.ConfigError` naming them."""
        ...

    async def integrity_check(self, *, quick: bool = False) -> Checked:
        """Read every page now (read only); a store that has its own tools for it raises
        :class:`~relay.errors.ConfigError` naming them."""
        ...

    async def restore(
        self,
        batches: AsyncIterable[RestoreBatch],
        *,
        epoch: str,
        state: Callable[[], Mapping[str, str]],
        progress: Callable[[int, int], None] | None = None,
    ) -> Restored:
        """Rebuild an empty store (``relay restore``): every tweet under the seq and the
        receive time its batch gives (increasing seqs; an id already stored is left
        out), then, in one transaction, the writer's state ``state()`` gives once every
        batch is stored (the archive's cursor) and ``epoch``, new, as after a backup.

        Opens the store as its one writer: :class:`~relay.errors.WriterBusy` while
        another process is; :class:`~relay.errors.StoreNotEmpty` when it holds a tweet
        (created and migrated first when there is none yet). Each batch commits in its
        own transaction, then ``progress(tweets so far, last seq)``: an interrupted
        restore leaves a partial store, to be emptied (a new file or database) before
        running it again."""
        ...
