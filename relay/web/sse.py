"""Server-sent events, sans-I/O framing and the event-stream transport of ``GET /v1/events``
(the request itself: :mod:`relay.web.events`).

Each payload of :mod:`relay.core.protocol` is one event: ``event:`` names its type and
``data:`` is the payload, one line of JSON (orjson writes no line break; a payload that
had one would go out as several ``data:`` lines, which a client joins back). A tweet
event carries ``id: <epoch>:<seq>``, what ``EventSource`` sends back as ``Last-Event-ID``
when it reconnects, and its data lists the stream's channels the tweet is on
(``"channels"``). A ``reset`` carries the id of the new epoch's head, and so does a
``subscribed`` after which nothing comes from the store (a reconnect then resumes from
the moment the stream began, not from whenever it comes back).

One framing serves every stream of one channel (:data:`SSE`): the hub frames each publish
once for all of them, as for WebSocket. A stream of several channels is one subscription
over their union (:mod:`relay.web.events`) and has a framing of its own
(:class:`ChannelsFraming`), which names, for each tweet, which of its channels it is on.

The transport (:class:`EventStream`) writes to a :class:`~relay.web.connection.
StreamConnection` whose answer streams; closing it writes a last ``close`` event that says
why (the reason, the last seq sent, the close code a WebSocket would have had) and ends
the response.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from relay.core.protocol import STATS_CHANNEL
from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX
from relay.errors import CLOSE_ABNORMAL

if TYPE_CHECKING:
    from relay.store import StoredTweet
    from relay.stream.transport import Framing
    from relay.web.connection import StreamConnection

CONTENT_TYPE = "text/event-stream; charset=utf-8"
KEEPALIVE = b": keep-alive\n\n"
"""A comment line: clients ignore it; routers see bytes and leave the stream open."""
RETRY_MS = (1000, 3000)
"""The range of the ``retry:`` hint (ms), drawn per stream: EventSource has no jitter of its
own, and a relay that restarts would otherwise get every client back in the same instant."""

_TWEET = b"\nevent: tweet\ndata: "
_TYPE_PREFIX = b'{"type":"'
_WITH_ID = frozenset((b"reset", b"subscribed"))


def event(kind: bytes, data: bytes, event_id: bytes = b"") -> bytes:
    """One complete event: ``id:`` (when given), ``event:`` and ``data:``."""
    if b"\n" in data or b"\r" in data:
        data = b"\ndata: ".join(data.splitlines())
    head = b"id: " + event_id + b"\n" if event_id else b""
    return b"%sevent: %s\ndata: %s\n\n" % (head, kind, data)


def retry_hint(milliseconds: int) -> bytes:
    return b"retry: %d\n\n" % milliseconds


def position_id(epoch: str, seq: int) -> bytes:
    """An event id: ``<epoch>:<seq>``."""
    return b"%s:%d" % (epoch.encode(), seq)


def payload_type(payload: bytes) -> bytes:
    """The ``type`` of a payload (it is the first key of every payload but ``stats``)."""
    if payload.startswith(_TYPE_PREFIX):
        end = payload.find(b'"', len(_TYPE_PREFIX))
        if end > 0:
            return payload[len(_TYPE_PREFIX) : end]
    kind = orjson.loads(payload).get("type")
    return kind.encode() if isinstance(kind, str) else b"message"


def message_event(payload: bytes, fields: dict[str, Any] | None = None) -> bytes:
    """A reply or an announcement as an event (``fields``: the payload decoded, when the
    caller has it). ``reset``, and ``subscribed`` when nothing comes from the store before
    live tweets, carry the id of the position they name."""
    kind = payload_type(payload)
    event_id = b""
    if kind in _WITH_ID:
        if fields is None:
            fields = orjson.loads(payload)
        if kind == b"reset" or (
            fields.get("recovered") == 0 and fields.get("channel") != STATS_CHANNEL
        ):
            event_id = position_id(fields["epoch"], fields["seq"])
    return event(kind, payload, event_id)


def close_fields(code: int, reason: str) -> dict[str, Any]:
    """The data of a stream's last event (``"type": "close"``): the close reason (JSON:
    ``reason``, ``seq``, perhaps ``message``; :func:`relay.core.protocol.close_reason`) with
    the close ``code`` a WebSocket would have had."""
    try:
        fields = orjson.loads(reason)
    except orjson.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict):
        fields = {"reason": reason}
    return {"type": "close", **fields, "code": code}


class EventFraming:
    """The server-sent events kind for a stream of one channel: shared by all of them."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return "sse"

    def message(self, payload: bytes) -> bytes:
        return message_event(payload)

    def tweets(
        self,
        channel: str,
        epoch: str,
        tweets: Sequence[StoredTweet],
        payloads: Sequence[bytes],
    ) -> list[bytes]:
        # The payload without its closing brace, then the channels: one copy a tweet.
        prefix = b"id: " + epoch.encode() + b":"
        suffix = b',"channels":' + orjson.dumps([channel]) + b"}\n\n"
        return [
            b"".join((prefix, b"%d" % tweet.seq, _TWEET, memoryview(payload)[:-1], suffix))
            for tweet, payload in zip(tweets, payloads, strict=True)
        ]

    def page(self, channel: str, epoch: str, rows: Iterable[tuple[int, bytes]]) -> bytes:
        head = b"id: " + epoch.encode() + b":"
        middle = _TWEET + b'{"type":"tweet","channel":' + orjson.dumps(channel) + b',"seq":'
        tail = b',"channels":' + orjson.dumps([channel]) + b"}\n\n"
        key = b',"tweet":'
        parts: list[bytes] = []
        extend = parts.extend
        for seq, body in rows:
            digits = b"%d" % seq
            extend((head, digits, middle, digits, key, body, tail))
        return b"".join(parts)


SSE = EventFraming()
"""The one framing of the streams of one channel."""


class ChannelsFraming:
    """The framing of one stream of several tweet channels: one subscription to ``tweets``
    bounded to their union (:mod:`relay.web.events`). Each tweet event says which of the
    stream's channels it is on (``channel`` the first of them, ``channels`` all), and the
    subscription's replies and announcements name the stream's channels (``channels``)
    instead of ``tweets``; its ``subscribed`` names in ``unknown`` those of them no tweet
    had matched when it started (the rule set still open). A publish is framed for this
    stream alone."""

    __slots__ = ("_heads", "channels", "listed", "unknown")

    def __init__(self, channels: Sequence[str], unknown: Sequence[str] = ()) -> None:
        self.channels = tuple(channels)
        self.unknown = list(unknown)
        self.listed = orjson.dumps(list(self.channels))
        self._heads: dict[tuple[str, ...], tuple[bytes, bytes]] = {}

    @property
    def name(self) -> str:
        return "sse"

    def message(self, payload: bytes) -> bytes:
        if b'"channel":"tweets"' not in payload:
            return message_event(payload)  # $stats: as any stream's
        fields = orjson.loads(payload)
        if fields.get("channel") == ALL_CHANNEL:
            del fields["channel"]
            fields["channels"] = list(self.channels)
            if self.unknown and fields.get("type") == "subscribed":
                fields["unknown"] = self.unknown
            return message_event(orjson.dumps(fields), fields)
        return message_event(payload, fields)

    def _parts(self, on: tuple[str, ...]) -> tuple[bytes, bytes]:
        """What comes before a tweet's seq and after its body, for the channels it is on."""
        parts = self._heads.get(on)
        if parts is None:
            listed = on or self.channels[:1]
            before = b'{"type":"tweet","channel":' + orjson.dumps(listed[0]) + b',"seq":'
            after = b',"channels":' + orjson.dumps(list(listed)) + b"}\n\n"
            if len(self._heads) < 64:  # a stream names at most a few dozen channels
                self._heads[on] = (before, after)
            parts = (before, after)
        return parts

    def _frame(self, epoch: bytes, seq: int, body: bytes, on: tuple[str, ...]) -> list[bytes]:
        before, after = self._parts(on)
        digits = b"%d" % seq
        return [b"id: ", epoch, b":", digits, _TWEET, before, digits, b',"tweet":', body, after]

    def tweets(
        self,
        channel: str,
        epoch: str,
        tweets: Sequence[StoredTweet],
        payloads: Sequence[bytes],
    ) -> list[bytes]:
        mine, encoded = self.channels, epoch.encode()
        return [
            b"".join(self._frame(encoded, t.seq, t.body, tuple(c for c in mine if c in t.channels)))
            for t in tweets
        ]

    def page(self, channel: str, epoch: str, rows: Iterable[tuple[int, bytes]]) -> bytes:
        # A page row is (seq, body); the channels come from the body's own rules, the
        # very keys the store indexed it under (built in the store's reader, off the loop).
        mine, encoded = self.channels, epoch.encode()
        parts: list[bytes] = []
        for seq, body in rows:
            on = rule_channels(body)
            parts.extend(self._frame(encoded, seq, body, tuple(c for c in mine if c in on)))
        return b"".join(parts)


def rule_channels(body: bytes) -> frozenset[str]:
    """The channels of a stored tweet, read from its served object's ``rules``."""
    try:
        rules = orjson.loads(body).get("rules")
    except (orjson.JSONDecodeError, AttributeError):
        rules = None
    keys = [RULE_PREFIX + key for key in rules if isinstance(key, str)] if rules else []
    return frozenset((ALL_CHANNEL, *keys))


class EventStream:
    """One client's event stream: the :class:`~relay.stream.transport.Transport` of a
    session over a connection whose answer streams (:meth:`StreamConnection.respond`)."""

    __slots__ = ("closed_with", "conn", "framing", "reason")

    def __init__(self, conn: StreamConnection, framing: Framing = SSE) -> None:
        self.conn = conn
        self.framing = framing
        self.closed_with: int | None = None
        """The code the stream was closed with (None: not closed by the relay)."""
        self.reason = ""
        """Why the relay closed it (the close event's ``reason``)."""

    def write(self, data: bytes) -> bool:
        conn = self.conn
        if self.closed_with is not None or conn.lost:
            return False
        conn.transport.write(data)
        return True

    def backlog(self) -> int:
        return 0 if self.conn.lost else self.conn.backlog()

    def pushing_back(self) -> bool:
        return self.conn.pushing_back()

    async def drain(self) -> None:
        await self.conn.drain()

    def close(self, code: int, reason: str) -> None:
        """A last ``close`` event saying why, then the end of the response (the client has
        the close timeout to take it); :data:`CLOSE_ABNORMAL` cuts the connection."""
        conn = self.conn
        if self.closed_with is not None or conn.lost:
            return
        self.closed_with = code
        fields = close_fields(code, reason)
        self.reason = str(fields.get("reason", ""))
        if code == CLOSE_ABNORMAL:
            conn.close(CLOSE_ABNORMAL)
            return
        conn.transport.write(event(b"close", orjson.dumps(fields)))
        conn.end_response()

    async def wait_closed(self) -> None:
        await self.conn.wait_closed()
