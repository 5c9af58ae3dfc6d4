"""Wires a :class:`~relay.config.Settings` into running parts, and stops them cleanly.

Start order: store, hub, HTTP/WebSocket server, then the source, so the first
tweet already finds its listeners. Stop order is the reverse, and drains: the
source stops, what it sent is committed and published, every client gets what
is queued for it and then 1001 with its last seq, the store closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from relay.access import Access
from relay.bus import Bus
from relay.bus.memory import MemoryBus
from relay.config import Settings
from relay.errors import ConfigError
from relay.http import READY, ApiLimits, HttpApi, Readiness
from relay.hub import Hub
from relay.ingest import Ingest
from relay.metrics import Metrics
from relay.query import QueryLimits
from relay.revocation import RevocationList
from relay.server import StreamServer
from relay.sources import Source
from relay.sources.replay import ReplaySource
from relay.store import Store
from relay.store.sqlite import SQLiteStore
from relay.synth import sample_path

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def build_source(
    settings: Settings,
    store: Store,
    metrics: Metrics,
    clock: Clock,
    sleep: Sleep = asyncio.sleep,
) -> Source:
    """The source ``settings.source`` names; ``clock`` and ``sleep`` pace its waits."""
    if settings.source == "replay":
        path = settings.replay or str(sample_path())
        return ReplaySource(path, speed=settings.speed, loop=settings.replay_loops, clock=clock)
    if settings.source in ("x-stream", "x-poll"):
        from relay.sources.x_poll import XPollSource
        from relay.sources.x_stream import XStreamSource
        from relay.sources.xapi import load_rules, require_token

        common: dict[str, Any] = {
            "token": require_token(settings.x_bearer_token),
            "base_url": settings.x_api_base_url,
            "rules": load_rules(settings.rules_file),
            "store": store,
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


class Relay:
    """Source and server in one process: the embedded mode of ``relay run``."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: Source | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.metrics = Metrics()
        self.bus: Bus = MemoryBus()
        self._source = source
        self._running = False
        self._stopping = False
        self.drained = True
        """False when a stop ran out of time before ingest had drained."""
        self.store: Store | None = None
        self.hub: Hub | None = None
        self.server: StreamServer | None = None
        self.ingest: Ingest | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        if self._source is None:
            _check_source(settings)
        revoked = (
            RevocationList.open(settings.revoked_tokens_file)
            if settings.revoked_tokens_file
            else None
        )
        store = self.store = await SQLiteStore.open(
            settings.db, query_readers=settings.query_readers
        )
        hub = self.hub = Hub(
            store,
            self.metrics,
            head=await store.head(),
            catch_ups_at_once=settings.catch_ups_at_once,
            recovered_cap=settings.recovered_cap,
        )
        self.bus.listen(hub.publish)
        access = Access(
            settings.policy(),
            settings.secrets(),
            self.clock,
            metrics=self.metrics,
            revoked=revoked if revoked is not None else frozenset(),
        )
        api = HttpApi(
            store,
            hub,
            self.metrics,
            access,
            public_url=settings.public_url,
            readiness=self.readiness,
            limits=api_limits(settings),
        )
        self.server = StreamServer(settings, hub, api, self.metrics, clock=self.clock)
        await self.server.start()
        if revoked is not None:
            self._watcher = asyncio.create_task(
                revoked.watch(settings.revoked_tokens_interval, self.server.close_revoked)
            )
        source = self._source or build_source(settings, store, self.metrics, self.clock, self.sleep)
        self.ingest = Ingest(
            source,
            store,
            hub.publish,
            self.metrics,
            batch_size=settings.batch_size,
            clock=self.clock,
        )
        self.ingest.start()
        self._running = True
        log.info("relay started: store epoch %s, head seq %d", store.epoch, hub.head)
        _announce_access(settings)

    @property
    def ready(self) -> bool:
        """Started, not stopping, and ingest still going: what ``/readyz`` answers."""
        return self._running and self.ingest is not None and not self.ingest.failed.is_set()

    def readiness(self) -> Readiness:
        """What ``/readyz`` answers: a failure first (with one line why), then the phase."""
        error = self.error
        if error is not None:
            lines = str(error).strip().splitlines()
            return Readiness("failed", lines[0] if lines else type(error).__name__)
        if self._stopping:
            return Readiness("stopping")
        return READY if self.ready else Readiness("starting")

    @property
    def error(self) -> BaseException | None:
        """Why the relay cannot go on (ingest failed), if it cannot."""
        return self.ingest.error if self.ingest is not None else None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def stop(self, timeout: float = 8.0) -> None:
        """Drain and stop; every step is bounded so the whole stays under ``timeout``.

        Once: a second call returns at once.
        """
        if self._stopping:
            return
        self._running = False
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self.server is not None:
            await self.server.stop_accepting()
        if self.ingest is not None:
            try:
                await asyncio.wait_for(self.ingest.stop(), timeout / 2)
            except TimeoutError:
                self.drained = False
                log.error("ingest did not drain in time: tweets read but not stored are lost")
        if self.hub is not None:
            await self.hub.close_all(timeout / 4)
        if self.server is not None:
            await self.server.wait_closed()
        if self.store is not None:
            await self.store.close()
        log.info("relay stopped")


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
    if not settings.secret:
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
