"""Wires a :class:`~relay.config.Settings` into running parts, and stops them cleanly.

A :class:`Relay` is a serve side (:mod:`relay.app.serve_side`), an ingest side
(:mod:`relay.app.ingest_side`), or both (``relay run``), over one store and one bus.
Start order: store, bus, the serve side (hub, HTTP/WebSocket server, the bus follower),
then (once this process holds the writer's turn) the ingest side, so the first tweet
already finds its listeners. Stop order is the reverse, and drains: the source stops,
what it sent is committed and published, every client gets what is queued for it and
then 1001 with its last seq, the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

from relay.access.revocation import RevocationList
from relay.app.ingest_side import IngestSide
from relay.app.parts import announce_access, listening_socket, open_bus
from relay.app.serve_side import ServeSide
from relay.app.sources import Clock, Sleep, check_source
from relay.archive.bucket import Bucket, parse_url, wait_until_writable
from relay.bus import Bus
from relay.config import Settings
from relay.errors import ConfigError, StoreCorrupt, StoreError, StoreNotReady
from relay.ingest.finished import ReplaySummary
from relay.ingest.pipeline import Ingest
from relay.jobs.scheduler import Housekeeping
from relay.jobs.stats import StatsSampler
from relay.obs.metrics import Metrics
from relay.obs.readiness import READY, Readiness
from relay.obs.waits import Outage
from relay.sources import Source
from relay.store import Store
from relay.store.open import open_store
from relay.stream.follower import Follower
from relay.stream.hub import Hub
from relay.web.ops import OpsServer
from relay.web.server import StreamServer

log = logging.getLogger(__name__)

__all__ = ["ROLES", "Relay", "wait_for_store"]

ROLES = {"run": ("ingest", "serve"), "ingest": ("ingest",), "serve": ("serve",)}
"""The sides each process runs. ``run``: source, store and clients in one process (the
embedded mode). ``ingest``: source -> store -> bus, no client port. ``serve``: bus ->
clients, any number of them."""

CLAIM_GRACE = 1.0
"""Seconds ``start`` waits for the writer lease before it returns standing by."""


class Relay:
    """One relay process: its sides, built from the same parts.

    Every process publishes and follows through a bus: the ingest side hands each
    committed batch to ``bus.publish``; the serve side's follower hands what the bus
    brings to the hub, filling gaps from the store. In ``run`` the bus is in-process (or
    Redis when ``redis_url`` is set, so more ``serve`` processes can join).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        source: Source | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        role: str = "run",
        metrics_port: int | None = None,
    ) -> None:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}")
        self.settings = settings
        self.role = role
        self.clock = clock
        self.sleep = sleep
        self.metrics = Metrics()
        self.metrics_port = metrics_port
        self.bus: Bus | None = None
        self._running = False
        self._stopping = False
        self.drained = True
        """False when a stop ran out of time before ingest had drained."""
        self.store: Store | None = None
        self.ops: OpsServer | None = None
        self.housekeeping = Housekeeping(self.metrics, self._fail)
        sides = ROLES[role]
        self.ingest_side = (
            IngestSide(
                settings, self.metrics, self.housekeeping, self._fail,
                source=source, clock=clock, sleep=sleep,
            )
            if "ingest" in sides
            else None
        )  # fmt: skip
        self.serve_side = (
            ServeSide(settings, self.metrics, self.housekeeping, self._fail, role=role, clock=clock)
            if "serve" in sides
            else None
        )
        self._source = source
        self.failed = asyncio.Event()
        """Set when the process cannot go on: ingest, the lease or the follower failed."""
        self._error: BaseException | None = None
        self._waiting = ""
        """What start is waiting for (the store), for ``/readyz``."""
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: socket.socket | None = None
        self.finished = (
            self.ingest_side.finished if self.ingest_side is not None else asyncio.Event()
        )
        """Set once a source that ends (a replay without loop) has ended and everything it
        sent is stored and published; :attr:`summary` then says what it did."""
        self.listening = asyncio.Event()
        """Set once :attr:`port` accepts connections (a serving process still waiting for
        its store already answers health checks there)."""

    @property
    def ingests(self) -> bool:
        return self.ingest_side is not None

    @property
    def serves(self) -> bool:
        return self.serve_side is not None

    @property
    def serves_only(self) -> bool:
        """A ``relay serve`` process: its port is for clients and health checks only."""
        return self.serve_side is not None and self.ingest_side is None

    # What each side holds, where tests and the testing kit look for it.
    @property
    def ingest(self) -> Ingest | None:
        return self.ingest_side.ingest if self.ingest_side is not None else None

    @property
    def summary(self) -> ReplaySummary | None:
        return self.ingest_side.summary if self.ingest_side is not None else None

    @property
    def hub(self) -> Hub | None:
        return self.serve_side.hub if self.serve_side is not None else None

    @property
    def server(self) -> StreamServer | None:
        return self.serve_side.server if self.serve_side is not None else None

    @property
    def follower(self) -> Follower | None:
        return self.serve_side.follower if self.serve_side is not None else None

    @property
    def stats(self) -> StatsSampler | None:
        return self.serve_side.stats if self.serve_side is not None else None

    async def start(self) -> None:
        settings = self.settings
        if self._source is None and self.ingests:
            self._waiting = "checking the source (an archive: waiting for it)"
            await check_source(settings, self.sleep)
        revoked = (
            RevocationList.open(settings.revoked_tokens_file)
            if settings.revoked_tokens_file and self.serves
            else None
        )
        if self.serves_only or self.metrics_port is not None:
            # Up before the store: a health check gets 503 and why, not a refused port.
            port = settings.port if self.serves_only else self.metrics_port
            self.ops = OpsServer(
                settings.host,
                port or 0,
                self.readiness,
                None if self.serves else self.metrics,
            )
            if self.serves_only:
                # One listening socket for the whole life of the process: the health
                # server answers on a copy until the real server takes the socket over.
                self._listener = listening_socket(settings.host, port or 0)
                await self.ops.start(self._listener.dup())
            else:
                await self.ops.start()
            self.listening.set()
        if self.serves and self._listener is None:
            # Bound before the store opens: a port in use is one line at once, not a
            # traceback after the migrations.
            self._listener = listening_socket(settings.host, settings.port)
        if self.ingest_side is not None and settings.archive_url:
            # Before the store: a bad URL, a missing bucket or refused credentials is one
            # line and exit 2 before anything runs; an endpoint that does not answer is
            # waited for, as the database is.
            self._waiting = "waiting for the archive"
            bucket = Bucket(parse_url(settings.archive_url))
            await wait_until_writable(bucket, self.sleep)
            self.ingest_side.bucket = bucket
        self._waiting = "waiting for the store"
        store = self.store = await wait_for_store(
            settings, writer=self.ingests, serves=self.serves, sleep=self.sleep
        )
        store.on_damage = self._store_damaged
        self.bus = open_bus(settings, store.epoch, self.metrics)
        self._tasks.append(asyncio.create_task(self._start_bus(self.bus), name="bus-start"))
        if self.serve_side is not None:
            await self.serve_side.start(store, self.bus, self._listener, revoked, self.readiness)
            if self.ops is not None and self.serves_only:
                await self.ops.stop()  # its copy of the socket only: the server listens on
                self.ops = None
            self.listening.set()
        self.housekeeping.every(
            settings.bus_check_interval,
            "store check",
            self._check_store,
            first=settings.bus_check_interval,
        )
        self.housekeeping.start()
        self._running = True
        self._waiting = ""
        if self.ingest_side is not None:
            await self._start_ingest(self.ingest_side, store)
        standing_by = (
            self.ingest_side is not None
            and not self.ingest_side.ingesting.is_set()
            and not self.failed.is_set()
        )
        log.info(
            "relay %s started%s: store epoch %s, head seq %d",
            self.role,
            ", standing by for the writer lease (not writing)" if standing_by else "",
            store.epoch,
            self.hub.head if self.hub is not None else await store.head(),
        )
        if self.serves:
            announce_access(settings)

    async def _start_ingest(self, side: IngestSide, store: Store) -> None:
        async def published() -> None:
            if self.follower is not None:
                await self.follower.catch_up()

        async def rule_set_recorded() -> None:
            if self.hub is not None:  # this process serves too: it knows the set at once
                await self.hub.refresh_channels()

        def bus() -> Bus:
            assert self.bus is not None
            return self.bus

        writing = asyncio.create_task(
            side.run(
                store,
                bus,
                rule_set_recorded=rule_set_recorded,
                published=published,
                stopping=lambda: self._stopping,
            )
        )
        self._tasks.append(writing)
        # Until ingest runs (at once when the lease is free: no need to wait the grace
        # out) or the grace is over and this process stands by.
        ingesting = asyncio.create_task(side.ingesting.wait())
        await asyncio.wait(
            [writing, ingesting], timeout=CLAIM_GRACE, return_when=asyncio.FIRST_COMPLETED
        )
        ingesting.cancel()

    async def _start_bus(self, bus: Bus) -> None:
        """Connect the bus in the background: until it is up, ingest still stores (the
        store is the truth) and serving processes poll the store and answer 503."""
        try:
            await bus.start()
        except Exception as exc:  # credentials or a certificate it refuses: waiting won't help
            self._fail(exc)

    async def _check_store(self) -> None:
        """Every ``bus_check_interval``: has the store's epoch changed under this process?"""
        store = self.store
        if store is None or self._stopping:
            return
        epoch = await store.current_epoch()
        if epoch != store.epoch:
            await self._adopt_epoch(store, epoch)

    async def _adopt_epoch(self, store: Store, epoch: str) -> None:
        """``relay migrate --new-epoch`` ran while this process ran: its seqs name another
        history now. A serving process resets its clients and follows the new epoch's
        bus; an active writer cannot go on writing seqs of the old one and stops."""
        old = store.epoch
        if self.ingest is not None:
            self._fail(
                StoreError(
                    f"the store's epoch changed from {old} to {epoch} under the active writer "
                    "(relay migrate --new-epoch --force while it ran): restart it"
                )
            )
            return
        store.epoch = epoch
        head = await store.head()
        if self.follower is not None:
            await self.follower.stop()
        old_bus = self.bus
        self.bus = open_bus(self.settings, epoch, self.metrics)
        if old_bus is not None:
            with contextlib.suppress(Exception, TimeoutError):
                await asyncio.wait_for(old_bus.close(), 2.0)
        self._tasks.append(asyncio.create_task(self._start_bus(self.bus), name="bus-start"))
        reset = 0
        if self.serve_side is not None:
            reset = await self.serve_side.adopt_epoch(store, self.bus, head)
        log.warning(
            "the store's epoch changed from %s to %s (relay migrate --new-epoch): %d "
            "subscriptions of %d clients reset, going on from seq %d",
            old,
            epoch,
            reset,
            len(self.hub.sessions) if self.hub is not None else 0,
            head,
        )

    def _store_damaged(self, exc: StoreCorrupt) -> None:
        """A read or commit found the store damaged: nothing it reads can be trusted, so
        the process stops (``/readyz`` 503, exit 1) rather than serve less than it holds;
        clients resume from another replica or after a restore."""
        self.metrics.store_damaged.inc()
        if self._error is None:
            log.error("%s: stopping", exc)
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self.failed.set()

    @property
    def _waiting_for(self) -> str:
        if self._waiting:
            return self._waiting
        return self.ingest_side.waiting if self.ingest_side is not None else ""

    @property
    def ready(self) -> bool:
        """Started, not stopping, nothing failed, and every part up: what ``/readyz`` answers."""
        if not self._running or self.failed.is_set() or self._waiting_for:
            return False
        if self.ingests and (self.ingest is None or self.ingest.failed.is_set()):
            return False
        if self.follower is not None and self.follower.store_error is not None:
            return False
        return not (self.serves_only and self.bus is not None and not self.bus.connected)

    def readiness(self) -> Readiness:
        """What ``/readyz`` answers: a failure first (with one line why), then the phase."""
        error = self.error
        if error is not None:
            lines = str(error).strip().splitlines()
            return Readiness("failed", lines[0] if lines else type(error).__name__)
        if self._stopping:
            return Readiness("stopping")
        if self.ready:
            return READY
        if self._waiting_for:
            return Readiness("starting", self._waiting_for)
        if self.follower is not None and self.follower.store_error is not None:
            return Readiness(
                "unavailable", f"the store is unreachable: {self.follower.store_error}"
            )
        if self.serves_only and self.bus is not None and not self.bus.connected:
            return Readiness("starting", "waiting for the bus (Redis)")
        return Readiness("starting")

    @property
    def error(self) -> BaseException | None:
        """Why the relay cannot go on (ingest or the follower failed), if it cannot."""
        if self._error is not None:
            return self._error
        if self.ingest is not None and self.ingest.error is not None:
            return self.ingest.error
        return self.follower.error if self.follower is not None else None

    @property
    def port(self) -> int:
        if self.server is not None:
            return self.server.port
        assert self.ops is not None
        return self.ops.port

    async def stop(self, timeout: float = 8.0) -> None:
        """Drain and stop; every step is bounded so the whole stays under ``timeout``.

        Once: a second call returns at once.
        """
        if self._stopping:
            return
        self._running = False
        self._stopping = True
        if self.serve_side is not None:
            await self.serve_side.stop_accepting()
        if self.ingest_side is not None:
            self.drained = await self.ingest_side.stop(timeout / 2)
        self.housekeeping.stop()
        tasks = self._tasks + (self.ingest_side.tasks if self.ingest_side is not None else [])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.serve_side is not None:
            # What ingest stored last reaches clients before they get 1001.
            await self.serve_side.drain(timeout, catch_up=self.drained and self.store is not None)
        if self.ops is not None:
            await self.ops.stop()
        if self._listener is not None and self.server is None:
            self._listener.close()  # stopped while waiting for the store: never handed over
        if self.bus is not None:
            with contextlib.suppress(TimeoutError):  # the store has it all: no need to wait
                await asyncio.wait_for(self.bus.close(), timeout / 8)
        if self.store is not None:
            await self.store.close()
        self.metrics.writer_active.set(0)
        log.info("relay stopped")


async def wait_for_store(
    settings: Settings, *, writer: bool, serves: bool = True, sleep: Sleep = asyncio.sleep
) -> Store:
    """The store the settings name; waits with backoff until it is there (a server not up
    yet, or, for a serving process, a schema not migrated yet): one line when the wait
    starts and one when it ends, each try at debug level."""
    delay = 1.0
    outage = Outage(log, "the store")
    while True:
        try:
            store = await open_store(settings, writer=writer, serves=serves)
        except StoreNotReady as exc:
            outage.failed(str(exc), delay)
            await sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        outage.answered()
        return store
