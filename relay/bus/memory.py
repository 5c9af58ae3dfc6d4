"""The in-process bus: publish calls each listener at once, on the event loop."""

from __future__ import annotations

from collections.abc import Sequence

from relay.bus import Listener
from relay.store import StoredTweet


class MemoryBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, tweets: Sequence[StoredTweet]) -> None:
        for listener in self._listeners:
            listener(tweets)
