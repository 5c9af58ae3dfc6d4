"""Waiting for a server that does not answer: one log line when the wait starts, one
when it ends, the tries in between at debug level.

A process that waits for PostgreSQL or Redis retries with backoff, for as long as it
takes (``relay serve`` and ``relay ingest`` outlive a database restart). A line a try
buries everything else in the log; a line per state change says the same. Several
loops may wait for the same server (Redis: the start, the sender, each follower): they
share one :class:`Outage`, so the server going away is one line whoever noticed it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Outage:
    """The state of one waited-for server (``what``: ``Redis at HOST:PORT``), as log lines."""

    def __init__(
        self, log: logging.Logger, what: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.log = log
        self.what = what
        self.clock = clock
        self.since: float | None = None
        """When the current wait started (``clock`` time); None while the server answers."""
        self.tries = 0
        """Failed tries of the current wait."""

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, reason: str, retry_in: float | None = None) -> None:
        """A try failed: the first of a wait is a warning, the others are debug lines."""
        self.tries += 1
        later = f"; retrying in {retry_in:.3g} s" if retry_in is not None else ""
        if self.since is None:
            self.since = self.clock()
            self.log.warning(
                "waiting for %s: %s%s (further tries at debug level)",
                self.what,
                reason,
                later,
            )
            return
        self.log.debug(
            "still waiting for %s after %.0f s (try %d): %s%s",
            self.what,
            self.elapsed(),
            self.tries,
            reason,
            later,
        )

    def answered(self) -> None:
        """A try succeeded: one line when it ends a wait, nothing otherwise."""
        if self.since is None:
            return
        self.log.info(
            "%s answers again after %.1f s (%d failed tries)", self.what, self.elapsed(), self.tries
        )
        self.since = None
        self.tries = 0

    def elapsed(self) -> float:
        """Seconds since the current wait started (0 when not waiting)."""
        return 0.0 if self.since is None else max(0.0, self.clock() - self.since)
