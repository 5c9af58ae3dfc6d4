"""The bus across processes: one Redis stream per store epoch.

The publisher (the one ingester) adds one entry per committed tweet, with the
entry id ``{seq}-0``: ids carry the seq, so a hole in the stream is a hole in the
seqs, and a re-publish after a restart is refused by Redis itself (an id must
be above the stream's top). Every few seconds it adds a heartbeat ``{head}-*``
carrying the head seq, so a follower notices a loss while the stream is quiet.
The stream is trimmed approximately to ``maxlen`` entries (Redis frees whole
nodes, which is cheap).

Each follower (a serving process) reads the stream from the last entry id it
has seen, on a connection of its own, and hands the entries on in order. It does
not look for gaps: :class:`relay.stream.follower.Follower` fills every seq jump and every
heartbeat ahead of it from the store, and drops what it already has.

Both sides reconnect by themselves, with backoff, and say so in the log. Nothing
here raises to the caller once started: ``publish`` queues (bounded, the oldest
dropped and counted), the sender retries, a follower waits.

The entries are laid out in :mod:`relay.bus.entries`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from relay.bus import BusItem
from relay.bus.entries import EntryId, decode_entry, encode_heartbeat, encode_tweet, parse_id
from relay.errors import ConfigError, MalformedEntry
from relay.obs.metrics import Metrics
from relay.obs.sampling import LogSampler
from relay.obs.waits import Outage
from relay.store import StoredTweet

log = logging.getLogger(__name__)

DEFAULT_MAXLEN = 2000
"""Entries kept. Redis holds about 1.3 times the body per entry (bench/redis_bus.py: 2.3 KB
for 1.5 KB bodies, 6.6 KB for the 5 KB of real X API tweets with expansions), so 2000
real tweets take about 13 MB: room to spare on a 25 MB add-on. A follower further behind
reads the rest from the store."""
BACKOFF_START = 0.5
BACKOFF_MAX = 5.0
READ_BLOCK_MS = 1000
"""How long one XREAD waits for new entries; an idle follower checks the stream's top this often."""
READ_COUNT = 512
SEND_BATCH = 512
"""Tweets in one pipeline (about 0.8 MB of 1.5 KB bodies)."""
CLOSE_FLUSH = 2.0
SOCKET_TIMEOUT = 5.0
"""No answer within this (above the XREAD block) means the connection is dead: a PaaS
machine that vanished does not close its sockets."""

_STALE_ID = "equal or smaller than the target stream top item"


def where(url: str) -> str:
    """``HOST:PORT`` of a Redis URL: what logs and errors name, never the password."""
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    host = parts.hostname or "localhost"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(exc: BaseException, password: str | None) -> str:
    text = str(exc) or type(exc).__name__
    if password:
        text = text.replace(password, "[redacted]")
    return text[:300]


def _certificate_refused(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


class _Backoff:
    """0.5 s, doubling, up to 5 s; starts over after a success."""

    def __init__(self) -> None:
        self.delay = 0.0

    def next(self) -> float:
        self.delay = BACKOFF_START if not self.delay else min(BACKOFF_MAX, self.delay * 2)
        return self.delay

    def reset(self) -> None:
        self.delay = 0.0


class RedisBus:
    """:class:`relay.bus.Bus` on Redis Streams (``redis://`` or ``rediss://`` URLs)."""

    def __init__(
        self,
        url: str,
        *,
        epoch: str,
        maxlen: int = DEFAULT_MAXLEN,
        heartbeat_interval: float = 2.0,
        tls_verify: bool = True,
        queue_limit: int = 10_000,
        metrics: Metrics | None = None,
        key_prefix: str = "relay",
    ) -> None:
        self.url = url
        self.key = f"{key_prefix}:tweets:{epoch}"
        self.maxlen = maxlen
        self.heartbeat_interval = heartbeat_interval
        self.tls_verify = tls_verify
        self.queue_limit = queue_limit
        self.metrics = metrics or Metrics()
        self.where = where(url)
        self._password = urlsplit(url).password
        self._connected = False
        self._queue: deque[StoredTweet] = deque()
        self._wake = asyncio.Event()
        self._announced: int | None = None
        self._published_max = 0
        self._next_heartbeat = 0.0
        self._sender: asyncio.Task[None] | None = None
        self._client: Redis | None = None
        self._followers: set[Redis] = set()
        self._closing = False
        self._closed = False
        self._malformed_log = LogSampler(burst=5, window=60.0, what="malformed bus entries")
        self._error_log = LogSampler(burst=5, window=60.0, what="refused bus entries")
        self._outage = Outage(log, f"Redis at {self.where}")

    # -- connections ------------------------------------------------------

    def _new_client(self) -> Redis:
        options: dict[str, Any] = {
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            # Our loops retry with their own backoff and must see every failure (a
            # follower checks the stream's top after each one), so redis-py retries none.
            "retry": Retry(NoBackoff(), 0),
        }
        if urlsplit(self.url).scheme == "rediss" and not self.tls_verify:
            # PaaS Redis add-ons (Heroku Redis among them) serve TLS with a self-signed
            # certificate that no CA vouches for and whose name is not the host's: the
            # connection is encrypted but the server cannot be verified. Only then may
            # RELAY_REDIS_TLS_VERIFY=false accept it; the default verifies.
            options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
        return Redis.from_url(self.url, **options)

    def _publisher(self) -> Redis:
        if self._client is None:
            self._client = self._new_client()
        return self._client

    @property
    def connected(self) -> bool:
        return self._connected

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        self.metrics.bus_connected.set(1 if value else 0)
        if value:
            self._outage.answered()

    def _waiting(self, exc: BaseException, delay: float) -> None:
        # One line when Redis goes away, whichever loop (start, sender, follower) saw it
        # first, and one when it answers again: not a line a try and a loop.
        self._outage.failed(_reason(exc, self._password), delay)

    async def start(self) -> None:
        """Wait until Redis answers PING; a refused password or certificate is a
        :class:`~relay.errors.ConfigError` (waiting would not help)."""
        if urlsplit(self.url).scheme == "rediss" and not self.tls_verify:
            log.info("the TLS certificate of Redis at %s is not verified", self.where)
        # A connection of its own, closed after: a serving process only follows (one
        # connection each) and a small add-on allows few (Heroku's mini: 20).
        client = self._new_client()
        try:
            await self._wait_for_ping(client)
            await self._check_version(client)
        finally:
            await client.aclose()
        self._set_connected(True)
        self._ensure_sender()

    async def _check_version(self, client: Redis) -> None:
        """Heartbeat ids ``{head}-*`` need Redis 7; an older one refuses them (tweets pass)."""
        try:
            version = str((await client.info("server")).get("redis_version", ""))
        except (RedisError, OSError):  # some hosted Redis rename INFO: nothing to say
            return
        major = version.partition(".")[0]
        if major.isdigit() and int(major) < 7:
            log.warning(
                "Redis at %s is %s: heartbeats need Redis 7, so serving processes notice "
                "a lost tweet only at the next one",
                self.where,
                version,
            )

    async def _wait_for_ping(self, client: Redis) -> None:
        backoff = _Backoff()
        while True:
            try:
                await client.ping()
                return
            except (RedisError, OSError) as exc:
                self._set_connected(False)
                if isinstance(exc, AuthenticationError):
                    raise ConfigError(
                        f"Redis at {self.where} refused the credentials of the URL: "
                        f"{_reason(exc, self._password)}"
                    ) from None
                if _certificate_refused(exc):
                    raise ConfigError(
                        f"Redis at {self.where}: its TLS certificate cannot be verified "
                        f"({_reason(exc, self._password)}); for the self-signed certificates "
                        "of PaaS add-ons set RELAY_REDIS_TLS_VERIFY=false"
                    ) from None
                delay = backoff.next()
                self._waiting(exc, delay)
                await asyncio.sleep(delay)

    # -- publishing -------------------------------------------------------

    def _ensure_sender(self) -> None:
        if self._sender is not None or self._closing:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet: start() or the next publish starts it
            return
        self._sender = loop.create_task(self._send_loop(), name="redis bus sender")
        self._sender.add_done_callback(self._sender_done)

    def _sender_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        # A bug, not Redis (whose failures the loop retries): say so, and let the next
        # publish start a new sender; followers read what is lost from the store.
        log.error("the Redis bus sender failed", exc_info=task.exception())
        self._sender = None

    def publish(self, tweets: Sequence[StoredTweet]) -> None:
        if self._closing:
            self.metrics.bus_dropped.labels("closed").inc(len(tweets))
            return
        for tweet in tweets:
            self._queue.append(tweet)
            self._published_max = max(self._published_max, tweet.seq)
        excess = len(self._queue) - self.queue_limit
        if excess > 0:
            for _ in range(excess):
                self._queue.popleft()
            self.metrics.bus_dropped.labels("queue_full").inc(excess)
        self._wake.set()
        self._ensure_sender()

    def announce(self, head: int) -> None:
        """Heartbeats start; ``head`` must not be above a tweet still to be published
        (a heartbeat's id would then be above that tweet's and Redis would refuse it)."""
        self._announced = max(head, self._announced or 0)
        self._wake.set()
        self._ensure_sender()

    def _heartbeat_head(self, now: float) -> int | None:
        """The head to send now, if a heartbeat is due: only with nothing queued, so a
        heartbeat is never ahead of a tweet still to go."""
        if self._announced is None or self._closing or self._queue or now < self._next_heartbeat:
            return None
        return max(self._announced, self._published_max)

    async def _send_loop(self) -> None:
        backoff = _Backoff()
        failing = False
        while True:
            now = time.monotonic()
            heartbeat = self._heartbeat_head(now)
            if not self._queue and heartbeat is None:
                if self._closing:
                    return
                self._wake.clear()
                timeout = None
                if self._announced is not None:
                    timeout = max(0.0, self._next_heartbeat - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            batch = [self._queue.popleft() for _ in range(min(SEND_BATCH, len(self._queue)))]
            heartbeat = self._heartbeat_head(now)
            try:
                results = await self._send(batch, heartbeat)
            except asyncio.CancelledError:  # close() gave up on a Redis that does not answer
                self.metrics.bus_dropped.labels("closed").inc(len(batch))
                raise
            except (RedisError, OSError) as exc:
                self._set_connected(False)
                failing = True
                if self._closing:
                    self.metrics.bus_dropped.labels("closed").inc(len(batch) + len(self._queue))
                    self._queue.clear()
                    return
                self._requeue(batch)
                delay = backoff.next()
                self._waiting(exc, delay)
                await asyncio.sleep(delay)
                continue
            if failing:
                self.metrics.bus_reconnects.labels("publisher").inc()
                failing = False
            backoff.reset()
            self._set_connected(True)
            self._count(batch, results, heartbeat)

    async def _send(self, batch: list[StoredTweet], heartbeat: int | None) -> list[Any]:
        """Add the batch in one transaction: Redis answers a blocked XREAD after the
        command that added to its stream, so added one by one a publish of 5 reached the
        followers as 1, then 4 (two fan-outs to every client, each a write a client).
        A transaction Redis refuses whole (an add it would not queue: out of memory) goes
        again add by add, each result counted on its own."""
        try:
            return await self._execute(batch, heartbeat, transaction=True)
        except ResponseError:
            return await self._execute(batch, heartbeat, transaction=False)

    async def _execute(
        self, batch: list[StoredTweet], heartbeat: int | None, *, transaction: bool
    ) -> list[Any]:
        async with self._publisher().pipeline(transaction=transaction) as pipe:
            for tweet in batch:
                pipe.xadd(
                    self.key,
                    encode_tweet(tweet),  # type: ignore[arg-type]
                    id=f"{tweet.seq}-0",
                    maxlen=self.maxlen,
                    approximate=True,
                )
            if heartbeat is not None:
                self._next_heartbeat = time.monotonic() + self.heartbeat_interval
                pipe.xadd(
                    self.key,
                    encode_heartbeat(heartbeat),  # type: ignore[arg-type]
                    id=f"{heartbeat}-*",
                    maxlen=self.maxlen,
                    approximate=True,
                )
            results: list[Any] = await pipe.execute(raise_on_error=False)
            return results

    def _requeue(self, batch: list[StoredTweet]) -> None:
        """Put an unsent batch back in front; past the limit the oldest go (and are counted)."""
        self._queue.extendleft(reversed(batch))
        excess = len(self._queue) - self.queue_limit
        if excess > 0:
            for _ in range(excess):
                self._queue.popleft()
            self.metrics.bus_dropped.labels("queue_full").inc(excess)

    def _count(self, batch: list[StoredTweet], results: list[Any], heartbeat: int | None) -> None:
        m = self.metrics
        for tweet, result in zip(batch, results, strict=False):
            if not isinstance(result, Exception):
                m.bus_published.labels("tweet").inc()
            elif _STALE_ID in str(result):
                m.bus_refused.inc()  # a re-publish: the stream has it (or is past it)
            else:  # OOM on a full add-on, WRONGTYPE: Redis refused it; followers read the store
                m.bus_dropped.labels("error").inc()
                if self._error_log.allow(time.monotonic()):
                    log.warning(
                        "Redis at %s refused tweet seq %d: %.200s", self.where, tweet.seq, result
                    )
        if heartbeat is not None and len(results) > len(batch):
            result = results[len(batch)]
            if not isinstance(result, Exception):
                m.bus_published.labels("heartbeat").inc()
            elif _STALE_ID not in str(result) and self._error_log.allow(time.monotonic()):
                log.warning("Redis at %s refused a heartbeat: %.200s", self.where, result)

    # -- following --------------------------------------------------------

    async def follow(self, after: int) -> AsyncIterator[Sequence[BusItem]]:
        client = self._new_client()
        self._followers.add(client)
        last: EntryId = (after, 0)
        check_top = True
        backoff = _Backoff()
        failing = False
        try:
            while not self._closed:
                try:
                    if check_top:
                        last = await self._rewind(client, last)
                        check_top = False
                    reply: Any = await client.xread(
                        {self.key: f"{last[0]}-{last[1]}"}, count=READ_COUNT, block=READ_BLOCK_MS
                    )
                except (RedisError, OSError) as exc:
                    if self._closed:
                        return
                    self._set_connected(False)
                    failing = check_top = True
                    delay = backoff.next()
                    self._waiting(exc, delay)
                    await asyncio.sleep(delay)
                    continue
                if failing:
                    self.metrics.bus_reconnects.labels("follower").inc()
                    failing = False
                backoff.reset()
                self._set_connected(True)
                if not reply:
                    # Quiet: cheap to check that the stream was not lost meanwhile (a
                    # restart can come and go between two reads).
                    check_top = True
                    continue
                items: list[BusItem] = []
                # RESP2 answers [[key, entries]], RESP3 {key: entries}: one key either way
                entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))
                for entry_id, fields in entries:
                    try:
                        last = parse_id(entry_id)
                        items.append(decode_entry(entry_id, fields))
                    except MalformedEntry as exc:
                        self.metrics.bus_malformed.inc()
                        if self._malformed_log.allow(time.monotonic()):
                            log.warning(
                                "skipped bus entry %.40r of %s: %s", entry_id, self.key, exc
                            )
                if items:
                    yield items
        finally:
            self._followers.discard(client)
            await client.aclose()

    async def _rewind(self, client: Redis, last: EntryId) -> EntryId:
        """Where to read from: ``last``, or the stream's top when that is below it.

        A Redis restarted without persistence starts the stream anew, lower than
        where this follower was; waiting for ids above ``last`` would stall it. What
        the new stream holds up to its top is at or below ``last``: the follower has
        it (seqs are the store's), so reading on from the top loses nothing.
        """
        top: Any = await client.xrevrange(self.key, "+", "-", count=1)
        if not top:
            if last > (0, 0):
                log.info(
                    "the stream %s at %s is empty: following from its start", self.key, self.where
                )
            return (0, 0)
        top_id = parse_id(top[0][0])
        if top_id < last:
            log.info(
                "the stream %s at %s ends at %d-%d, below %d-%d: following from there",
                self.key,
                self.where,
                *top_id,
                *last,
            )
            return top_id
        return last

    # -- closing ----------------------------------------------------------

    async def close(self) -> None:
        """Stop heartbeats, send what is queued within about 2 s, disconnect."""
        self._closing = True
        self._wake.set()
        if self._sender is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), CLOSE_FLUSH)
            except TimeoutError:
                self._sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._sender
        if self._queue:
            self.metrics.bus_dropped.labels("closed").inc(len(self._queue))
            self._queue.clear()
        self._closed = True
        for client in list(self._followers):
            await client.aclose()
        if self._client is not None:
            await self._client.aclose()
        self._set_connected(False)
