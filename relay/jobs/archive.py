"""The archive writer: every committed tweet copied to object storage, once per epoch.

Run by the active writer only (like retention), as one loop: read the committed tweets
past the archive's cursor in seq order, cut an object at ``object_tweets`` tweets or once
its first tweet has waited ``object_interval`` seconds, and upload it. Crash safety:

- the next object's range (first and last seq, their receive times) is recorded in the
  store (``archive.next``) before the upload, and the cursor moves after it; a process
  killed in between uploads that same range again on restart, under the same key, with
  the same bytes (:mod:`relay.core.archive` writes gzip without a timestamp). The range
  is cut by seq: the wall clock only decides when to cut, never what goes in;
- a standby that takes over reads the same state and goes on from it.

Deletions hold in the archive: after each upload the loop reads the store's deletion
record past its own cursor (``archive.deletions``) and rewrites, under the same key, every
object that holds a deleted tweet, each object once per batch.

An upload that fails is retried with backoff; ingest and serving never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from relay.archive.bucket import Bucket
from relay.core.archive import (
    CURSOR_KEY,
    DELETIONS_KEY,
    EPOCH_START_KEY,
    NEXT_KEY,
    ArchivedTweet,
    ArchiveMark,
    EpochStart,
    ObjectName,
    decode_object,
    encode_object,
    next_text,
    parse_epoch_start,
    parse_key,
    parse_mark,
    parse_next,
)
from relay.core.tweets import ALL_CHANNEL
from relay.errors import ArchiveError, ArchiveUnreachable, ConfigError
from relay.obs.metrics import Metrics
from relay.obs.waits import Outage
from relay.store import Deleted, StoredTweet

log = logging.getLogger(__name__)

RETRY_START = 1.0
RETRY_MAX = 60.0
DELETIONS_BATCH = 1000
IDLE_POLL = 0.5
"""Seconds between looks at the store's head while nothing waits to be archived."""


class ArchiveStore(Protocol):
    """What the archive writer needs of the store: the writer's state, the log's reads."""

    async def head(self) -> int: ...

    async def current_epoch(self) -> str: ...

    async def read_after(
        self, channel: str, after: int, until: int, limit: int
    ) -> list[StoredTweet]: ...

    async def deletions_after(self, after: int, limit: int) -> list[Deleted]: ...

    async def get_state(self, key: str) -> str | None: ...

    async def set_state(self, key: str, value: str) -> None: ...


class Archiver:
    def __init__(
        self,
        store: ArchiveStore,
        bucket: Bucket,
        metrics: Metrics,
        *,
        object_tweets: int,
        object_interval: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.bucket = bucket
        self.metrics = metrics
        self.object_tweets = object_tweets
        self.object_interval = object_interval
        self.clock = clock
        self.sleep = sleep
        self.outage = Outage(log, f"the archive at {bucket.url}")
        self.cursor: ArchiveMark | None = None
        self._pending_since: float | None = None
        """When (``clock``) the oldest tweet not yet archived was first seen waiting."""
        self._idle = asyncio.Event()

    async def run(self) -> None:
        """Archive until cancelled; each failure is retried with backoff."""
        delay = RETRY_START
        while True:
            try:
                progressed = await self.step()
                await self.apply_deletions()
            except (ArchiveError, ConfigError) as exc:
                self._failed(exc, delay)
                await self.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.outage.answered()
            delay = RETRY_START
            if not progressed:
                await self.sleep(IDLE_POLL)

    async def flush(self, timeout: float) -> bool:
        """Upload everything committed now (a clean stop); False when time ran out."""
        deadline = self.clock() + timeout
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        while await self.step(final=True):
                            pass
                        await self.apply_deletions()
                        return True
                    except (ArchiveError, ConfigError) as exc:
                        self._failed(exc, 0.5)
                        await self.sleep(min(0.5, max(0.0, deadline - self.clock())))
        except TimeoutError:
            head = await self.store.head()
            done = self.cursor.seq if self.cursor else 0
            log.error(
                "the archive is %d tweets behind at stop: the next writer uploads them",
                max(0, head - done),
            )
            return False

    def _failed(self, exc: BaseException, retry_in: float) -> None:
        cause = (
            "unreachable"
            if isinstance(exc, ArchiveUnreachable)
            else ("refused" if isinstance(exc, ConfigError) else "error")
        )
        self.metrics.archive_failures.labels(cause).inc()
        self.outage.failed(str(exc), retry_in)

    async def _load_cursor(self, epoch: str) -> ArchiveMark:
        mark = parse_mark(await self.store.get_state(CURSOR_KEY))
        if mark is None or mark.epoch != epoch:
            # A new store or a new epoch (a restore): archive this epoch's history from
            # its start; each epoch's objects sit in a folder of their own.
            mark = ArchiveMark(epoch, 0, 0.0)
        self.cursor = mark
        return mark

    async def step(self, *, final: bool = False) -> bool:
        """Upload at most one object; True when one was uploaded."""
        epoch = await self.store.current_epoch()
        cursor = await self._load_cursor(epoch)
        pending = parse_next(await self.store.get_state(NEXT_KEY))
        if pending is not None and pending.epoch == epoch and pending.first_seq > cursor.seq:
            # Recorded before a crash (or a failed upload): the same range again.
            await self._upload(pending)
            return True
        head = await self.store.head()
        self.metrics.archive_lag.set(max(0, head - cursor.seq))
        if head <= cursor.seq:
            self._pending_since = None
            self.metrics.archive_lag_seconds.set(0)
            return False
        now = self.clock()
        if self._pending_since is None:
            self._pending_since = now
        self.metrics.archive_lag_seconds.set(now - self._pending_since)
        tweets = await self.store.read_after(ALL_CHANNEL, cursor.seq, head, self.object_tweets)
        if not tweets:  # every one past the cursor was deleted before it was archived
            return False
        full = len(tweets) >= self.object_tweets
        if not (full or final or now - self._pending_since >= self.object_interval):
            return False
        start = await self._epoch_start(epoch, tweets[0])
        first, last = tweets[0], tweets[-1]
        name = ObjectName(start, epoch, first.seq, last.seq, first.received, last.received)
        await self.store.set_state(NEXT_KEY, next_text(name))
        await self._upload(name, tweets)
        self._pending_since = None if last.seq >= head else now
        return True

    async def _epoch_start(self, epoch: str, first: StoredTweet) -> float:
        known = parse_epoch_start(await self.store.get_state(EPOCH_START_KEY))
        if known is not None and known.epoch == epoch:
            return known.start
        start = EpochStart(epoch, first.received, first.seq)
        await self.store.set_state(EPOCH_START_KEY, start.text())
        return start.start

    async def _upload(self, name: ObjectName, tweets: Sequence[StoredTweet] | None = None) -> None:
        if tweets is None:
            tweets = await self.store.read_after(
                ALL_CHANNEL, name.first_seq - 1, name.last_seq, name.last_seq - name.first_seq + 1
            )
        lines = [ArchivedTweet(name.epoch, t.seq, t.received, t.channels, t.body) for t in tweets]
        data = await asyncio.to_thread(encode_object, lines)
        await self.bucket.put(name.key(""), data)
        mark = ArchiveMark(name.epoch, name.last_seq, name.last_received)
        await self.store.set_state(CURSOR_KEY, mark.text())
        self.cursor = mark
        self.metrics.archive_objects.inc()
        self.metrics.archive_tweets.inc(len(lines))
        self.metrics.archive_bytes.inc(len(data))

    async def apply_deletions(self) -> int:
        """Rewrite the objects holding tweets deleted since the last call; how many."""
        done_text = await self.store.get_state(DELETIONS_KEY)
        done = int(done_text) if done_text and done_text.isdigit() else 0
        batch = await self.store.deletions_after(done, DELETIONS_BATCH)
        if not batch:
            return 0
        archived = self.cursor.seq if self.cursor else 0
        # Deletions of tweets past the cursor wait: the next upload reads the store,
        # which no longer holds them; one in an object being uploaded is caught here next
        # time, once the cursor has passed it.
        batch = batch[: next((i for i, d in enumerate(batch) if d.seq > archived), len(batch))]
        if not batch:
            return 0
        rewritten = await self._rewrite(batch)
        await self.store.set_state(DELETIONS_KEY, str(batch[-1].n))
        return rewritten

    async def _rewrite(self, deletions: Sequence[Deleted]) -> int:
        ids = {d.tweet_id for d in deletions}
        seqs = [d.seq for d in deletions if d.seq]
        anywhere = any(d.seq == 0 for d in deletions)
        rewritten = 0
        for key in await self.bucket.keys():
            name = parse_key(key)
            if name is None:
                continue
            # A tweet the store no longer held when deleted (retention took it) may be in
            # any object: those are all read. The others only where their seq falls.
            if not anywhere and not any(name.first_seq <= s <= name.last_seq for s in seqs):
                continue
            data = await self.bucket.get(key)
            if data is None:
                continue
            tweets = list(decode_object(data, where=key))
            kept = [t for t in tweets if _tweet_id(t) not in ids]
            if len(kept) == len(tweets):
                continue
            await self.bucket.put(key, await asyncio.to_thread(encode_object, kept))
            self.metrics.archive_rewritten.inc()
            rewritten += 1
        if rewritten:
            log.info("archive: %d objects rewritten without deleted tweets", rewritten)
        return rewritten


def _tweet_id(tweet: ArchivedTweet) -> str:
    import orjson

    value = orjson.loads(tweet.body)
    return str(value.get("id", "")) if isinstance(value, dict) else ""
