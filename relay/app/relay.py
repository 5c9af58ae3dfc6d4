"""Wires a :class:`~relay.config.Settings` into running parts, and stops them cleanly.

Start order: store, bus, hub, HTTP/WebSocket server and the bus follower, then (once
this process holds the writer's turn) the source, so the first tweet already finds
its listeners. Stop order is the reverse, and drains: the source stops, what it sent
is committed and published, every client gets what is queued for it and then 1001
with its last seq, the store closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from relay.access.decisions import Access
from relay.access.revocation import RevocationList
from relay.bus import Bus
from relay.bus.memory import MemoryBus
from relay.config import Settings
from relay.core.query import QueryLimits
from relay.errors import ConfigError, RelayError, StoreCorrupt, StoreError, StoreNotReady
from relay.ingest.finished import ReplaySummary, summary_of
from relay.ingest.pipeline import Ingest
from relay.jobs.deletions import DELETIONS_INTERVAL, apply_deletions
from relay.jobs.retention import Retention, apply_retention
from relay.jobs.scheduler import Housekeeping
from relay.jobs.stats import StatsSampler
from relay.obs.metrics import Metrics
from relay.obs.readiness import READY, Readiness
from relay.obs.waits import Outage
from relay.sources import ResumePoint, Source
from relay.sources.replay import ReplaySource
from relay.sources.synth import sample_path, sample_rules
from relay.store import Store
from relay.store.open import open_store
from relay.stream.announce import DeletionAnnouncer
from relay.stream.follower import Follower
from relay.stream.hub import Hub
from relay.web.ops import OpsServer
from relay.web.routes import ApiLimits, HttpApi
from relay.web.server import StreamServer

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def build_source(
    settings: Settings,
    newest_stored: ResumePoint,
    metrics: Metrics,
    clock: Clock,
    sleep: Sleep = asyncio.sleep,
) -> Source:
    """The source ``settings.source`` names; ``clock`` and ``sleep`` pace its waits."""
    if settings.source == "replay":
        path = settings.replay or str(sample_path())
        # The bundled sample declares its rules; another recording's are read on the way.
        declared = sample_rules() if _same_file(path, sample_path()) else None
        return ReplaySource(
            path, speed=settings.speed, loop=settings.replay_loops, clock=clock, declared=declared
        )
    if settings.source in ("x-stream", "x-poll"):
        from relay.sources.x_poll import XPollSource
        from relay.sources.x_stream import XStreamSource
        from relay.sources.xapi import load_rules, require_token

        common: dict[str, Any] = {
            "token": require_token(settings.x_bearer_token),
            "base_url": settings.x_api_base_url,
            "rules": load_rules(settings.rules_file),
            "rules_origin": f"the rules file {settings.rules_file}",
            "newest_stored": newest_stored,
            "metrics": metrics,
            "clock": clock,
        }
        if settings.source == "x-stream":
            return XStreamSource(
                **common,
                sleep=sleep,
                stall_timeout=settings.stall_timeout,
                backfill_pages=settings.backfill_pages,
            )
        return XPollSource(
            **common, interval=settings.poll_interval, max_pages=settings.poll_max_pages
        )
    raise ConfigError(f"unknown source {settings.source!r}")


def _same_file(path: str, other: Path) -> bool:
    try:
        return Path(path).resolve() == other.resolve()
    except OSError:
        return False


ROLES = ("run", "ingest", "serve")
"""``run``: source, store and clients in one process (the embedded mode). ``ingest``:
source -> store -> bus, no client port. ``serve``: bus -> clients, any number of them."""

CLAIM_GRACE = 1.0
"""Seconds ``start`` waits for the writer lease before it returns standing by."""


class Relay:
    """One relay process in one of :data:`ROLES`, built from the same parts.

    Every role publishes and follows through a bus: ingest hands each committed batch
    to ``bus.publish``; a :class:`~relay.stream.follower.Follower` hands what the bus brings to
    the hub, filling gaps from the store. In ``run`` the bus is in-process (or Redis
    when ``redis_url`` is set, so more ``serve`` processes can join).
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
        self._source = source
        self._running = False
        self._stopping = False
        self.drained = True
        """False when a stop ran out of time before ingest had drained."""
        self.store: Store | None = None
        self.hub: Hub | None = None
        self.server: StreamServer | None = None
        self.ops: OpsServer | None = None
        self.follower: Follower | None = None
        self.stats: StatsSampler | None = None
        self.housekeeping = Housekeeping(self.metrics, self._fail)
        self.ingest: Ingest | None = None
        self.failed = asyncio.Event()
        """Set when the process cannot go on: ingest, the lease or the follower failed."""
        self._error: BaseException | None = None
        self._waiting = ""
        """What start is waiting for (the store, the writer lease), for ``/readyz``."""
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: socket.socket | None = None
        self._ingesting = asyncio.Event()
        self.finished = asyncio.Event()
        """Set once a source that ends (a replay without loop) has ended and everything it
        sent is stored and published; :attr:`summary` then says what it did."""
        self.summary: ReplaySummary | None = None
        self.listening = asyncio.Event()
        """Set once :attr:`port` accepts connections (a serving process still waiting for
        its store already answers health checks there)."""

    @property
    def ingests(self) -> bool:
        return self.role in ("run", "ingest")

    @property
    def serves(self) -> bool:
        return self.role in ("run", "serve")

    async def start(self) -> None:
        settings = self.settings
        if self._source is None and self.ingests:
            _check_source(settings)
        revoked = (
            RevocationList.open(settings.revoked_tokens_file)
            if settings.revoked_tokens_file and self.serves
            else None
        )
        if self.role == "serve" or self.metrics_port is not None:
            # Up before the store: a health check gets 503 and why, not a refused port.
            port = settings.port if self.role == "serve" else self.metrics_port
            self.ops = OpsServer(
                settings.host,
                port or 0,
                self.readiness,
                self.metrics if self.role == "ingest" else None,
            )
            if self.role == "serve":
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
        self._waiting = "waiting for the store"
        store = self.store = await wait_for_store(
            settings, writer=self.ingests, serves=self.serves, sleep=self.sleep
        )
        store.on_damage = self._store_damaged
        self.bus = open_bus(settings, store.epoch, self.metrics)
        self._tasks.append(asyncio.create_task(self._start_bus(self.bus), name="bus-start"))
        if self.serves:
            await self._start_serving(store, self.bus, revoked)
        self.housekeeping.every(
            settings.bus_check_interval,
            "store check",
            self._check_store,
            first=settings.bus_check_interval,
        )
        self.housekeeping.start()
        self._running = True
        if self.ingests:
            writing = asyncio.create_task(self._ingest_when_writer(store))
            self._tasks.append(writing)
            # Until ingest runs (at once when the lease is free: no need to wait the grace
            # out) or the grace is over and this process stands by.
            ingesting = asyncio.create_task(self._ingesting.wait())
            await asyncio.wait(
                [writing, ingesting], timeout=CLAIM_GRACE, return_when=asyncio.FIRST_COMPLETED
            )
            ingesting.cancel()
        else:
            self._waiting = ""
        standing_by = self.ingests and not self._ingesting.is_set() and not self.failed.is_set()
        log.info(
            "relay %s started%s: store epoch %s, head seq %d",
            self.role,
            ", standing by for the writer lease (not writing)" if standing_by else "",
            store.epoch,
            self.hub.head if self.hub is not None else await store.head(),
        )
        if self.serves:
            _announce_access(settings)

    async def _start_bus(self, bus: Bus) -> None:
        """Connect the bus in the background: until it is up, ingest still stores (the
        store is the truth) and serving processes poll the store and answer 503."""
        try:
            await bus.start()
        except Exception as exc:  # credentials or a certificate it refuses: waiting won't help
            self._fail(exc)

    async def _start_serving(self, store: Store, bus: Bus, revoked: RevocationList | None) -> None:
        settings = self.settings
        hub = self.hub = Hub(
            store,
            self.metrics,
            head=await store.head(),
            catch_ups_at_once=settings.catch_ups_at_once,
            recovered_cap=settings.recovered_cap,
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
            readiness=self.readiness,
            limits=api_limits(settings),
            trusted_proxies=settings.trusted_proxies,
            stats=self.stats,
            access_log=settings.access_log,
        )
        self.server = StreamServer(settings, hub, api, self.metrics, clock=self.clock)
        await self.server.start(self._listener)
        if self.ops is not None and self.role == "serve":
            await self.ops.stop()  # its copy of the socket only: the server listens on
            self.ops = None
        self.listening.set()
        if revoked is not None:
            self._tasks.append(
                asyncio.create_task(
                    revoked.watch(settings.revoked_tokens_interval, self.server.close_revoked)
                )
            )
        # Following starts before ingest does: the first batch already finds it.
        self._follow(store, bus, hub)

    def _follow(self, store: Store, bus: Bus, hub: Hub) -> None:
        settings = self.settings
        self.follower = Follower(
            bus,
            store,
            hub,
            self.metrics,
            check_interval=settings.bus_check_interval,
            # Only a bus across processes carries the writer's heartbeats to watch for.
            writer_silence=writer_silence(settings) if settings.redis_url else None,
        )
        self.follower.start()
        self._tasks.append(asyncio.create_task(self._fail_with_follower(self.follower)))

    async def _fail_with_follower(self, follower: Follower) -> None:
        await follower.failed.wait()
        self._fail(follower.error or RelayError("the bus follower stopped"))

    async def _ingest_when_writer(self, store: Store) -> None:
        """Wait for the writer's turn (a standby waits here), then ingest until stopped."""
        self._waiting = "standing by for the writer lease"
        waited_since = time.monotonic()
        stood_by = False

        def standing_by(line: str) -> None:
            nonlocal stood_by
            stood_by = True
            log.info("%s", line)

        try:
            await store.claim_writer(standing_by)
        except Exception as exc:
            self._fail(exc)
            return
        bus = self.bus  # the bus of the epoch now (a standby may have seen it change)
        assert bus is not None
        self.metrics.writer_active.set(1)
        head = await store.head()
        if stood_by:
            # The line an operator watching a failover looks for: this process writes now.
            log.warning(
                "became the active writer after %.0f s standing by, at seq %d (%s)",
                time.monotonic() - waited_since,
                head,
                store.holder,
            )
        else:
            log.info("active ingester (%s): continuing after seq %d", store.holder, head)
        bus.announce(head)
        source = self._source or build_source(
            self.settings, store.highest_tweet_id, self.metrics, self.clock, self.sleep
        )
        self.ingest = Ingest(
            source,
            store,
            bus.publish,
            self.metrics,
            batch_size=self.settings.batch_size,
            parse_processes=self.settings.parse_processes,
            clock=self.clock,
        )
        try:
            # Before the first tweet and before ready: serving processes check
            # subscriptions against the set as soon as clients come.
            await self.ingest.record_rule_set()
            if self.hub is not None:  # this process serves too: it knows the set at once
                await self.hub.refresh_channels()
        except Exception as exc:
            self.metrics.writer_active.set(0)
            self._fail(exc)
            return
        self.ingest.start()
        self._schedule_writer_jobs(store)
        self._tasks.append(asyncio.create_task(self._when_finished(self.ingest), name="finished"))
        self._waiting = ""
        self._ingesting.set()
        await self.ingest.failed.wait()
        self.metrics.writer_active.set(0)
        self._fail(self.ingest.error or RelayError("ingest stopped"))

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
        if self.hub is not None:
            reset = self.hub.reset_epoch(head)
            self.metrics.head.set(head)
            self._follow(store, self.bus, self.hub)
        log.warning(
            "the store's epoch changed from %s to %s (relay migrate --new-epoch): %d "
            "subscriptions of %d clients reset, going on from seq %d",
            old,
            epoch,
            reset,
            len(self.hub.sessions) if self.hub is not None else 0,
            head,
        )

    def _schedule_writer_jobs(self, store: Store) -> None:
        """The writer's upkeep: only the active writer deletes (a standby never does)."""
        self.housekeeping.every(
            DELETIONS_INTERVAL,
            "deletions",
            lambda: apply_deletions(store, self.metrics),
            first=0.5,
        )
        retention = Retention.from_settings(self.settings)
        if not retention.active:
            return
        bounds = [f"at most {retention.max_tweets:,} tweets"] if retention.max_tweets else []
        if retention.max_age:
            bounds.append(f"tweets received in the last {retention.max_age:g} s")
        log.info("retention: keeping %s", " and ".join(bounds))

        async def run() -> None:
            self.metrics.retention_deleted.inc(
                await apply_retention(store, retention, self.clock())
            )

        self.housekeeping.every(self.settings.retention_interval, "retention", run, first=1.0)

    async def _when_finished(self, ingest: Ingest) -> None:
        """Log the summary once the source ended and all it sent reached the hub."""
        await ingest.finished.wait()
        if self._stopping:
            return
        cut = ingest.source_error
        if cut is not None and ingest.error is cut:
            # The source stopped on an error after every line it gave was stored and
            # published (a cut recording): say what was read, and that it was cut. The
            # relay then stops with the error (exit 1); clients get what was published.
            self.summary = summary_of(self.metrics, cut=str(cut))
            log.warning("%s", self.summary)
            return
        if ingest.failed.is_set():
            return
        if self.follower is not None:
            await self.follower.catch_up()  # published: the hub holds the store's head
        if self._stopping:
            return
        self.summary = summary_of(self.metrics)
        log.info("%s", self.summary)
        self.finished.set()

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
    def ready(self) -> bool:
        """Started, not stopping, nothing failed, and every part up: what ``/readyz`` answers."""
        if not self._running or self.failed.is_set() or self._waiting:
            return False
        if self.ingests and (self.ingest is None or self.ingest.failed.is_set()):
            return False
        if self.follower is not None and self.follower.store_error is not None:
            return False
        return not (self.role == "serve" and self.bus is not None and not self.bus.connected)

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
        if self._waiting:
            return Readiness("starting", self._waiting)
        if self.follower is not None and self.follower.store_error is not None:
            return Readiness(
                "unavailable", f"the store is unreachable: {self.follower.store_error}"
            )
        if self.role == "serve" and self.bus is not None and not self.bus.connected:
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
        if self.server is not None:
            await self.server.stop_accepting()
        if self.ingest is not None:
            try:
                await asyncio.wait_for(self.ingest.stop(), timeout / 2)
            except TimeoutError:
                self.drained = False
                log.error("ingest did not drain in time: tweets read but not stored are lost")
        self.housekeeping.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.follower is not None:
            if self.drained and self.hub is not None and self.store is not None:
                # What ingest stored last reaches clients before they get 1001.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.follower.catch_up(), timeout / 8)
            await self.follower.stop()
        if self.hub is not None:
            await self.hub.close_all(timeout / 4)
        if self.server is not None:
            try:  # clients got 1001 above; one that never answers the close is not waited for
                await asyncio.wait_for(self.server.wait_closed(), timeout / 8)
            except TimeoutError:
                log.warning("some connections did not close in time; dropped")
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


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host`` (a name, IPv4 or IPv6; empty: every interface)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host or 'every interface'} is in use (another relay?): "
                "pick another with --port N or PORT=N (--port 0 picks a free one)"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def open_bus(settings: Settings, epoch: str, metrics: Metrics) -> Bus:
    if settings.redis_url:
        from relay.bus.redis import RedisBus

        return RedisBus(
            settings.redis_url,
            epoch=epoch,
            maxlen=settings.bus_maxlen,
            heartbeat_interval=settings.heartbeat_interval,
            tls_verify=settings.redis_tls_verify,
            metrics=metrics,
        )
    return MemoryBus()


def writer_silence(settings: Settings) -> float:
    """Seconds without a heartbeat from the writer after which a serving process says
    that no writer publishes: a few heartbeats missed, and at least one store check."""
    return max(5 * settings.heartbeat_interval, settings.bus_check_interval)


def api_limits(settings: Settings) -> ApiLimits:
    return ApiLimits(
        query=QueryLimits(
            max_in_items=settings.max_in_items,
            max_sort_terms=settings.max_sort_terms,
            max_offset=settings.max_offset,
        ),
        query_timeout=settings.query_timeout,
        queries_per_client=settings.queries_per_client,
        queries_waiting=settings.queries_waiting,
    )


def _announce_access(settings: Settings) -> None:
    """Say at start who may read what, so an open relay is never open by surprise."""
    public = ", ".join(settings.public_channels)
    if not settings.secret and "*" in settings.public_channels:
        # Nothing needs a token (the demo's case): a notice, not a warning at every start.
        log.info("every channel is public; RELAY_SECRET is not set, so no tokens are issued")
    elif not settings.secret:
        log.warning("RELAY_SECRET is not set: tokens are refused; public channels: %s", public)
    elif public:
        log.info("public channels (no token needed): %s; other channels need a token", public)
    else:
        log.info("every channel needs a token")
    if settings.previous_secret:
        until = settings.previous_secret_until or 0.0
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
        if until < time.time():
            log.warning("the previous secret retired at %s: remove RELAY_PREVIOUS_SECRET", stamp)
        else:
            log.info("tokens of the previous secret are accepted until %s", stamp)


def _check_source(settings: Settings) -> None:
    """Refuse a source that cannot work before anything starts: one clear line."""
    if settings.source == "replay" and settings.replay:
        try:
            with open(settings.replay, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"cannot read replay file {settings.replay}: {exc.strerror}"
            ) from None
    if settings.source in ("x-stream", "x-poll"):
        from relay.sources.xapi import load_rules, require_token

        require_token(settings.x_bearer_token)
        load_rules(settings.rules_file)
