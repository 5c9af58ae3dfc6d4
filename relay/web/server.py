"""The server of the one port: upgrade on ``/v1/stream``, server-sent events on
``/v1/events`` (:mod:`relay.web.events`), plain GET for the rest.

It only moves data between the connections and the sans-I/O parts: frames go
through :mod:`relay.core.protocol`, subscriptions through the hub, outbound frames
through each connection's :class:`~relay.stream.session.Session`. It is the
:class:`~relay.web.roles.Handler` of the relay's own connection layer
(:mod:`relay.web.listener`, :mod:`relay.web.connection`): it answers each opening request
on the connection (a plain route or a refusal) or has it upgraded, and sees whole
messages and the end. What it knows of each stream client beyond its session (address,
grant, rate, expiry) is a :class:`~relay.web.clients.Client`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Container
from typing import Any
from urllib.parse import parse_qs

from websockets.datastructures import Headers
from websockets.http11 import Request

from relay.access.forwarded import FORWARDED_FOR, client_address
from relay.config import Settings
from relay.core import protocol
from relay.core.auth import TokenBucket
from relay.errors import (
    CLOSE_ABNORMAL,
    CLOSE_POLICY,
    CLOSE_RATE_LIMITED,
    CLOSE_UNAUTHORIZED,
    BadForwardedFor,
    BadRequest,
    ClientError,
    Forbidden,
    ProtocolError,
    TokenRevoked,
    Unauthorized,
)
from relay.obs.metrics import Metrics
from relay.obs.sampling import LogSampler
from relay.stream.hub import Hub
from relay.stream.session import Session
from relay.web.access_lines import access_log, log_request
from relay.web.clients import Client, Clients
from relay.web.connection import StreamConnection
from relay.web.cors import CrossOrigin
from relay.web.events import EVENTS_PATH, EventStreams
from relay.web.http_wire import Refusal, has_body
from relay.web.listener import Listener
from relay.web.routes import STREAM_PATH, HttpApi, Reply, error_reply
from relay.web.sockets import SocketCount, sample_accept_errors, socket_name
from relay.web.sse import EventStream

log = logging.getLogger(__name__)


class StreamServer:
    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        api: HttpApi,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.api = api
        self.metrics = metrics
        self.clock = clock
        self.access = api.access
        self.policy = self.access.policy
        self.server: Listener | None = None
        self.clients = Clients(self.policy)
        self.cors = CrossOrigin(settings.cors_origins)
        # Every socket per address, from the accept. Behind trusted proxies every client
        # has the proxy's address: counted, never refused (the proxy bounds its sockets).
        self.sockets = SocketCount(
            0 if settings.trusted_proxies else settings.max_sockets_per_address, metrics
        )
        self._forwarded_sampler = LogSampler(what="bad X-Forwarded-For entries")
        # Refusals come at whatever rate clients choose (handshakes, bad frames): each is
        # counted in a metric, but only a sample of them is logged.
        self._refusals_logged = LogSampler()
        self.events = EventStreams(
            settings,
            hub,
            self.access,
            self.clients,
            metrics,
            self.cors,
            answer=self._answer,
            serving=lambda: self.server is not None and self.server.serving,
            refusals=self._refusals_logged,
            clock=clock,
        )

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on host and port, or on ``sock`` when given (a socket already
        listening, taken over from the health server of a process that was starting)."""
        sample_accept_errors()
        self.server = Listener(
            self,
            sockets=self.sockets,
            metrics=self.metrics,
            max_size=self.settings.max_frame,
            send_buffer=self.settings.send_buffer,
            # Deflate per client costs about 40% of the event loop under load (profiled in
            # the soak) and zlib state per connection: off unless the operator wants it.
            compression=self.settings.compression,
            ping_interval=self.settings.ping_interval,
            ping_timeout=self.settings.ping_timeout,
            open_timeout=self.settings.open_timeout,
            keepalive=self.settings.sse_keepalive,
        )
        await self.server.start(sock, self.settings.host, self.settings.port)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def stop_accepting(self) -> None:
        if self.server is not None:
            await self.server.stop_accepting()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.close()

    async def process_request(self, conn: StreamConnection, request: Request) -> bool:
        """The opening request: a plain route or a refusal, answered on the connection;
        True to upgrade it (an authorised stream request)."""
        path, _, query = request.path.partition("?")
        headers = _plain_headers(request.headers)
        address = self._client_address(conn, request)
        origin = headers.get("origin")
        if request.method == "OPTIONS":
            self._preflight(conn, request, headers, address)
            return False
        if path == EVENTS_PATH:  # server-sent events: answered here, streamed
            await self.events.open(conn, request, headers, address, _peer(conn, address))
            return False
        if path != STREAM_PATH or request.method != "GET":
            reply = await self.api.handle(
                request.path, headers, method=request.method, client=address
            )
            conn.respond(*self._answer(reply, origin, head=request.method == "HEAD"))
            return False
        # Refused before the upgrade: a bad token never gets a WebSocket.
        try:
            if has_body(request):
                raise BadRequest("a stream request has no body")
            grant = self.access.authenticate(headers, parse_qs(query))
            if grant is None and not self.policy.is_open:
                raise Unauthorized("this relay needs a token (Authorization: Bearer or ?token=)")
        except ClientError as exc:
            if not isinstance(exc, TokenRevoked):  # Access counted it already, as revoked
                self.metrics.refused.labels(exc.reason).inc()
            self._log_refusal(
                "refused a stream connection from %s: %s", _peer(conn, address), exc.message
            )
            conn.respond(*self._answer(error_reply(exc), origin))
            return False
        # On the connection itself: a failed handshake leaves nothing behind.
        conn.client = Client(address, grant)
        return True

    def _preflight(
        self, conn: StreamConnection, request: Request, headers: dict[str, str], address: str
    ) -> None:
        """An ``OPTIONS`` request (a browser's CORS preflight): what may be sent, no body."""
        status, answer = self.cors.preflight(headers)
        if has_body(request):  # the connection closes after the answer: nothing is left unread
            status = 400
        self.metrics.http_requests.labels("preflight", str(status)).inc()
        if self.settings.access_log:
            log_request(
                "OPTIONS", request.path, status, client=address, size=0, started=time.monotonic()
            )
        conn.respond(status, [*answer, ("Content-Length", "0"), ("Connection", "close")])

    def _answer(
        self, reply: Reply, origin: str | None, *, head: bool = False
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """The HTTP answer's status, headers and body; for HEAD the same headers
        (Content-Length too) and no body."""
        headers = [("Content-Type", reply.content_type)]
        if reply.status != 304:  # a 304's length would be the 200's: none is simpler
            headers.append(("Content-Length", str(len(reply.body))))
        extra = dict(reply.headers)
        for name, value in self.cors.headers(origin):
            if name == "Vary" and "Vary" in extra:  # one Vary naming both
                extra["Vary"] = f"{extra['Vary']}, {value}"
            else:
                headers.append((name, value))
        # The connection closes after any answer but an upgrade: say so.
        headers.append(("Connection", "close"))
        headers.extend(extra.items())
        return reply.status, headers, b"" if head else reply.body

    def malformed(self, conn: StreamConnection, refusal: Refusal) -> None:
        """Count and log a request answered at the wire, like one answered by a route."""
        self.metrics.http_requests.labels("malformed", str(refusal.status)).inc()
        if self.settings.access_log:
            log_request(
                refusal.method,
                refusal.target,
                refusal.status,
                client=_address(conn),
                size=len(refusal.body().encode()),
                started=time.monotonic(),
                reason=refusal.reason,
            )
        else:
            self._log_refusal("refused a request from %s: %s", _peer(conn), refusal.reason)

    def _client_address(self, conn: StreamConnection, request: Request) -> str:
        """The client's address, through the trusted proxies' X-Forwarded-For (one place)."""
        try:
            return client_address(
                _address(conn),
                request.headers.get_all(FORWARDED_FOR),
                self.settings.trusted_proxies,
            )
        except BadForwardedFor as exc:
            self.metrics.bad_forwarded_for.inc()
            if self._forwarded_sampler.allow(time.monotonic()):
                log.info("%s from %s; counted by that address", exc, _peer(conn))
            return _address(conn)

    def opened(self, conn: StreamConnection) -> None:
        """The upgrade is done: a session, unless the connection limits refuse it."""
        client = conn.client
        assert client is not None  # only an authorised request is upgraded
        peer = _peer(conn, client.address)
        refusal = self.clients.refusal(client.address, client.grant)
        if refusal:
            self.metrics.refused.labels("connection_limit").inc()
            self._log_refusal("refused %s: %s", peer, refusal)
            conn.client = None
            conn.close(CLOSE_POLICY, refusal)
            return
        session = Session(
            conn, send_buffer=self.settings.send_buffer, metrics=self.metrics, peer=peer
        )
        client.session = session
        client.started = time.monotonic()
        client.bucket = TokenBucket(
            self.policy.limit(client.grant, "ops_per_second"), self.policy.ops_burst, self.clock()
        )
        self.clients.add(client)
        self.hub.add(session)
        if client.grant is not None:
            client.expiry = asyncio.create_task(self._watch_expiry(client), name=f"expiry {peer}")

    def received(self, conn: StreamConnection, message: str | bytes) -> None:
        client = conn.client
        if client is None or client.session is None or client.session.closed:
            return  # refused, or being closed: nothing more is read from it
        if self._take_op(client, "operations"):
            self._on_frame(client, client.session, message)

    def control(self, conn: StreamConnection) -> bool:
        client = conn.client
        return client is None or client.session is None or self._take_op(client, "control frames")

    def closed(self, conn: StreamConnection) -> None:
        client, conn.client = conn.client, None
        if client is None or client.session is None:
            return
        if isinstance(client.session.transport, EventStream):
            self.events.ended(client, client.session)
        else:
            self._log_close(conn, client, client.session)
        client.stop()
        self.hub.remove(client.session)
        self.clients.remove(client)

    def _log_close(self, conn: StreamConnection, client: Client, session: Session) -> None:
        """Count the close by code and side; the access line of a WebSocket connection."""
        ws = conn.protocol
        if ws.close_rcvd is not None and ws.close_rcvd_then_sent is not False:
            code, by = ws.close_rcvd.code, "client"  # it closed first (or alone)
        elif ws.close_sent is not None:
            code, by = ws.close_sent.code, "server"
        else:
            code, by = CLOSE_ABNORMAL, "lost"  # no close frame either way
        self.metrics.closes.labels(str(code), by).inc()
        if not self.settings.access_log:
            return
        access_log.info(
            "websocket",
            extra={
                "client": client.address,
                "method": "WS",
                "transport": "websocket",
                "path": STREAM_PATH,
                "status": code,
                "closed_by": by,
                "subject": client.grant.subject if client.grant is not None else "",
                "bytes": session.sent_bytes,
                "last_seq": session.last_seq,
                "duration_ms": round((time.monotonic() - client.started) * 1000, 2),
            },
        )

    def _take_op(self, client: Client, what: str) -> bool:
        """Count one client frame against the connection's rate; over it, close with 4029."""
        if client.bucket is None or client.bucket.take(self.clock()):
            return True
        session = client.session
        if session is not None and not session.closed:
            self.metrics.refused.labels("rate_limited").inc()
            self._log_refusal("closing %s: too many %s", session.peer, what)
            session.close(CLOSE_RATE_LIMITED, "rate_limited")
        return False

    def _log_refusal(self, message: str, *args: object) -> None:
        if self._refusals_logged.allow(self.clock()):
            log.info(message, *args)

    def _on_frame(self, client: Client, session: Session, message: str | bytes) -> None:
        op: protocol.Op | None = None
        try:
            op = protocol.decode(message, self.clock())  # a relative rewind counts from now
            if op.op == "ping":
                session.push(protocol.pong(op.ref))
            elif op.op == "subscribe":
                self._subscribe(client, session, op)
            elif op.op == "unsubscribe":
                assert op.channel is not None
                self.hub.unsubscribe(session, op.channel, op.ref)
            elif op.op == "refresh":
                self._refresh(client, session, op)
        except ProtocolError as exc:
            channel = exc.channel if exc.channel is not None else (op.channel if op else None)
            self._refuse(session, exc.code, exc.message, exc.op, exc.ref, channel)
        except ClientError as exc:
            assert op is not None  # decode raises only ProtocolError
            self._refuse(session, exc.code, exc.message, op.op, op.ref, op.channel)

    def _refuse(
        self,
        session: Session,
        code: str,
        message: str,
        op: str | None,
        ref: Any,
        channel: str | None = None,
    ) -> None:
        self.metrics.bad_frames.labels(code).inc()
        self._log_refusal("refused a frame from %s: %s", session.peer, message)
        session.push(protocol.error(code, message, op, ref, channel))

    def _subscribe(self, client: Client, session: Session, op: protocol.Op) -> None:
        assert op.channel is not None
        grant = client.grant
        if op.channel != protocol.STATS_CHANNEL:  # public, like /v1/info
            self.policy.check_read(grant, op.channel)
        if op.channel not in session.subscriptions and len(session.subscriptions) >= (
            self.policy.limit(grant, "max_subscriptions")
        ):
            raise ProtocolError(
                "too_many_subscriptions", "subscription limit reached", op.op, op.ref
            )
        requested = (op.extra or {}).get("filters")
        tweet_filter = self.access.subscription_filter(grant, requested)
        self.hub.subscribe(session, op.channel, op.since, op.ref, tweet_filter, requested)

    def _refresh(self, client: Client, session: Session, op: protocol.Op) -> None:
        old = client.grant
        grant = self.access.verify((op.extra or {})["token"])
        if old is not None and grant.subject != old.subject:
            raise Forbidden("a refresh must keep the token's subject")
        if old is None and self.clients.subject_full(grant):
            # A tokenless connection taking a subject's token counts as that subject's.
            self.metrics.refused.labels("connection_limit").inc()
            raise Forbidden(f"too many connections for {grant.subject}"[:120])
        client.grant = grant
        if old is None:
            self.clients.count_subject(client, grant)
            if client.expiry is None:  # a token now: it expires
                client.expiry = asyncio.create_task(
                    self._watch_expiry(client), name=f"expiry {session.peer}"
                )
        # The new token's limits from now on: its rate here, its subscription limit at the
        # next subscribe (subscriptions past a lower limit stay; new ones are refused).
        assert client.bucket is not None
        client.bucket.set_rate(
            self.policy.limit(grant, "ops_per_second"), self.policy.ops_burst, self.clock()
        )
        session.push(protocol.refreshed(grant.expires_at, op.ref))
        for channel, sub in list(session.subscriptions.items()):
            if channel == protocol.STATS_CHANNEL:
                continue  # no grant needed, no filter to narrow
            reason = ""
            if not self.policy.can_read(grant, channel):
                reason = f"the new token does not grant {channel}"
            else:
                try:
                    narrowed = self.access.subscription_filter(grant, sub.requested)
                except ClientError as exc:
                    reason = f"{channel}: {exc.message}"
                else:
                    # The new token's pins bound the live subscription from now on.
                    session.refilter(channel, narrowed)
            if reason:
                self.hub.unsubscribe(session, channel)
                self._refuse(session, "forbidden", reason, "refresh", op.ref, channel)
        if client.refreshed is not None:
            client.refreshed.set()

    async def _watch_expiry(self, client: Client) -> None:
        """At expiry ask for a fresh token; close with 4001 when none came in the grace time."""
        session = client.session
        assert session is not None
        while True:
            grant = client.grant
            if grant is None:
                return
            refreshed = client.refreshed
            if refreshed is None:
                refreshed = client.refreshed = asyncio.Event()
            refreshed.clear()
            if await _wait(refreshed, grant.expires_at - self.clock()):
                continue
            deadline = grant.expires_at + self.settings.refresh_grace
            session.push(protocol.refresh_required(grant.expires_at, deadline))
            if await _wait(refreshed, deadline - self.clock()):
                continue
            retires_at = self.settings.previous_secret_until
            retired = grant.retiring and retires_at is not None and grant.expires_at >= retires_at
            if retired:
                # Its own lifetime is not over: the secret it is signed with is.
                log.info("closing %s: token signed with a retired secret", session.peer)
                session.close(
                    CLOSE_UNAUTHORIZED,
                    protocol.TOKEN_INVALID,
                    "the token is signed with a retired secret: get a new token",
                )
            else:
                log.info("closing %s: token expired without refresh", session.peer)
                session.close(
                    CLOSE_UNAUTHORIZED,
                    protocol.TOKEN_EXPIRED,
                    "the token expired and no refresh came in time",
                )
            return

    async def close_revoked(self, revoked: Container[str]) -> int:
        """Close with 4001 every open connection whose token id is in ``revoked``; how many."""
        connections = self.server.connections if self.server is not None else ()
        doomed = [
            (session, grant.jti)
            for conn in list(connections)
            if (client := conn.client) is not None
            and (session := client.session) is not None
            and not session.closed
            and (grant := client.grant) is not None
            and grant.jti is not None
            and grant.jti in revoked
        ]
        for session, jti in doomed:
            self.metrics.refused.labels("revoked").inc()
            # The jti names the token without being one: safe to log, useful to audit.
            log.info("closing %s: token %s revoked", session.peer, jti)
            session.close(CLOSE_UNAUTHORIZED, protocol.TOKEN_REVOKED, "the token was revoked")
        return len(doomed)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Whether ``event`` was set within ``seconds``."""
    try:
        await asyncio.wait_for(event.wait(), max(0.0, seconds))
    except TimeoutError:
        return event.is_set()
    return True


def _peer(conn: StreamConnection, client: str = "") -> str:
    """The connection for a log line: ``host:port``, and the client behind a proxy."""
    socket = socket_name(conn.remote_address)
    if client and client != socket.rsplit(":", 1)[0]:
        return f"{client} via {socket}"
    return socket


def _address(conn: StreamConnection) -> str:
    return _peer(conn).rsplit(":", 1)[0]


def _plain_headers(headers: Headers) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.raw_items()}
