"""The ingest side of a relay process: source -> parse -> store -> bus.

Runs in ``relay run`` and ``relay ingest``. It waits for the writer's turn (a standby
waits here), then ingests until stopped, and runs the jobs only the active writer runs
(deletions, retention). It publishes to the bus, never to the hub: the serve side's
follower joins them, in one process as in many.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from relay.app.sources import Clock, Sleep, build_source, deleted_ids
from relay.archive.bucket import Bucket
from relay.bus import Bus
from relay.config import Settings
from relay.errors import RelayError
from relay.ingest.finished import ReplaySummary, summary_of
from relay.ingest.pipeline import Ingest
from relay.jobs.archive import Archiver
from relay.jobs.deletions import DELETIONS_INTERVAL, apply_deletions
from relay.jobs.retention import Retention, apply_retention
from relay.jobs.scheduler import Housekeeping
from relay.obs.metrics import Metrics
from relay.sources import Source
from relay.store import Store

log = logging.getLogger(__name__)


class IngestSide:
    """One process's ingest: started after the serve side, stopped (drained) first."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        housekeeping: Housekeeping,
        fail: Callable[[BaseException], None],
        *,
        source: Source | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.housekeeping = housekeeping
        self.fail = fail
        self.clock = clock
        self.sleep = sleep
        self._source = source
        self.bucket: Bucket | None = None
        """The archive's, checked writable at start (the relay sets it); None: no archive."""
        self.archiver: Archiver | None = None
        self.ingest: Ingest | None = None
        self.ingesting = asyncio.Event()
        """Set once this process holds the writer's turn and its source runs."""
        self.waiting = ""
        """What it waits for (the writer lease), for ``/readyz``; empty once ingesting."""
        self.finished = asyncio.Event()
        self.summary: ReplaySummary | None = None
        self.tasks: list[asyncio.Task[None]] = []
        """Cancelled by the relay's stop, after the drain."""

    async def run(
        self,
        store: Store,
        bus: Callable[[], Bus],
        *,
        rule_set_recorded: Callable[[], Awaitable[None]] | None,
        published: Callable[[], Awaitable[None]] | None,
        stopping: Callable[[], bool],
    ) -> None:
        """Wait for the writer's turn, then ingest until stopped or failed.

        ``bus`` gives the bus of the epoch now (a standby may have seen it change);
        ``rule_set_recorded`` lets a process that serves too learn the rule set at once;
        ``published`` waits until the hub holds the store's head (for the summary).
        """
        self.waiting = "standing by for the writer lease"
        waited_since = time.monotonic()
        stood_by = False

        def standing_by(line: str) -> None:
            nonlocal stood_by
            stood_by = True
            log.info("%s", line)

        try:
            await store.claim_writer(standing_by)
        except Exception as exc:
            self.fail(exc)
            return
        self.metrics.writer_active.set(1)
        head = await store.head()
        if stood_by:
            # The line an operator watching a failover looks for: this process writes now.
            log.warning(
                "became the active writer after %.0f s standing by, at seq %d (%s)",
                time.monotonic() - waited_since,
                head,
                store.holder,
            )
        else:
            log.info("active ingester (%s): continuing after seq %d", store.holder, head)
        publisher = bus()
        publisher.announce(head)
        source = self._source or build_source(
            self.settings,
            store.highest_tweet_id,
            self.metrics,
            self.clock,
            self.sleep,
            deleted=deleted_ids(store, self.metrics),
        )
        ingest = self.ingest = Ingest(
            source,
            store,
            publisher.publish,
            self.metrics,
            batch_size=self.settings.batch_size,
            parse_processes=self.settings.parse_processes,
            clock=self.clock,
        )
        try:
            # Before the first tweet and before ready: serving processes check
            # subscriptions against the set as soon as clients come.
            await ingest.record_rule_set()
            if rule_set_recorded is not None:
                await rule_set_recorded()
        except Exception as exc:
            self.metrics.writer_active.set(0)
            self.fail(exc)
            return
        ingest.start()
        self._schedule_writer_jobs(store)
        if self.bucket is not None:
            self.archiver = Archiver(
                store,
                self.bucket,
                self.metrics,
                object_tweets=self.settings.archive_object_tweets,
                object_interval=self.settings.archive_object_interval,
            )
            log.info("archiving every committed tweet to %s", self.bucket.url)
            self.tasks.append(asyncio.create_task(self.archiver.run(), name="archive"))
        self.tasks.append(
            asyncio.create_task(self._when_finished(ingest, published, stopping), name="finished")
        )
        self.waiting = ""
        self.ingesting.set()
        await ingest.failed.wait()
        self.metrics.writer_active.set(0)
        self.fail(ingest.error or RelayError("ingest stopped"))

    def _schedule_writer_jobs(self, store: Store) -> None:
        """The writer's upkeep: only the active writer deletes (a standby never does)."""
        self.housekeeping.every(
            DELETIONS_INTERVAL,
            "deletions",
            lambda: apply_deletions(store, self.metrics),
            first=0.5,
        )
        retention = Retention.from_settings(self.settings)
        if not retention.active:
            return
        bounds = [f"at most {retention.max_tweets:,} tweets"] if retention.max_tweets else []
        if retention.max_age:
            bounds.append(f"tweets received in the last {retention.max_age:g} s")
        log.info("retention: keeping %s", " and ".join(bounds))

        async def run() -> None:
            self.metrics.retention_deleted.inc(
                await apply_retention(store, retention, self.clock(), self.metrics)
            )

        self.housekeeping.every(self.settings.retention_interval, "retention", run, first=1.0)

    async def _when_finished(
        self,
        ingest: Ingest,
        published: Callable[[], Awaitable[None]] | None,
        stopping: Callable[[], bool],
    ) -> None:
        """Log the summary once the source ended and all it sent reached the hub."""
        await ingest.finished.wait()
        if stopping():
            return
        cut = ingest.source_error
        if cut is not None and ingest.error is cut:
            # The source stopped on an error after every line it gave was stored and
            # published (a cut recording): say what was read, and that it was cut. The
            # relay then stops with the error (exit 1); clients get what was published.
            self.summary = summary_of(self.metrics, cut=str(cut))
            log.warning("%s", self.summary)
            return
        if ingest.failed.is_set():
            return
        if published is not None:
            await published()  # the hub holds the store's head
        if stopping():
            return
        self.summary = summary_of(self.metrics)
        log.info("%s", self.summary)
        self.finished.set()

    async def stop(self, timeout: float) -> bool:
        """Stop the source and drain what it sent; False when that ran out of time."""
        if self.ingest is None:
            return True
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.ingest.stop(), timeout)
        except TimeoutError:
            log.error("ingest did not drain in time: tweets read but not stored are lost")
            return False
        if self.archiver is not None:
            # What was committed goes to the archive before the process exits; the loop
            # stops first so that one upload is never made twice at once.
            for task in self.tasks:
                if task.get_name() == "archive":
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await self.archiver.flush(max(0.5, timeout - (time.monotonic() - started)))
        return True
