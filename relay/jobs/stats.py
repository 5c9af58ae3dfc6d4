"""What one relay process is doing, every few seconds: ``GET /v1/stats`` and ``$stats``.

A :class:`StatsSampler` reads the serving process's own counters (Prometheus registry),
its hub and the store's catalog, and keeps the rates between two samples. Every
process reports its own figures: with several serving processes each answers for
itself (the README says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from relay.core.archive import CURSOR_KEY, EPOCH_START_KEY, parse_epoch_start, parse_mark
from relay.core.times import time_from_unix
from relay.store import Catalog

if TYPE_CHECKING:
    from relay.obs.metrics import Metrics
    from relay.stream.hub import Hub

STATS_INTERVAL = 5.0
"""Seconds between samples: rates are averaged over this window."""

Clock = Callable[[], float]


class StatsStore(Catalog, Protocol):
    """The catalog, and the writer's state (read only): the archive's cursor is there."""

    async def get_state(self, key: str) -> str | None: ...

    async def current_epoch(self) -> str: ...


class StatsSampler:
    def __init__(
        self,
        metrics: Metrics,
        store: StatsStore,
        hub: Hub,
        *,
        role: str,
        process: str,
        clock: Clock = time.time,
        interval: float = STATS_INTERVAL,
    ) -> None:
        self.metrics = metrics
        self.store = store
        self.hub = hub
        self.role = role
        self.process = process
        self.clock = clock
        self.interval = interval
        self.latest: dict[str, Any] | None = None
        self.archive: dict[str, Any] | None = None
        """The archive's range as the store's cursor says (None: nothing archived in
        this epoch, or no archive): /v1/info shows it, never the bucket."""
        self._last: tuple[float, float, float] | None = None
        """(time, tweets stored, frames sent) at the previous sample."""

    def _counter(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name) or 0.0

    async def sample(self) -> dict[str, Any]:
        """Take a sample now; rates are over the time since the previous one."""
        now = self.clock()
        stored = self._counter("relay_tweets_stored_total")
        frames = self.metrics.total("relay_frames_sent_total")
        tweets_rate = frames_rate = 0.0
        if self._last is not None and now > self._last[0]:
            window = now - self._last[0]
            tweets_rate = (stored - self._last[1]) / window
            frames_rate = (frames - self._last[2]) / window
        self._last = (now, stored, frames)
        store = await self.store.stats()
        hub = self.hub
        self.latest = {
            "type": "stats",
            "process": self.process,
            "role": self.role,
            "time": now,
            "interval": self.interval,
            "tweets_in_per_second": tweets_rate,
            "frames_out_per_second": frames_rate,
            "connections": len(hub.sessions),
            "transports": {kind: count for kind, count in sorted(hub.kinds.items()) if count},
            "subscribers": hub.subscriber_counts(),
            "head_seq": hub.head,
            "store": {
                "size_bytes": store.size_bytes,
                "wal_bytes": store.wal_bytes,
                "oldest_seq": store.oldest_seq,
                "oldest_age_seconds": (
                    round(now - store.oldest_received_at, 1)
                    if store.oldest_received_at is not None
                    else None
                ),
            },
        }
        self.archive = await self._archive_range(hub.head)
        if self.archive is not None:
            self.latest["archive"] = {
                "last_seq": self.archive["last_seq"],
                "lag_tweets": self.archive["lag_tweets"],
                "lag_seconds": self.archive["lag_seconds"],
            }
        hub.publish_stats(self.latest)
        return self.latest

    async def _archive_range(self, head: int) -> dict[str, Any] | None:
        """Read from the store, so every serving replica knows the writer's archive lag."""
        mark = parse_mark(await self.store.get_state(CURSOR_KEY))
        start = parse_epoch_start(await self.store.get_state(EPOCH_START_KEY))
        epoch = await self.store.current_epoch()
        if mark is None or start is None or mark.epoch != epoch or start.epoch != epoch:
            return None
        lag = max(0, head - mark.seq)
        self.metrics.archive_lag.set(lag)
        lag_seconds = round(max(0.0, self.clock() - mark.received), 1) if lag else 0.0
        self.metrics.archive_lag_seconds.set(lag_seconds)
        return {
            "first_seq": start.first_seq,
            "last_seq": mark.seq,
            "first_received_at": time_from_unix(start.start),
            "last_received_at": time_from_unix(mark.received),
            "lag_tweets": lag,
            "lag_seconds": lag_seconds,
        }

    async def current(self) -> dict[str, Any]:
        """The latest sample, or a new one when none was taken in the last interval."""
        if self.latest is None or self.clock() - self.latest["time"] > 2 * self.interval:
            return await self.sample()
        return self.latest
