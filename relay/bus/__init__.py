"""Buses carry committed tweets from the one ingester to every serving process.

The ingester publishes each committed batch after its commit, in seq order; each
serving process follows the bus from the last seq it has and hands what comes to
its hub (:class:`relay.stream.follower.Follower`). In one process (``relay run``) the bus
is :class:`~relay.bus.memory.MemoryBus`; across processes it is Redis Streams
(:mod:`relay.bus.redis`), behind the same protocol, so both go through one path.

A bus is a hint, the store is the truth: a bus may lose items (a restart without
persistence, trimming, a publisher that died between commit and publish) or repeat
them (a new ingester). Followers drop seqs they already have and fill every jump,
and every heartbeat ahead of them, from the store: clients never see a gap.

May import: store types, obs, config, core, errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from relay.store import StoredTweet


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The publisher's head seq, sent every few seconds while it publishes.

    A follower behind it lost something while the stream was quiet, and reads
    the store up to it.
    """

    head: int


BusItem = StoredTweet | Heartbeat


class Bus(Protocol):
    @property
    def connected(self) -> bool:
        """Whether the bus is reachable now (``/readyz`` of a serving process)."""
        ...

    async def start(self) -> None:
        """Connect; waits with backoff (and says so in the log) until the bus is up."""
        ...

    def publish(self, tweets: Sequence[StoredTweet]) -> None:
        """Hand committed tweets, in seq order, to every follower.

        Never blocks and never raises for the bus's own failures: what cannot be
        sent is dropped and counted, and followers fill it from the store.
        """
        ...

    def announce(self, head: int) -> None:
        """The store's head seq as this publisher knows it; heartbeats carry it
        (together with what was published since) every few seconds from now on."""
        ...

    def follow(self, after: int) -> AsyncIterator[Sequence[BusItem]]:
        """Items published after seq ``after``, in order, in batches, for as long as
        the caller iterates. Reconnects by itself; never ends on its own."""
        ...

    async def close(self) -> None:
        """Send what is queued (within a short bound), then disconnect."""
        ...
