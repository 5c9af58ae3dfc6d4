"""The serving side of the bus: what the bus brings reaches the hub in seq order, whole.

The store is the truth and the bus a hint (see :mod:`relay.bus`). The follower hands
the hub every tweet after the hub's head exactly once, in seq order: a seq it has is
dropped (a bus redelivers after a restart), and a jump, a heartbeat ahead of the
hub, or a store head ahead of it (checked every ``check_interval`` seconds, every
second while the bus is down) is filled by reading the store first. So a trimmed
stream, a Redis restart that lost it, or an ingester that died between commit and
publish costs clients latency, never a tweet.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from relay.bus import Bus, BusItem, Heartbeat
from relay.core.tweets import ALL_CHANNEL
from relay.errors import StoreCorrupt
from relay.obs.metrics import Metrics
from relay.store import Log, StoredTweet
from relay.stream.hub import Hub

log = logging.getLogger(__name__)

FILL_PAGE = 500
"""Most tweets one store read of a gap fill takes."""
FILL_PAGE_BYTES = 4 << 20
DOWN_INTERVAL = 1.0
"""Seconds between store checks while the bus is down: the store alone keeps clients fed."""


class Follower:
    def __init__(
        self,
        bus: Bus,
        store: Log,
        hub: Hub,
        metrics: Metrics,
        *,
        check_interval: float = 5.0,
        writer_silence: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self.writer_silence = writer_silence
        """Seconds without anything from the writer on the bus (a tweet or a heartbeat)
        after which one line says so, and one more when it is heard again; None: no
        watch (an in-process bus, whose writer is this process)."""
        self.clock = clock
        self._heard = clock()
        """When the bus last brought something from the writer."""
        self._silent = False
        """The silence was logged and nothing came since."""
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.check_interval = check_interval
        self._lock = asyncio.Lock()
        """One delivery at a time: a fill and a bus batch must not interleave."""
        self._tasks: list[asyncio.Task[None]] = []
        self.filled = 0
        """Tweets read from the store because the bus did not bring them."""
        self.error: BaseException | None = None
        self.failed = asyncio.Event()
        self.store_error: str | None = None
        """Why the last check of the store's head failed, while it fails (``/readyz``)."""

    def start(self) -> None:
        # follow() now, not in the task: the bus registers this follower before the
        # caller goes on to start ingest (the in-process bus would miss the first batch).
        items = self.bus.follow(self.hub.head)
        self._tasks = [
            asyncio.create_task(self._guard(self._consume(items)), name="follower-bus"),
            asyncio.create_task(self._guard(self._watch()), name="follower-store"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a bus client that is mid-reconnect may take a while to give up,
            # and a stop must never wait on it (the platform kills a slow stop).
            await asyncio.wait(self._tasks, timeout=1.0)

    async def _guard(self, step: Coroutine[Any, Any, None]) -> None:
        try:
            await step
        except asyncio.CancelledError:
            raise
        except StoreCorrupt as exc:  # the store told the relay, which logs it and stops
            self.error = exc
            self.failed.set()
        except Exception as exc:  # a bug: clients would silently stop getting tweets
            log.exception("the bus follower failed")
            self.error = exc
            self.failed.set()

    async def _consume(self, items: AsyncIterator[Sequence[BusItem]]) -> None:
        async for batch in items:
            self._heard_from_writer(batch)
            async with self._lock:
                await self._deliver(batch)

    def _heard_from_writer(self, batch: Sequence[BusItem]) -> None:
        now = self.clock()
        if self._silent:
            self._silent = False
            last = batch[-1]
            log.info(
                "the writer is heard on the bus again after %.0f s of silence (seq %d)",
                now - self._heard,
                last.head if isinstance(last, Heartbeat) else last.seq,
            )
        self._heard = now

    def _check_writer_heard(self, store_head: int) -> None:
        """Say once that no writer publishes: a standby about to take over, a worker not
        running or not reaching Redis. Nothing is lost meanwhile (the store is read)."""
        if self.writer_silence is None or self._silent:
            return
        if not self.bus.connected:  # the bus is down, not the writer: that is said apart
            self._heard = self.clock()
            return
        silent_for = self.clock() - self._heard
        if silent_for >= self.writer_silence:
            self._silent = True
            log.warning(
                "no heartbeat from the writer for %.0f s (store head seq %d): is a `relay "
                "ingest` running and reaching Redis? One line when it is heard again",
                silent_for,
                store_head,
            )

    async def catch_up(self) -> None:
        """Deliver everything the store holds now (a drain at stop, before 1001)."""
        head = await self.store.head()
        async with self._lock:
            await self._fill(head, "")

    async def _watch(self) -> None:
        """Compare the hub with the store's head now and then: a quiet loss shows here."""
        while True:
            await asyncio.sleep(self.check_interval if self.bus.connected else DOWN_INTERVAL)
            try:
                head = await self.store.head()
            except Exception as exc:  # the store is down: the next check tries again
                if self.store_error is None:
                    log.warning("cannot read the store's head: %s", exc)
                self.store_error = str(exc)
                continue
            if self.store_error is not None:
                log.info("the store answers again")
                self.store_error = None
            self.metrics.bus_lag.set(max(0, head - self.hub.head))
            self._check_writer_heard(head)
            if head > self.hub.head:
                async with self._lock:
                    await self._fill(head, "store head")

    async def _deliver(self, batch: Sequence[BusItem]) -> None:
        run: list[StoredTweet] = []
        for item in batch:
            if isinstance(item, Heartbeat):
                self._publish(run)
                run = []
                self.metrics.bus_lag.set(max(0, item.head - self.hub.head))
                if item.head > self.hub.head:
                    await self._fill(item.head, "heartbeat")
                continue
            last = run[-1].seq if run else self.hub.head
            if item.seq <= last:
                continue  # already delivered: a bus redelivers after a restart
            if item.seq > last + 1:
                self._publish(run)
                run = []
                await self._fill(item.seq - 1, "seq jump")
                if item.seq <= self.hub.head:
                    continue
                if item.seq > await self.store.head():
                    # Not in the store: never from our ingester, which publishes after
                    # commit (a foreign or stale writer on the bus). Publishing it would
                    # move the head past tweets still to come and hide them.
                    self.metrics.bus_foreign.inc()
                    log.warning("dropped bus entry seq %d: not in the store", item.seq)
                    continue
            run.append(item)
        self._publish(run)
        self.metrics.bus_lag.set(0)

    def _publish(self, tweets: list[StoredTweet]) -> None:
        if tweets:
            self.hub.publish(tweets)
            self.metrics.head.set(self.hub.head)

    async def _fill(self, until: int, why: str) -> None:
        """Publish the stored tweets after the hub's head up to ``until``, in pages."""
        started = time.monotonic()
        first = self.hub.head
        after = first
        while after < until:
            page = await self.store.read_after(
                ALL_CHANNEL, after, until, FILL_PAGE, max_bytes=FILL_PAGE_BYTES
            )
            self._publish([tweet for tweet in page if tweet.seq > self.hub.head])
            if len(page) < FILL_PAGE and sum(len(t.body) for t in page) < FILL_PAGE_BYTES:
                break  # a short page holds everything up to until (Log.read_after)
            after = page[-1].seq
        filled = self.hub.head - first
        if filled:
            self.filled += filled
            self.metrics.bus_filled.inc(filled)
            log.log(
                logging.INFO if why else logging.DEBUG,
                "filled %d tweets (seq %d to %d) from the store (%s) in %.0f ms",
                filled,
                first + 1,
                self.hub.head,
                why or "drain",
                (time.monotonic() - started) * 1000,
            )
