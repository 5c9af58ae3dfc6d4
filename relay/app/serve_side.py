"""The serve side of a relay process: bus -> follower -> hub -> clients on the one port.

Runs in ``relay run`` and ``relay serve``. It starts before the ingest side does, so the
first committed batch already finds its listeners, and it owns what only a serving
process has: the hub, the stream server, the follower, the stats sampler and the
deletion announcer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

from relay.access.decisions import Access
from relay.access.revocation import RevocationList
from relay.app.parts import api_limits, writer_silence
from relay.bus import Bus
from relay.config import Settings
from relay.errors import RelayError
from relay.jobs.deletions import DELETIONS_INTERVAL
from relay.jobs.scheduler import Housekeeping
from relay.jobs.stats import StatsSampler
from relay.obs.metrics import Metrics
from relay.obs.readiness import Readiness
from relay.store import Store
from relay.stream.announce import DeletionAnnouncer
from relay.stream.follower import Follower
from relay.stream.hub import Hub
from relay.web.routes import HttpApi
from relay.web.server import StreamServer

log = logging.getLogger(__name__)


class ServeSide:
    """Clients of one process: started once the store is open, stopped after ingest."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        housekeeping: Housekeeping,
        fail: Callable[[BaseException], None],
        *,
        role: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.housekeeping = housekeeping
        self.fail = fail
        self.role = role
        """The process's name for itself in the stats (``run`` or ``serve``)."""
        self.clock = clock
        self.hub: Hub | None = None
        self.server: StreamServer | None = None
        self.follower: Follower | None = None
        self.stats: StatsSampler | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def start(
        self,
        store: Store,
        bus: Bus,
        listener: socket.socket | None,
        revoked: RevocationList | None,
        readiness: Callable[[], Readiness],
    ) -> None:
        settings = self.settings
        hub = self.hub = Hub(
            store,
            self.metrics,
            head=await store.head(),
            catch_ups_at_once=settings.catch_ups_at_once,
            recovered_cap=settings.recovered_cap,
            coalesce=settings.coalesce_ms / 1000,
        )
        # Which channels exist: known before the first client, read again now and then
        # (and whenever a client names a channel missing from this copy).
        await hub.refresh_channels()
        self.housekeeping.every(settings.bus_check_interval, "known channels", hub.refresh_channels)
        access = Access(
            settings.policy(),
            settings.secrets(),
            self.clock,
            metrics=self.metrics,
            revoked=revoked if revoked is not None else frozenset(),
        )
        self.stats = StatsSampler(
            self.metrics, store, hub, role=self.role, process=store.holder, clock=self.clock
        )
        self.housekeeping.every(self.stats.interval, "stats", self.stats.sample, first=0)
        announcer = DeletionAnnouncer(store, hub)
        self.housekeeping.every(DELETIONS_INTERVAL, "deleted frames", announcer.run, first=0)
        api = HttpApi(
            store,
            hub,
            self.metrics,
            access,
            public_url=settings.public_url,
            readiness=readiness,
            limits=api_limits(settings),
            trusted_proxies=settings.trusted_proxies,
            wall_clock=self.clock,
            stats=self.stats,
            access_log=settings.access_log,
        )
        self.server = StreamServer(settings, hub, api, self.metrics, clock=self.clock)
        await self.server.start(listener)
        if revoked is not None:
            self.tasks.append(
                asyncio.create_task(
                    revoked.watch(settings.revoked_tokens_interval, self.server.close_revoked)
                )
            )
        # Following starts before ingest does: the first batch already finds it.
        self.follow(store, bus)

    def follow(self, store: Store, bus: Bus) -> None:
        """Hand what ``bus`` brings to the hub, filling gaps from ``store``."""
        assert self.hub is not None
        settings = self.settings
        self.follower = Follower(
            bus,
            store,
            self.hub,
            self.metrics,
            check_interval=settings.bus_check_interval,
            # Only a bus across processes carries the writer's heartbeats to watch for.
            writer_silence=writer_silence(settings) if settings.redis_url else None,
        )
        self.follower.start()
        self.tasks.append(asyncio.create_task(self._fail_with_follower(self.follower)))

    async def _fail_with_follower(self, follower: Follower) -> None:
        await follower.failed.wait()
        self.fail(follower.error or RelayError("the bus follower stopped"))

    async def adopt_epoch(self, store: Store, bus: Bus, head: int) -> int:
        """The store's epoch changed: reset every subscription and follow the new bus
        (the relay stopped the old follower before it closed the old bus). Returns how
        many subscriptions were reset."""
        if self.hub is None:
            return 0
        reset = self.hub.reset_epoch(head)
        self.metrics.head.set(head)
        self.follow(store, bus)
        return reset

    async def stop_accepting(self) -> None:
        if self.server is not None:
            await self.server.stop_accepting()

    async def drain(self, timeout: float, *, catch_up: bool) -> None:
        """What ingest stored last reaches clients (``catch_up``), then every client gets
        1001 with its last seq."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.follower is not None:
            if catch_up and self.hub is not None:
                with contextlib.suppress(Exception):  # the clients still get their 1001 below
                    await asyncio.wait_for(self.follower.catch_up(), timeout / 8)
            await self.follower.stop()
        if self.hub is not None:
            await self.hub.close_all(timeout / 4)
        if self.server is not None:
            try:  # clients got 1001 above; one that never answers the close is not waited for
                await asyncio.wait_for(self.server.wait_closed(), timeout / 8)
            except TimeoutError:
                log.warning("some connections did not close in time; dropped")
