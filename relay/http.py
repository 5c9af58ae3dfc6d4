"""The plain GET routes that share the WebSocket port: object API, discovery, health, demo page.

Independent of the WebSocket library: :meth:`HttpApi.handle` takes a path and
headers and returns a :class:`Reply`; ``server.py`` turns it into a response.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from relay import __version__
from relay.errors import ClientError, Forbidden, NotFound
from relay.protocol import PROTOCOL_VERSION
from relay.query import parse_tweet_query
from relay.tweets import ALL_CHANNEL, RULE_PREFIX

if TYPE_CHECKING:
    from relay.access import Access
    from relay.auth import Grant
    from relay.hub import Hub
    from relay.metrics import Metrics
    from relay.store import Store

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/stream"
JSON_TYPE = "application/json"


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, value: Any) -> Reply:
    return Reply(status, orjson.dumps(value))


def error_reply(exc: ClientError) -> Reply:
    return json_reply(exc.status, exc.as_body())


def _results(objects: list[bytes], count: int) -> bytes:
    """``{"results": [...], "count": n}`` around objects that are already encoded."""
    return b'{"results":[' + b",".join(objects) + b'],"count":' + str(count).encode() + b"}"


class HttpApi:
    def __init__(
        self,
        store: Store,
        hub: Hub,
        metrics: Metrics,
        access: Access,
        *,
        public_url: str = "",
        is_ready: Callable[[], bool] = lambda: True,
        web_root: Path | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.access = access
        self.metrics = metrics
        self.public_url = public_url.rstrip("/")
        self.is_ready = is_ready
        self.web_root = web_root or Path(str(resources.files("client_demo") / "web"))
        self._routes: dict[
            str, Callable[[Mapping[str, list[str]], Mapping[str, str]], Awaitable[Reply]]
        ] = {
            "/v1/info": self._info,
            "/v1/objects/tweets": self._tweets,
            "/healthz": self._health,
            "/readyz": self._ready,
            "/metrics": self._metrics,
        }

    async def handle(self, target: str, headers: Mapping[str, str]) -> Reply:
        """Answer one GET request for ``target`` (path and query)."""
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        route = path
        try:
            params = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
            handler = self._routes.get(path)
            if handler is not None:
                reply = await handler(params, headers)
            elif path.startswith("/v1/objects/tweets/"):
                route = "/v1/objects/tweets/<id>"
                reply = await self._tweet(path, self._grant(params, headers))
            elif path.startswith("/v1/objects/users/"):
                route = "/v1/objects/users/<id>"
                reply = await self._user(path, self._grant(params, headers))
            else:
                route = "static"
                reply = self._static(path)
        except ClientError as exc:
            log.info("GET %.200s -> %d: %s", target, exc.status, exc.message)
            reply = error_reply(exc)
        except Exception:
            log.exception("error answering %s", target)
            reply = json_reply(
                500, {"errors": [{"message": "internal error", "reason": "internal"}]}
            )
        self.metrics.http_requests.labels(route, str(reply.status)).inc()
        return reply

    def base_urls(self, headers: Mapping[str, str]) -> tuple[str, str]:
        """The http(s) and ws(s) base URLs a client should use, behind a proxy too."""
        if self.public_url:
            http = self.public_url
        else:
            proto = headers.get("x-forwarded-proto", "http").split(",")[0].strip() or "http"
            host = headers.get("x-forwarded-host") or headers.get("host") or "localhost"
            http = f"{proto}://{host}"
        ws = "wss" + http[5:] if http.startswith("https") else "ws" + http[4:]
        return http, ws

    async def _info(self, params: Mapping[str, list[str]], headers: Mapping[str, str]) -> Reply:
        http, ws = self.base_urls(headers)
        keys = await self.store.rule_keys()
        return json_reply(
            200,
            {
                "name": "tweet-relay",
                "version": __version__,
                "protocol": PROTOCOL_VERSION,
                "stream_url": ws + STREAM_PATH,
                "objects_url": http + "/v1/objects/tweets",
                "epoch": self.hub.epoch,
                "seq": self.hub.head,
                "channels": [ALL_CHANNEL, *(RULE_PREFIX + key for key in keys)],
                "public": self.access.policy.is_public(ALL_CHANNEL),
                "public_channels": list(self.access.policy.public_channels),
            },
        )

    def _grant(self, params: dict[str, list[str]], headers: Mapping[str, str]) -> Grant | None:
        """The request's grant; the token parameter is consumed here, not by the query."""
        grant = self.access.authenticate(headers, params)
        params.pop("token", None)
        return grant

    async def _tweets(self, params: Mapping[str, list[str]], headers: Mapping[str, str]) -> Reply:
        params = dict(params)
        grant = self._grant(params, headers)
        query = parse_tweet_query(params)
        if "rule" in params:
            self.access.policy.check_read(grant, RULE_PREFIX + params["rule"][0])
        readable = self.access.readable_rules(grant, await self.store.rule_keys())
        if readable is not None:
            query = query.restricted_to_rules(readable)
        objects, count = await self.store.query(query)
        if query.count_only:
            return json_reply(200, {"count": count})
        return Reply(200, _results(objects, count))

    async def _tweet(self, path: str, grant: Grant | None) -> Reply:
        body = await self._one(self.store.tweet, "tweet", path)
        rules = orjson.loads(body).get("rules") or []
        if not self.access.can_see(grant, rules):
            # Refused the same way as a listing would be; never a hint of its content.
            self.access.readable_rules(grant, [])
            raise Forbidden("the tweet belongs to no channel this token grants")
        return Reply(200, body)

    async def _user(self, path: str, grant: Grant | None) -> Reply:
        self.access.readable_rules(grant, [])  # any readable channel shows authors
        return Reply(200, await self._one(self.store.user, "user", path))

    async def _one(
        self, fetch: Callable[[str], Awaitable[bytes | None]], kind: str, path: str
    ) -> bytes:
        object_id = unquote(path.rsplit("/", 1)[1])
        body = await fetch(object_id) if object_id else None
        if body is None:
            raise NotFound(f"no {kind} with id {object_id[:64]!r}")
        return body

    async def _health(self, params: Mapping[str, list[str]], headers: Mapping[str, str]) -> Reply:
        return json_reply(200, {"status": "ok"})

    async def _ready(self, params: Mapping[str, list[str]], headers: Mapping[str, str]) -> Reply:
        ready = self.is_ready()
        return json_reply(200 if ready else 503, {"status": "ready" if ready else "starting"})

    async def _metrics(self, params: Mapping[str, list[str]], headers: Mapping[str, str]) -> Reply:
        return Reply(200, self.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")

    def _static(self, path: str) -> Reply:
        name = "index.html" if path == "/" else path.lstrip("/")
        # A flat folder: no sub-paths, so no way out of it.
        if "/" in name or "\\" in name or name.startswith("."):
            raise NotFound(f"no such path: {path[:100]}")
        file = self.web_root / name
        if not file.is_file():
            raise NotFound(f"no such path: {path[:100]}")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        return Reply(200, file.read_bytes(), content_type, {"Cache-Control": "no-cache"})
