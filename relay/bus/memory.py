"""The in-process bus of ``relay run``: the same path as Redis, without the network.

``publish`` appends to each follower's queue and wakes it; nothing is lost or
repeated, so the follower's gap checks never fire, but they run.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence

from relay.bus import BusItem, Heartbeat
from relay.store import StoredTweet


class _Queue:
    def __init__(self) -> None:
        self.items: deque[Sequence[BusItem]] = deque()
        self.ready = asyncio.Event()


class MemoryBus:
    """A :class:`relay.bus.Bus` inside one process."""

    def __init__(self) -> None:
        self._queues: list[_Queue] = []

    @property
    def connected(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    def publish(self, tweets: Sequence[StoredTweet]) -> None:
        if tweets:
            self._put(tuple(tweets))

    def announce(self, head: int) -> None:
        self._put((Heartbeat(head),))

    def _put(self, items: Sequence[BusItem]) -> None:
        for queue in self._queues:
            queue.items.append(items)
            queue.ready.set()

    def follow(self, after: int) -> AsyncIterator[Sequence[BusItem]]:
        # Registered now, not at the first iteration: everything published from this
        # call on reaches the follower. ``after`` needs no use: what came before is in
        # the store, and the follower reads it from there.
        queue = _Queue()
        self._queues.append(queue)
        return self._drain(queue)

    async def _drain(self, queue: _Queue) -> AsyncIterator[Sequence[BusItem]]:
        try:
            while True:
                await queue.ready.wait()
                queue.ready.clear()
                while queue.items:
                    yield queue.items.popleft()
        finally:
            self._queues.remove(queue)

    async def close(self) -> None:
        return None
