"""``GET /v1/events``: server-sent events on the shared port, by the rules of the WebSocket
endpoint (tokens, channel grants, pinned filters, connection limits, the slow-client rule).

Everything that can refuse a stream is decided before it starts and answered with its
status and a JSON body, since an ``EventSource`` gives up for good on any status but 200:
401 (no token, or a bad one), 403 (a channel not granted, a filter outside the token's
pins), 404 (a rule channel outside the ingester's closed rule set), 400 (bad parameters,
:mod:`relay.core.stream_query`), 405, 429 (the connection limits per address and per
subject), 503 (shutting down). Then the answer streams (:mod:`relay.web.sse`): a
``retry:`` hint drawn per stream, the subscription's events, and at the end a ``close``
event that says why (shutdown, a slow client cut, an expired or revoked token).

A stream of one channel is a subscription like a WebSocket client's, framed once per
publish for every stream of it. A stream of several tweet channels is one subscription
over their union, so that each tweet comes once, with one id, in seq order, and a resume
reads the store in one pass: every rule's tweet is in ``tweets``, so the union is
``tweets`` (bounded to the rule channels when ``tweets`` is not one of them,
:attr:`~relay.core.filters.TweetFilter.channels`), framed for that stream alone
(:class:`~relay.web.sse.ChannelsFraming`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from relay.core import protocol
from relay.core.auth import LEEWAY
from relay.core.filters import TweetFilter
from relay.core.stream_query import parse_stream_query
from relay.core.tweets import ALL_CHANNEL
from relay.errors import (
    CLOSE_ABNORMAL,
    CLOSE_UNAUTHORIZED,
    BadRequest,
    ClientError,
    MethodNotAllowed,
    NotFound,
    StoreError,
    TokenRevoked,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from relay.stream.session import Session
from relay.web import sse
from relay.web.access_lines import access_log, log_request, redact
from relay.web.clients import Client
from relay.web.http_wire import has_body
from relay.web.routes import EVENTS_PATH as EVENTS_PATH
from relay.web.routes import error_reply

if TYPE_CHECKING:
    from websockets.http11 import Request

    from relay.access.decisions import Access
    from relay.config import Settings
    from relay.obs.metrics import Metrics
    from relay.obs.sampling import LogSampler
    from relay.stream.hub import Hub
    from relay.stream.transport import Framing
    from relay.web.clients import Clients
    from relay.web.connection import StreamConnection
    from relay.web.cors import CrossOrigin
    from relay.web.routes import Reply

log = logging.getLogger(__name__)

ROUTE = EVENTS_PATH
"""The route's label in ``relay_http_requests_total``."""

Answer = Callable[["Reply", "str | None"], "tuple[int, list[tuple[str, str]], bytes]"]


class EventStreams:
    """Opens the event streams of one server, and sees them end."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        access: Access,
        clients: Clients,
        metrics: Metrics,
        cors: CrossOrigin,
        *,
        answer: Answer,
        serving: Callable[[], bool],
        refusals: LogSampler,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.access = access
        self.policy = access.policy
        self.clients = clients
        self.metrics = metrics
        self.cors = cors
        self.answer = answer
        self.serving = serving
        self.refusals = refusals
        self.clock = clock
        self.rng = rng or random.Random()

    async def open(
        self,
        conn: StreamConnection,
        request: Request,
        headers: dict[str, str],
        address: str,
        peer: str,
    ) -> None:
        """Answer a request for ``/v1/events``: a refusal, or a stream that goes on until
        the connection ends."""
        started = time.monotonic()
        origin = headers.get("origin")
        try:
            if request.method != "GET":
                raise MethodNotAllowed(
                    f"method {request.method[:20]!r} is not allowed here", allow="GET, OPTIONS"
                )
            if has_body(request):
                raise BadRequest("a stream request has no body")
            params = parse_qs(request.path.partition("?")[2], keep_blank_values=True)
            grant = self.access.authenticate(headers, params)
            if grant is None and not self.policy.is_open:
                raise Unauthorized("this relay needs a token (Authorization: Bearer or ?token=)")
            asked = parse_stream_query(params, headers.get("last-event-id"), self.clock())
            for channel in asked.channels:
                try:
                    self.policy.check_read(grant, channel)
                except ClientError as exc:
                    exc.about = channel  # a client following several tells which one
                    raise
            limit = self.policy.limit(grant, "max_subscriptions")
            if len(asked.channels) + asked.stats > limit:
                raise BadRequest(f"too many channels: at most {limit} on one stream")
            tweet_filter = self.access.subscription_filter(grant, asked.filters)
            unknown = await self._check_known(asked.channels)
            if not self.serving():
                raise Unavailable("the relay is shutting down; connect again", retry_after=1)
            refusal = self.clients.refusal(address, grant)
            if refusal:
                self.metrics.refused.labels("connection_limit").inc()
                raise TooManyRequests(refusal, retry_after=5)
        except ClientError as exc:
            self._refuse(conn, request, exc, address, peer, origin, started)
            return
        retry = self.rng.randint(*sse.RETRY_MS)
        head = [
            ("Content-Type", sse.CONTENT_TYPE),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),  # nginx and its kind: pass each event on at once
            *self.cors.headers(origin),
            ("Connection", "close"),  # the body ends when the connection does
        ]
        hint = sse.retry_hint(retry)
        if not conn.respond(200, head, hint, streamed=True, keepalive=sse.KEEPALIVE):
            return  # gone while the request was checked
        self.metrics.http_requests.labels(ROUTE, "200").inc()
        channels = asked.channels
        framing: Framing = sse.SSE
        channel = channels[0] if channels else ""
        if len(channels) > 1:
            # One subscription over the union: `tweets`, bounded to the rule channels
            # unless `tweets` itself is asked for.
            framing, channel = sse.ChannelsFraming(channels, unknown), ALL_CHANNEL
            if ALL_CHANNEL not in channels:
                tweet_filter = replace(tweet_filter or TweetFilter(), channels=frozenset(channels))
        session = Session(
            sse.EventStream(conn, framing),
            send_buffer=self.settings.send_buffer,
            metrics=self.metrics,
            peer=peer,
        )
        client = Client(
            address, grant, session=session, started=time.monotonic(), target=request.path
        )
        conn.client = client
        self.clients.add(client)
        self.hub.add(session)
        if grant is not None:
            client.expiry = asyncio.create_task(self._expire(client), name=f"expiry {peer}")
        if channel:
            self.hub.subscribe(session, channel, asked.since, None, tweet_filter, asked.filters)
        if asked.stats:
            self.hub.subscribe(session, protocol.STATS_CHANNEL, None)

    async def _check_known(self, channels: tuple[str, ...]) -> tuple[str, ...]:
        """NotFound for a rule channel outside the ingester's closed rule set (as the
        WebSocket subscribe's ``unknown_channel``, but before the stream starts); else the
        channels no tweet has matched yet while the set is open (a stream of several says
        them in its ``subscribed``; a stream of one is told by the hub, as on WebSocket)."""
        if all(self.hub.known.knows(channel) for channel in channels):
            return ()
        try:
            known = await self.hub.refresh_channels()
        except StoreError as exc:  # the store cannot say now: the hub decides as it goes
            log.warning("cannot read the known channels: %s", exc)
            return ()
        for channel in channels:
            if known.closed and not known.knows(channel):
                self.metrics.bad_frames.labels("unknown_channel").inc()
                refusal = NotFound(known.unknown_message(channel), reason="unknownChannel")
                refusal.about = channel
                raise refusal
        return tuple(channel for channel in channels if not known.knows(channel))

    def _refuse(
        self,
        conn: StreamConnection,
        request: Request,
        exc: ClientError,
        address: str,
        peer: str,
        origin: str | None,
        started: float,
    ) -> None:
        if not isinstance(exc, (TokenRevoked, TooManyRequests)):  # counted where raised
            self.metrics.refused.labels(exc.reason).inc()
        self.metrics.http_requests.labels(ROUTE, str(exc.status)).inc()
        reply = error_reply(exc)
        if self.settings.access_log:
            log_request(
                request.method,
                request.path,
                exc.status,
                client=address,
                size=len(reply.body),
                started=started,
                path=EVENTS_PATH,
                reason=exc.message,
            )
        elif self.refusals.allow(self.clock()):
            log.info("refused an event stream from %s: %s", peer, exc.message)
        conn.respond(*self.answer(reply, origin))

    async def _expire(self, client: Client) -> None:
        """At the token's expiry the stream ends (no refresh comes over an event stream):
        a ``close`` event saying ``expired`` (or ``invalid``: signed with a retired
        secret), and the client connects again with a new token."""
        session, grant = client.session, client.grant
        assert session is not None and grant is not None
        # Past the skew a token is allowed too: the reconnect that follows is then refused,
        # where an earlier end would only have the stream open again, and end again.
        while (left := grant.expires_at + LEEWAY - self.clock()) > 0:
            await asyncio.sleep(left)
        retires_at = self.settings.previous_secret_until
        if grant.retiring and retires_at is not None and grant.expires_at >= retires_at:
            log.info("closing %s: token signed with a retired secret", session.peer)
            reason = protocol.TOKEN_INVALID
            message = "the token's secret is retired: get a new token"
        else:
            log.info("closing %s: token expired", session.peer)
            reason, message = protocol.TOKEN_EXPIRED, "the token expired: connect with a new token"
        session.close(CLOSE_UNAUTHORIZED, reason, message)

    def ended(self, client: Client, session: Session) -> None:
        """A stream's connection is gone: counted by the reason it ended, and its access
        line (the transport, why it ended, bytes, the last seq sent, how long)."""
        transport = session.transport
        assert isinstance(transport, sse.EventStream)
        code = transport.closed_with
        by = "client" if code is None or code == CLOSE_ABNORMAL else "server"
        reason = "client" if code is None else transport.reason
        self.metrics.sse_closes.labels(reason).inc()
        if not self.settings.access_log:
            return
        access_log.info(
            "event stream",
            extra={
                "client": client.address,
                "method": "GET",
                "transport": "sse",
                "path": redact(client.target),
                "status": 200,
                "closed_by": by,
                "reason": reason,
                "subject": client.grant.subject if client.grant is not None else "",
                "bytes": session.sent_bytes,
                "last_seq": session.last_seq,
                "duration_ms": round((time.monotonic() - client.started) * 1000, 2),
            },
        )
