"""What one relay process is doing, every few seconds: ``GET /v1/stats`` and ``$stats``.

A :class:`StatsSampler` reads the serving process's own counters (Prometheus registry),
its hub and the store's catalog, and keeps the rates between two samples. Every
process reports its own figures: with several serving processes each answers for
itself (the README says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.obs.metrics import Metrics
    from relay.store import Catalog
    from relay.stream.hub import Hub

STATS_INTERVAL = 5.0
"""Seconds between samples: rates are averaged over this window."""

Clock = Callable[[], float]


class StatsSampler:
    def __init__(
        self,
        metrics: Metrics,
        store: Catalog,
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
        hub.publish_stats(self.latest)
        return self.latest

    async def current(self) -> dict[str, Any]:
        """The latest sample, or a new one when none was taken in the last interval."""
        if self.latest is None or self.clock() - self.latest["time"] > 2 * self.interval:
            return await self.sample()
        return self.latest
