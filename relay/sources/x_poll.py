"""Recent-search polling as a Source, for accounts without filtered-stream access.

One APScheduler interval job per rule searches with the rule as the query, from the
``since_id`` its resume point gives (the store's, so a restart neither misses nor
repeats), paging with ``next_token`` up to a cap. An HTTP 429 pauses that rule until the
``x-rate-limit-reset`` time the API gives. Results that overlap are stored once: the
store drops known ids.

The job is a plain async method, :meth:`XPollSource.poll`, so tests call it directly
with their own clock; :meth:`XPollSource.lines` registers it with the scheduler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import orjson
import requests
import tweepy
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from relay.core.rule_set import RuleSet
from relay.obs.metrics import Metrics
from relay.sources import RawLine, ResumePoint
from relay.sources.xapi import StreamRule, api_error, client, newest_id, search_pages

log = logging.getLogger(__name__)

Clock = Callable[[], float]


class XPollSource:
    name = "x-poll"

    def __init__(
        self,
        *,
        token: str,
        base_url: str,
        rules: Sequence[StreamRule],
        rules_origin: str = "the stream rules",
        newest_stored: ResumePoint,
        metrics: Metrics,
        clock: Clock,
        interval: float = 60.0,
        max_pages: int = 5,
    ) -> None:
        self.token = token
        self.base_url = base_url
        self.rules = list(rules)
        self.rule_set = RuleSet(frozenset(rule.key for rule in self.rules), True, rules_origin)
        """Its channels: the rules' keys and no other (ingest records them in the store)."""
        self.newest_stored = newest_stored
        """Asked at every poll: where the rule's search starts."""
        self.metrics = metrics
        self.clock = clock
        self.interval = interval
        self.max_pages = max_pages
        self.paused_until: dict[str, float] = {}
        self.found: dict[str, str] = {}
        """rule key -> the newest tweet id its searches returned."""
        self._queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()

    async def lines(self) -> AsyncIterator[RawLine]:
        scheduler = AsyncIOScheduler()
        for rule in self.rules:
            scheduler.add_job(
                self._poll_job,
                "interval",
                args=[rule],
                seconds=self.interval,
                max_instances=1,
                coalesce=True,
                next_run_time=_now_datetime(),
                id=f"poll {rule.key}",
            )
        scheduler.start()
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item  # the job failed for good: the source stops, exit 1
                yield RawLine(item, self.clock())
        finally:
            scheduler.shutdown(wait=False)

    async def _poll_job(self, rule: StreamRule) -> None:
        """The scheduled job: a failure for good reaches the ingest loop through the queue.

        Raised inside APScheduler it would only be logged, every interval, while the
        relay kept running without a source.
        """
        try:
            await self.poll(rule)
        except Exception as exc:
            await self._queue.put(exc)

    async def poll(self, rule: StreamRule) -> int:
        """Search one rule from its since_id; queue the pages; return how many."""
        if self.clock() < self.paused_until.get(rule.key, 0.0):
            return 0
        # since_id is the newest tweet of this rule stored or already found: the store's
        # survives a restart (a crash before the commit repeats the search), the one kept
        # here covers what is not committed yet, and a recording that stores nothing.
        since_id = newest_id(await self.newest_stored(rule.key), self.found.get(rule.key))
        try:
            pages = await asyncio.to_thread(self._search, rule, since_id)
        except tweepy.TooManyRequests as exc:
            reset = getattr(exc, "reset_time", None) or self.clock() + 60
            self.paused_until[rule.key] = float(reset)
            self.metrics.rate_limited.inc()
            log.warning("rate limited on %r: paused until %s", rule.value, reset)
            return 0
        except (tweepy.Unauthorized, tweepy.Forbidden) as exc:
            raise api_error(exc, "searching recent tweets") from None
        except tweepy.TweepyException as exc:
            self.metrics.poll_failures.labels(type(exc).__name__).inc()
            log.warning("search for %r failed, retried next interval: %s", rule.value, exc)
            return 0
        except requests.RequestException as exc:  # DNS, refused, reset, timeout: transient
            self.metrics.poll_failures.labels(type(exc).__name__).inc()
            log.warning(
                "search for %r could not reach the X API, retried next interval: %s",
                rule.value,
                type(exc).__name__,
            )
            return 0
        for page in pages:
            await self._queue.put(page)
        if pages:
            newest = orjson.loads(pages[0]).get("meta", {}).get("newest_id")
            self.found[rule.key] = newest_id(self.found.get(rule.key), newest) or ""
        self.metrics.poll_pages.inc(len(pages))
        if len(pages) == self.max_pages:
            log.warning(
                "search for %r stopped at poll_max_pages=%d; older results of this interval "
                "may be skipped (raise poll_max_pages or lower poll_interval)",
                rule.value,
                self.max_pages,
            )
        return len(pages)

    def _search(self, rule: StreamRule, since_id: str | None) -> list[bytes]:
        api = client(self.token, self.base_url)
        return list(search_pages(api, rule, since_id=since_id, max_pages=self.max_pages))


def _now_datetime() -> datetime:
    return datetime.now(UTC)
