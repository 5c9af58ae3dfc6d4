"""Buses carry committed tweets from the ingest side to the hubs that serve clients.

In one process (``relay run``) the bus is a direct call. When ingest and serving run
in separate processes, a bus over Redis Streams takes its place behind the same
protocol. A bus delivers in seq order; hubs ignore a seq they have already published.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from relay.store import StoredTweet

Listener = Callable[[Sequence[StoredTweet]], None]


class Bus(Protocol):
    def publish(self, tweets: Sequence[StoredTweet]) -> None:
        """Hand committed tweets, in seq order, to every listener."""
        ...

    def listen(self, listener: Listener) -> None: ...
