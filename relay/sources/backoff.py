"""When to reconnect to the X filtered stream: X's documented guidance, as a pure schedule.

- a dropped connection that had been established: reconnect at once, but never sooner than
  ``min_delay`` after the last connect, so a tight loop of clean closes cannot burn the budget;
- network errors and stalls: linear backoff, 250 ms more each time, up to 16 s;
- HTTP errors: exponential backoff from 5 s, doubling, up to 320 s;
- HTTP 429: exponential backoff from 60 s, doubling, up to 15 minutes;
- and never more than ``budget`` connects in any ``window`` (X allows 50 per 15 minutes).

The time is passed in; nothing here sleeps.
"""

from __future__ import annotations

from collections import deque
from enum import StrEnum


class Cause(StrEnum):
    CLOSED = "closed"  # the server ended an established stream
    OPERATIONAL = "operational_disconnect"  # X said so in an errors message, then closed
    NETWORK = "network"
    STALL = "stall"  # no byte, keep-alives included, for longer than the stall timeout
    HTTP = "http"
    RATE_LIMITED = "rate_limited"  # HTTP 429
    NO_RULES = "no_rules"  # HTTP 409: the stream has no rules


NETWORK_STEP = 0.25
NETWORK_MAX = 16.0
HTTP_START = 5.0
HTTP_MAX = 320.0
RATE_LIMIT_START = 60.0
RATE_LIMIT_MAX = 900.0


class ReconnectSchedule:
    def __init__(self, *, budget: int = 50, window: float = 900.0, min_delay: float = 1.0) -> None:
        self.budget = budget
        self.window = window
        self.min_delay = min_delay
        self._connects: deque[float] = deque()
        self._network = 0.0
        self._http = 0.0
        self._rate_limited = 0.0

    def connected(self) -> None:
        """The stream answered 200: the error backoffs start over."""
        self._network = self._http = self._rate_limited = 0.0

    def record_connect(self, now: float) -> None:
        self._connects.append(now)

    def backoff(self, cause: Cause) -> float:
        """The wait the cause calls for, advancing its schedule."""
        if cause in (Cause.NETWORK, Cause.STALL):
            self._network = min(NETWORK_MAX, self._network + NETWORK_STEP)
            return self._network
        if cause is Cause.HTTP:
            self._http = HTTP_START if not self._http else min(HTTP_MAX, self._http * 2)
            return self._http
        if cause is Cause.RATE_LIMITED:
            self._rate_limited = (
                RATE_LIMIT_START
                if not self._rate_limited
                else min(RATE_LIMIT_MAX, self._rate_limited * 2)
            )
            return self._rate_limited
        return 0.0  # closed, operational disconnect, 409 after the rules are synced

    def wait_before_connect(self, now: float, backoff: float = 0.0) -> float:
        """Seconds to wait from ``now``: the backoff, the minimum spacing and the budget."""
        while self._connects and self._connects[0] <= now - self.window:
            self._connects.popleft()
        at = now + backoff
        if self._connects:
            at = max(at, self._connects[-1] + self.min_delay)
        if len(self._connects) >= self.budget:
            at = max(at, self._connects[len(self._connects) - self.budget] + self.window)
        return max(0.0, at - now)
