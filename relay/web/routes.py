"""The plain GET routes that share the WebSocket port: object API, discovery, health, demo
page. Independent of the WebSocket library: :meth:`HttpApi.handle` takes a method, a path
and headers and returns a :class:`Reply`; ``server.py`` turns it into a response.

Everything a token reads here is bounded by its scope (:meth:`Access.scope`: readable
rules and pinned filters), in the query itself: a tweet or user outside it answers
exactly like a missing one. Object API queries have a time limit, counted from when
the request is accepted (503), one client (token subject, or address without a token)
has at most ``queries_per_client`` of them in flight (429), and all clients together at
most ``queries_waiting`` (503). Logs never carry a token: targets are redacted and truncated.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from relay import __version__
from relay.core.protocol import PROTOCOL_VERSION
from relay.core.query import Condition, QueryLimits, parse_tweet_query
from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX
from relay.errors import (
    BadRequest,
    ClientError,
    MethodNotAllowed,
    NotFound,
    StoreCorrupt,
    StoreError,
    TooManyRequests,
    Unavailable,
)
from relay.obs.readiness import READY, Readiness
from relay.obs.sampling import LogSampler
from relay.web.access_lines import log_request, redact
from relay.web.encoding import (
    GZIP_IN_THREAD,
    StaticFiles,
    accepts_gzip,
    compress,
    matches,
    worth_compressing,
)

if TYPE_CHECKING:
    from relay.access.decisions import Access
    from relay.core.auth import Grant
    from relay.jobs.stats import StatsSampler
    from relay.obs.metrics import Metrics
    from relay.store import Catalog
    from relay.stream.hub import Hub

log = logging.getLogger(__name__)
"""One line per HTTP request and per WebSocket connection (RELAY_ACCESS_LOG)."""

Params = dict[str, list[str]]
STREAM_PATH, EVENTS_PATH = "/v1/stream", "/v1/events"
JSON_TYPE = "application/json"
METHODS = ("GET", "HEAD")
MAX_NAME = 100
"""Longest static file name looked up; longer is a 404 without asking the file system."""
FAVICON = "favicon.svg"
RULE_KEYS_TTL = 1.0
"""Seconds the rule keys are reused while no tweet was published."""


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """The object API's limits (defaults and their measurements: ``config/relay.toml``)."""

    query: QueryLimits = field(default_factory=QueryLimits)
    query_timeout: float = 2.0
    """Seconds an object API query may run before it is stopped (503, Retry-After)."""
    queries_per_client: int = 2
    """Object API requests one client may have in flight; more answer 429."""
    queries_waiting: int = 8
    """Object API requests waiting or running, all clients together; more answer 503."""


def check_method(method: str, path: str) -> None:
    """MethodNotAllowed for anything but GET and HEAD (the stream: GET only); OPTIONS is
    answered before (:mod:`relay.web.cors`)."""
    allowed = ("GET",) if path == STREAM_PATH else METHODS
    if method not in allowed:  # methods are case-sensitive: "get" is not GET
        raise MethodNotAllowed(  # OPTIONS (a preflight) is answered before the routes
            f"method {method[:20]!r} is not allowed here", allow=", ".join((*allowed, "OPTIONS"))
        )


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, orjson.dumps(value))


def error_reply(exc: ClientError) -> Reply:
    reply = json_reply(exc.status, exc.as_body())
    if exc.retry_after is not None:
        reply.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, MethodNotAllowed):
        reply.headers["Allow"] = exc.allow
    return reply


def _results(objects: list[bytes], count: int) -> bytes:
    """``{"results": [...], "count": n}`` around objects that are already encoded."""
    return b'{"results":[' + b",".join(objects) + b'],"count":' + str(count).encode() + b"}"


HOST_PATTERN = re.compile(
    r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?"
)
"""A host (name or address, with a port) as a Host header may carry it."""


class HttpApi:
    def __init__(
        self,
        store: Catalog,
        hub: Hub,
        metrics: Metrics,
        access: Access,
        *,
        public_url: str = "",
        readiness: Callable[[], Readiness] = lambda: READY,
        web_root: Path | None = None,
        limits: ApiLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        trusted_proxies: int = 0,
        stats: StatsSampler | None = None,
        access_log: bool = True,
    ) -> None:
        self.stats = stats
        self.access_log = access_log
        self.trusted_proxies = trusted_proxies
        """X-Forwarded-Proto and -Host are believed only behind trusted proxies."""
        self.store = store
        self.hub = hub
        self.access = access
        self.metrics = metrics
        self.public_url = public_url.rstrip("/")
        self.readiness = readiness
        self.web_root = web_root or Path(str(resources.files("client_demo") / "web"))
        self._files = StaticFiles(self.web_root)
        self.limits = limits or ApiLimits()
        self.clock = clock
        self.wall_clock = wall_clock
        """Unix time: what a relative ``since_time`` (``-15m``) counts back from."""
        self._in_flight: Counter[str] = Counter()
        self._queries = 0
        """Object API requests in flight, all clients together."""
        self._sampler = LogSampler()
        # A request that fails the same way each time must not write a traceback each
        # time: anyone can send it as often as they like.
        self._failures = LogSampler(what="failed requests")
        self._keys: tuple[int, float, list[str]] | None = None
        self._routes: dict[str, Callable[[Params, Mapping[str, str], str], Awaitable[Reply]]] = {
            "/v1/info": self._info,
            "/v1/objects/tweets": self._tweets,
            "/healthz": self._health,
            "/readyz": self._ready,
            "/metrics": self._metrics,
            "/v1/stats": self._stats,
        }

    async def handle(
        self, target: str, headers: Mapping[str, str], *, method: str = "GET", client: str = ""
    ) -> Reply:
        """Answer one request for ``target`` (path and query) from ``client`` (its address).

        HEAD is answered as GET; the caller sends the headers only.
        """
        started = time.monotonic()
        refusal = ""
        path, route = "", "other"
        try:
            try:
                parts = urlsplit(target)
            except ValueError:  # "//[x": what urlsplit takes for a broken IPv6 host
                raise BadRequest("the request target is not a URL path") from None
            path = parts.path.rstrip("/") or "/"
            route = path if path in self._routes else "other"
            check_method(method, path)
            params = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
            handler = self._routes.get(path)
            if handler is not None:
                reply = await handler(params, headers, client)
            elif path.startswith("/v1/objects/tweets/"):
                route = "/v1/objects/tweets/<id>"
                reply = await self._tweet(path, params, headers, client)
            elif path.startswith("/v1/objects/users/"):
                route = "/v1/objects/users/<id>"
                reply = await self._user(path, params, headers, client)
            else:
                route = "static"
                reply = self._static(path, headers)
        except ClientError as exc:
            refusal = exc.message[:200]
            # With the access log on, its line says why: one line a refused request.
            if not self.access_log and self._sampler.allow(self.clock()):
                log.info("%.10s %s -> %d: %.200s", method, redact(target), exc.status, exc.message)
            reply = error_reply(exc)
        except StoreError as exc:  # the database is down or restarting: not the client's fault
            if self._sampler.allow(self.clock()):
                log.warning("%.10s %s -> 503: %.200s", method, redact(target), exc)
            # A damaged store stops this process (the store told the relay): elsewhere.
            message = (
                "the store is damaged; ask another relay or again later"
                if isinstance(exc, StoreCorrupt)
                else "the store is unavailable; ask again later"
            )
            reply = error_reply(Unavailable(message))
        except Exception:
            if self._failures.allow(self.clock()):
                log.error("error answering %.10s %s", method, redact(target), exc_info=True)
            reply = json_reply(
                500, {"errors": [{"message": "internal error", "reason": "internal"}]}
            )
        self.metrics.http_requests.labels(route, str(reply.status)).inc()
        reply = await self._encode(reply, headers)
        if self.access_log:
            log_request(
                method,
                target,
                reply.status,
                client=client,
                size=0 if method == "HEAD" else len(reply.body),
                started=started,
                path=path,
                reason=refusal,
            )
        return reply

    def base_urls(self, headers: Mapping[str, str]) -> tuple[str, str]:
        """The http(s) and ws(s) base URLs a client should use, behind a proxy too."""
        if self.public_url:
            http = self.public_url
        else:
            # Any client can write X-Forwarded-*: only a trusted proxy's are used, and only
            # a well-formed host, so /v1/info never points clients at a forged address.
            forwarded = self.trusted_proxies > 0
            proto = headers.get("x-forwarded-proto", "") if forwarded else ""
            proto = proto.split(",")[0].strip().lower()
            host = (headers.get("x-forwarded-host", "") if forwarded else "").split(",")[0]
            host = host.strip() or headers.get("host", "")
            if proto not in ("http", "https"):
                proto = "http"
            if not HOST_PATTERN.fullmatch(host):
                host = "localhost"
            http = f"{proto}://{host}"
        ws = "wss" + http[5:] if http.startswith("https") else "ws" + http[4:]
        return http, ws

    async def _info(self, params: Params, headers: Mapping[str, str], client: str) -> Reply:
        http, ws = self.base_urls(headers)
        # The rule channels of the ingester's rule set too: the bundled sample's and a
        # rules file's exist before any tweet has matched them.
        keys = sorted({*await self._rule_keys(), *self.hub.known.keys()})
        return json_reply(
            200,
            {
                "name": "tweet-relay",
                "version": __version__,
                "protocol": PROTOCOL_VERSION,
                "stream_url": ws + STREAM_PATH,
                "events_url": http + EVENTS_PATH,
                "objects_url": http + "/v1/objects/tweets",
                "epoch": self.hub.epoch,
                "seq": self.hub.head,
                "channels": [ALL_CHANNEL, *(RULE_PREFIX + key for key in keys)],
                "public": self.access.policy.is_public(ALL_CHANNEL),
                "public_channels": list(self.access.policy.public_channels),
                # Where the store's history starts is history_start; older tweets may be in
                # the archive, which clients cannot resume into through the stream.
                "archive": self.stats.archive if self.stats is not None else None,
            },
        )

    def _grant(self, params: Params, headers: Mapping[str, str]) -> Grant | None:
        """The request's grant; the token parameter is consumed here, not by the query."""
        grant = self.access.authenticate(headers, params)
        params.pop("token", None)
        return grant

    async def _scope(self, grant: Grant | None) -> tuple[Condition, ...]:
        """What ``grant`` may read; Unauthorized/Forbidden before any object is looked at."""
        return self.access.scope(grant, await self._rule_keys())

    async def _rule_keys(self) -> list[str]:
        """The store's rule keys, reused for a second while the hub's head stays put.

        New keys come only with new tweets, so a changed head reads them again.
        """
        head, now = self.hub.head, self.clock()
        cached = self._keys
        if cached is not None and cached[0] == head and now - cached[1] < RULE_KEYS_TTL:
            return cached[2]
        keys = await self.store.rule_keys()
        self._keys = (head, now, keys)
        return keys

    @contextmanager
    def _slot(self, grant: Grant | None, client: str) -> Iterator[None]:
        """One of the client's object API queries in flight.

        429 past the client's own limit: that client asks too much. 503 past the global
        one: the relay is busy, through no fault of this client, which may ask again soon.
        Refused at once rather than queued, since a queued query would use up its time
        limit waiting.
        """
        key = f"sub:{grant.subject}" if grant is not None else f"addr:{client}"
        if self._in_flight[key] >= self.limits.queries_per_client:
            self.metrics.refused.labels("queries_per_client").inc()
            raise TooManyRequests(
                f"at most {self.limits.queries_per_client} object queries at once per client"
            )
        if self._queries >= self.limits.queries_waiting:
            self.metrics.refused.labels("queries_waiting").inc()
            raise Unavailable("the object API is busy; ask again later")
        self._in_flight[key] += 1
        self._queries += 1
        try:
            yield
        finally:
            self._queries -= 1
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]

    async def _tweets(self, params: Params, headers: Mapping[str, str], client: str) -> Reply:
        params = dict(params)
        grant = self._grant(params, headers)
        query = parse_tweet_query(params, self.limits.query, self.wall_clock())
        if "rule" in params:
            self.access.policy.check_read(grant, RULE_PREFIX + params["rule"][0])
        with self._slot(grant, client):
            query = query.narrowed(await self._scope(grant))
            objects, count = await self.store.query(query, timeout=self.limits.query_timeout)
        if query.count_only:
            return json_reply(200, {"count": count})
        return Reply(200, _results(objects, count))

    async def _tweet(
        self, path: str, params: Params, headers: Mapping[str, str], client: str
    ) -> Reply:
        grant = self._grant(params, headers)
        with self._slot(grant, client):
            scope = await self._scope(grant)
            # Outside the scope answers exactly like missing: no oracle for what exists.
            return Reply(200, await self._one(self.store.tweet, "tweet", path, scope))

    async def _user(
        self, path: str, params: Params, headers: Mapping[str, str], client: str
    ) -> Reply:
        grant = self._grant(params, headers)
        with self._slot(grant, client):
            scope = await self._scope(grant)
            # A user is readable when one of its tweets is (within the scope).
            return Reply(200, await self._one(self.store.user, "user", path, scope))

    async def _one(
        self,
        fetch: Callable[..., Awaitable[bytes | None]],
        kind: str,
        path: str,
        scope: tuple[Condition, ...],
    ) -> bytes:
        object_id = unquote(path.rsplit("/", 1)[1])
        body = None
        if object_id and len(object_id) <= 64 and "\x00" not in object_id:
            body = await fetch(object_id, scope, timeout=self.limits.query_timeout)
        if body is None:
            raise NotFound(f"no {kind} with id {object_id[:64]!r}")
        return body

    async def _health(self, params: Params, headers: Mapping[str, str], client: str) -> Reply:
        return json_reply(200, {"status": "ok"})

    async def _ready(self, params: Params, headers: Mapping[str, str], client: str) -> Reply:
        state = self.readiness()
        body = {"status": state.status}
        if state.error:
            body["error"] = redact(state.error)  # public: never a token, whatever failed
        return json_reply(200 if state == READY else 503, body)

    async def _stats(self, params: Params, headers: Mapping[str, str], client: str) -> Reply:
        # Public like /v1/info: counts and sizes, never a tweet or a subject.
        if self.stats is None:
            raise NotFound("no stats in this process")
        reply = json_reply(200, await self.stats.current())
        reply.headers["Cache-Control"] = "no-store"
        return reply

    async def _metrics(self, params: Params, headers: Mapping[str, str], client: str) -> Reply:
        return Reply(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    def _static(self, path: str, headers: Mapping[str, str]) -> Reply:
        name = "index.html" if path == "/" else path.lstrip("/")
        if name == "favicon.ico":
            name = FAVICON  # what browsers and tools ask for without reading the page
        # A flat folder: no sub-paths, so no way out of it.
        if "/" in name or "\\" in name or name.startswith(".") or len(name) > MAX_NAME:
            raise NotFound(f"no such path: {path[:100]}")
        found = self._files.read(name)
        if found is None:
            raise NotFound(f"no such path: {path[:100]}")
        body, etag = found
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        # no-cache: the browser asks every time, and a matching ETag answers 304, no body.
        cache = {"Cache-Control": "no-cache", "ETag": etag}
        if matches(etag, headers):
            return Reply(304, b"", content_type, cache)
        return Reply(200, body, content_type, cache)

    async def _encode(self, reply: Reply, headers: Mapping[str, str]) -> Reply:
        """gzip the body when the client takes it and it is worth it."""
        if not worth_compressing(reply.content_type, reply.body):
            return reply
        reply.headers["Vary"] = "Accept-Encoding"
        if not accepts_gzip(headers):
            return reply
        body = reply.body
        packed = (
            await asyncio.to_thread(compress, body)
            if len(body) > GZIP_IN_THREAD
            else compress(body)
        )
        reply.headers["Content-Encoding"] = "gzip"
        return Reply(reply.status, packed, reply.content_type, reply.headers)
