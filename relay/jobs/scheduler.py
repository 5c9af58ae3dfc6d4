"""The relay's periodic jobs, on one APScheduler: stats, and the writer's upkeep.

Each job is a plain async function (tested on its own); this module only runs them
on time and decides what a failure means. A :class:`~relay.errors.StoreError` may
pass (PostgreSQL restarting, a busy file): it is counted, logged and the job runs
again at its next time. Anything else is a bug or a failure for good: the relay is
told through ``on_failure`` and stops cleanly, exit 1, instead of logging the same
traceback every interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from relay.errors import StoreError
from relay.obs.metrics import Metrics
from relay.obs.sampling import LogSampler

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


class _StopsQuietly(AsyncIOExecutor):  # type: ignore[misc]
    """APScheduler's asyncio executor, for which a run cancelled because the relay stops is
    no error: its shutdown cancels a run whose task has not started yet (the run's own
    handler never sees that), and the library would log it with a traceback."""

    def _run_job_error(self, job_id: str, exc: BaseException, traceback: object = None) -> None:
        if isinstance(exc, asyncio.CancelledError):
            self._run_job_success(job_id, [])  # its bookkeeping, and no line
            return
        super()._run_job_error(job_id, exc, traceback)


class Housekeeping:
    def __init__(self, metrics: Metrics, on_failure: Callable[[BaseException], None]) -> None:
        self.metrics = metrics
        self.on_failure = on_failure
        self.scheduler = AsyncIOScheduler(timezone=UTC, executors={"default": _StopsQuietly()})
        self._logged = LogSampler(what="failed housekeeping runs")
        self._stopped = False

    def every(self, seconds: float, name: str, job: Job, *, first: float | None = None) -> None:
        """Run ``job`` every ``seconds`` (first after ``first`` seconds, default one period)."""
        delay = seconds if first is None else first
        self.scheduler.add_job(
            self._run,
            "interval",
            args=[name, job],
            seconds=seconds,
            id=name,
            max_instances=1,  # a slow run is never doubled
            coalesce=True,  # runs missed while busy become one
            next_run_time=datetime.now(UTC) + timedelta(seconds=delay),
        )

    async def _run(self, name: str, job: Job) -> None:
        if self._stopped:
            return
        try:
            await job()
        except asyncio.CancelledError:
            return  # the relay is stopping: the store cancelled what was in flight
        except StoreError as exc:
            if self._stopped:
                return
            self.metrics.job_failures.labels(name).inc()
            if self._logged.allow(time.monotonic()):
                log.warning("%s failed, retried at its next run: %s", name, exc)
        except Exception as exc:
            if self._stopped:
                return
            self.metrics.job_failures.labels(name).inc()
            log.error("%s failed for good: %s", name, exc, exc_info=True)
            self.on_failure(exc)

    def start(self) -> None:
        """Start running jobs (added before or after: the writer's come once it is one)."""
        self.scheduler.start()

    def stop(self) -> None:
        self._stopped = True
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
