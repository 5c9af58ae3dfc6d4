"""Log sampling: a line any client can cause is written a bounded number of times."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class LogSampler:
    """At most ``burst`` lines per ``window`` seconds; then one line saying how many were not."""

    def __init__(
        self, burst: int = 20, window: float = 10.0, what: str = "refused requests"
    ) -> None:
        self.burst = burst
        self.what = what
        self.window = window
        self._start = float("-inf")
        self._logged = 0
        self._skipped = 0

    def allow(self, now: float) -> bool:
        if now - self._start >= self.window:
            if self._skipped:
                log.info("%d more %s were not logged", self._skipped, self.what)
            self._start, self._logged, self._skipped = now, 0, 0
        if self._logged < self.burst:
            self._logged += 1
            return True
        self._skipped += 1
        return False
