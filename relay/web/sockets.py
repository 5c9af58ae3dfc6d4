"""The shared port's sockets, before any byte is read: their names in log lines, the
bound on sockets per address (counted from the accept), and the sampling of asyncio's
accept errors when the process is out of file descriptors.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from relay.obs.sampling import LogSampler

if TYPE_CHECKING:
    from relay.obs.metrics import Metrics


def socket_name(address: Any) -> str:
    """A socket address for a log line: ``host:port`` (a tuple from the transport)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    return str(address)


class SocketCount:
    """Open TCP connections per socket address, in any state, against one bound.

    Counted from the accept, before any byte is read: a half-sent request, a plain
    HTTP request and an upgraded stream each hold a file descriptor, and only the
    upgraded ones count against ``max_connections_per_address``. ``bound`` 0 counts
    without refusing (behind a proxy every client has the proxy's address).
    """

    def __init__(self, bound: int, metrics: Metrics) -> None:
        self.bound = bound
        self.metrics = metrics
        self.open: Counter[str] = Counter()
        self.logged = LogSampler(what="connections over the socket bound")
        """For the line of a refusal, which the connection writes."""

    def add(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and counted) when over the bound."""
        if self.bound and self.open[address] >= self.bound:
            self.metrics.refused.labels("too_many_sockets").inc()
            return False
        self.open[address] += 1
        return True

    def remove(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]


class AcceptErrorFilter(logging.Filter):
    """Lets through a sample of asyncio's "out of system resource" accept errors.

    Out of file descriptors, asyncio logs a traceback at every retry of the accept
    (each second, for each listening socket) for as long as it lasts: one line per
    minute, and then how many were not logged, says the same.
    """

    MESSAGE = "socket.accept() out of system resource"

    def __init__(self) -> None:
        super().__init__()
        self.sampler = LogSampler(burst=1, window=60.0, what="accept errors (out of resources)")

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.MESSAGE):
            return True
        return self.sampler.allow(time.monotonic())


def sample_accept_errors() -> None:
    """Install :class:`AcceptErrorFilter` on asyncio's logger, once per process."""
    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, AcceptErrorFilter) for f in logger.filters):
        logger.addFilter(AcceptErrorFilter())
