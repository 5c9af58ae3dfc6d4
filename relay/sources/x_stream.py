"""The X API v2 filtered stream as a Source, with reconnects, stall detection and gap filling.

Why tweepy's ``StreamingClient`` (blocking, in a thread) and not ``AsyncStreamingClient``:
the async one needs aiohttp, a second HTTP stack whose host cannot be rerouted by the
requests transport adapter that points every X call at ``X_API_BASE_URL``; the blocking
one shares requests with the rules and search calls, and a thread that only reads the
socket and hands lines to the event loop costs nothing. Its own connect loop is replaced:
it retries 401 and 403 forever, sleeps on the real clock, and ends for good when a
handler raises. Here each ``filter()`` call is one connection attempt, and the decision
to reconnect, when, and after what, is :mod:`relay.sources.backoff`'s, on an injected clock.

Lines are split on ``\\n`` only, after whole chunks are joined, so a line (or a ``\\r\\n``)
cut across chunks is reassembled, and a blank line is a keep-alive. After every
connect, recent search from the highest stored tweet id fills whatever the outage missed
(``backfill_minutes`` is Enterprise-only); the store drops the overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson
import requests
import tweepy

from relay.core.rule_set import RuleSet
from relay.errors import ConfigError, SourceError, StreamRefused
from relay.obs.metrics import Metrics
from relay.sources import RawLine, ResumePoint
from relay.sources.backoff import Cause, ReconnectSchedule
from relay.sources.xapi import (
    FIELDS,
    X_HOST,
    StreamRule,
    api_error,
    apply_sync,
    client,
    current_rules,
    newest_id,
    plan_sync,
    route,
    search_pages,
    stream_client,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
_DONE = object()


class _Connection(tweepy.StreamingClient):  # type: ignore[misc]
    """tweepy's StreamingClient, one connection attempt per ``filter()`` call."""

    def __init__(
        self, token: str, base_url: str, stall_timeout: float, emit: Callable[[object], None]
    ) -> None:
        super().__init__(token, wait_on_rate_limit=False)
        route(self.session, base_url)
        self.stall_timeout = stall_timeout
        self.emit = emit
        self.response: requests.Response | None = None
        self.operational_disconnect = False

    def _connect(self, method: str, endpoint: str, params: Any = None, **_: Any) -> None:
        self.running = True
        headers = {"Authorization": f"Bearer {self.bearer_token}", "User-Agent": self.user_agent}
        url = f"{X_HOST}/2/tweets/{endpoint}/stream"
        with self.session.request(
            method,
            url,
            params=params,
            headers=headers,
            stream=True,
            timeout=(10, self.stall_timeout),
        ) as response:
            self.response = response
            if response.status_code != 200:
                raise StreamRefused(response.status_code, response.text)
            self.emit("connected")
            pending = b""
            try:
                for chunk in response.iter_content(chunk_size=None):
                    if not self.running:
                        return
                    *lines, pending = (pending + chunk).split(b"\n")
                    for line in lines:
                        self._line(line.rstrip(b"\r"))
            finally:
                if pending.strip():  # the connection ended inside a line: it is malformed
                    self.emit(pending)

    def _line(self, line: bytes) -> None:
        if b'"disconnect_type"' in line:
            self.operational_disconnect = True
            log.warning("X operational disconnect: %s", line[:300].decode(errors="replace"))
        self.emit(line)

    def stop(self) -> None:
        self.running = False
        if self.response is not None:
            self.response.close()


class XStreamSource:
    """The filtered stream: yields every line the API sends, plus gap-filling search pages."""

    name = "x-stream"

    def __init__(
        self,
        *,
        token: str,
        base_url: str,
        rules: Sequence[StreamRule],
        rules_origin: str = "the stream rules",
        newest_stored: ResumePoint,
        metrics: Metrics,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        stall_timeout: float = 30.0,
        backfill_pages: int = 10,
        schedule: ReconnectSchedule | None = None,
    ) -> None:
        self.token = token
        self.base_url = base_url
        self.rules = list(rules)
        self.rule_set = RuleSet(frozenset(rule.key for rule in self.rules), True, rules_origin)
        """Its channels: the rules' keys and no other (ingest records them in the store)."""
        self.newest_stored = newest_stored
        """Asked after every connect: where the gap filling search starts."""
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self.stall_timeout = stall_timeout
        self.backfill_pages = backfill_pages
        self.schedule = schedule or ReconnectSchedule()
        self.waits: list[tuple[Cause, float]] = []
        """Every wait before a reconnect and its cause, for operators and tests."""
        # The last lines the stream sent. The store may not have committed them yet when the
        # connection drops, and the gap filler must start from the newest of them; they are
        # parsed only then, so the hot path pays one append a line, not a second parse.
        self._recent: deque[bytes] = deque(maxlen=256)

    async def lines(self) -> AsyncIterator[RawLine]:
        await asyncio.to_thread(self.sync_rules)
        backoff = 0.0
        cause: Cause | None = None
        while True:
            wait = self.schedule.wait_before_connect(self.clock(), backoff)
            if cause is not None:
                self.waits.append((cause, wait))
                log.info("reconnecting to the X stream in %.2f s (%s)", wait, cause.value)
            if wait > 0:
                await self.sleep(wait)
            self.schedule.record_connect(self.clock())
            self.metrics.source_connects.inc()
            since_id = newest_id(
                await self.newest_stored(None), *map(_stream_tweet_id, self._recent)
            )
            async for line in self._attempt(since_id):
                yield line
            cause = self._cause
            self.metrics.source_reconnects.labels(cause.value).inc()
            if cause is Cause.NO_RULES:
                await asyncio.to_thread(self.sync_rules)
            backoff = self.schedule.backoff(cause)

    def sync_rules(self) -> None:
        """Make the stream's rules those of the config (blocking)."""
        api = stream_client(self.token, self.base_url)
        try:
            current = current_rules(api)
            plan = plan_sync(self.rules, current)
            apply_sync(api, plan, dry_run=False)
            if plan.add or plan.delete:
                current = current_rules(api)
        except tweepy.TweepyException as exc:
            raise api_error(exc, "syncing stream rules") from None
        by_value = {(r.value, r.tag): r for r in current}
        self.rules = [by_value.get((r.value, r.tag), r) for r in self.rules]
        log.info(
            "stream rules in sync: %d added, %d deleted, %d kept",
            len(plan.add),
            len(plan.delete),
            len(plan.keep),
        )

    async def _attempt(self, since_id: str | None) -> AsyncIterator[RawLine]:
        """One connection: its lines as they come, then ``self._cause`` says why it ended."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def emit(item: object) -> None:
            # The reading thread can outlive the loop by a moment when the relay stops.
            with contextlib.suppress(RuntimeError):  # "Event loop is closed": nobody reads
                loop.call_soon_threadsafe(queue.put_nowait, item)

        connection = _Connection(self.token, self.base_url, self.stall_timeout, emit)
        outcome: dict[str, BaseException | None] = {"error": None}

        def run() -> None:
            try:
                connection.filter(**FIELDS)
            except BaseException as exc:  # handed to the loop, classified there
                outcome["error"] = exc
            finally:
                emit(_DONE)

        threading.Thread(target=run, name="x-stream", daemon=True).start()
        backfill: asyncio.Task[None] | None = None
        try:
            while (item := await queue.get()) is not _DONE:
                if item == "connected":
                    self.schedule.connected()
                    if since_id is not None:
                        backfill = asyncio.create_task(self._backfill(since_id, emit))
                elif isinstance(item, bytes):
                    self._recent.append(item)
                    yield RawLine(item, self.clock())
            if backfill is not None:
                await backfill
                while not queue.empty():  # pages the gap filler queued last
                    item = queue.get_nowait()
                    if isinstance(item, bytes):
                        yield RawLine(item, self.clock())
        finally:
            connection.stop()
            if backfill is not None and not backfill.done():
                backfill.cancel()
        self._cause = self._classify(outcome["error"], connection)

    async def _backfill(self, since_id: str, emit: Callable[[object], None]) -> None:
        """Recent search from the highest stored id, for every rule (in a thread)."""

        def run() -> int:
            api = client(self.token, self.base_url)
            pages = 0
            for rule in self.rules:
                for page in search_pages(
                    api, rule, since_id=since_id, max_pages=self.backfill_pages
                ):
                    emit(page)
                    pages += 1
            return pages

        try:
            pages = await asyncio.to_thread(run)
            self.metrics.backfill_pages.inc(pages)
            log.info("gap filled from tweet %s: %d search pages", since_id, pages)
        except tweepy.TweepyException as exc:
            # The stream itself is fine; a later reconnect will try the gap again.
            log.warning("gap filling failed: %s", exc)

    def _classify(self, error: BaseException | None, connection: _Connection) -> Cause:
        if error is None:
            return Cause.OPERATIONAL if connection.operational_disconnect else Cause.CLOSED
        if isinstance(error, StreamRefused):
            if error.status == 401:
                raise ConfigError(
                    "the X API refused X_BEARER_TOKEN (401 Unauthorized) on the filtered stream"
                )
            if error.status == 403:
                raise ConfigError(
                    "the X API says this token may not use the filtered stream (403 Forbidden); "
                    "it needs Basic access or higher, or use --source x-poll"
                )
            if error.status == 429:
                return Cause.RATE_LIMITED
            if error.status == 409:
                return Cause.NO_RULES
            log.warning("X stream refused: %s", error)
            return Cause.HTTP
        if isinstance(error, (ConfigError, SourceError)):
            raise error
        if isinstance(error, requests.RequestException):
            stalled = "timed out" in str(error).lower() or "timeout" in type(error).__name__.lower()
            log.warning("X stream connection lost: %s", error)
            return Cause.STALL if stalled else Cause.NETWORK
        log.error("unexpected error on the X stream: %r", error)
        return Cause.NETWORK

    _cause: Cause = Cause.CLOSED


def _stream_tweet_id(line: bytes) -> str | None:
    try:
        payload = orjson.loads(line)
        tweet_id = payload["data"]["id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None  # keep-alives, errors messages and broken lines carry no id
    return str(tweet_id) if str(tweet_id).isdigit() else None
