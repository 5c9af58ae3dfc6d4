"""The query of a server-sent events request (``GET /v1/events``), sans-I/O: parameters in,
a checked :class:`StreamQuery` out, or a :class:`~relay.errors.BadRequest` naming what is
wrong (answered 400 before the stream starts).

- ``channel``: repeated for several (``?channel=tweets&channel=$stats``); each is a name
  :func:`~relay.core.protocol.channel_name` accepts. A rule key may hold a comma, so a
  channel is never a comma list.
- ``lang``, ``author``: repeated or comma lists; ``has_media``: ``true``/``false`` (``1``/
  ``0``); ``keyword``: words that must all occur. The names and meanings of the WebSocket
  subscribe's ``filters`` (:mod:`relay.core.filters` checks the values).
- ``since``: ``<epoch>:<seq>``, an event id; the ``Last-Event-ID`` header wins over it and
  over ``since_time`` (an EventSource reconnecting sends it, and its URL still says where
  the stream first started).
- ``since_time`` (an ISO 8601 time or a time back, ``-15m``) and ``pace`` (> 1): a rewind
  (:class:`~relay.core.protocol.Rewind`).
- ``token``: read by access control, as on the WebSocket endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from relay.core.protocol import (
    STATS_CHANNEL,
    Position,
    Rewind,
    Since,
    channel_name,
    rewind_pace,
    rewind_time,
)
from relay.core.query import INT64_MAX
from relay.errors import BadRequest

PARAMETERS = (
    "channel",
    "lang",
    "author",
    "has_media",
    "keyword",
    "since",
    "since_time",
    "pace",
    "token",
)
SINGLE = ("has_media", "keyword", "since", "since_time", "pace", "token")
"""Parameters given at most once."""
LAST_EVENT_ID = "Last-Event-ID"
_EPOCH = re.compile(r"[\x21-\x7e]{1,64}")
_SEQ = re.compile(r"[0-9]{1,19}")
_FLAGS = {"true": True, "1": True, "false": False, "0": False}


@dataclass(frozen=True, slots=True)
class StreamQuery:
    """What one event stream asks for."""

    channels: tuple[str, ...]
    """The tweet channels (``tweets``, ``rule:<key>``), each once, in the order asked."""
    stats: bool = False
    """``$stats`` too."""
    since: Since | None = None
    filters: dict[str, Any] | None = None
    """The filters as a subscribe's ``filters`` object (None: none asked)."""


def parse_stream_query(
    params: Mapping[str, Sequence[str]], last_event_id: str | None, now: float
) -> StreamQuery:
    """Check an event stream's query parameters (and its ``Last-Event-ID`` header); ``now``
    is the unix time a relative ``since_time`` counts back from."""
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0][:40]!r}; known: {', '.join(PARAMETERS)}")
    for name in SINGLE:
        if len(params.get(name, ())) > 1:
            raise BadRequest(f"{name} is given more than once")
    channels: list[str] = []
    stats = False
    for value in params.get("channel", ()):
        name = channel_name(value)
        if name == STATS_CHANNEL:
            stats = True
        elif name not in channels:
            channels.append(name)
    if not channels and not stats:
        raise BadRequest("name a channel: ?channel=tweets, ?channel=rule:<tag> or ?channel=$stats")
    filters = _filters(params)
    if filters and not channels:
        raise BadRequest("filters bound tweet channels; $stats takes none")
    since = _since(params, last_event_id, now, has_tweets=bool(channels))
    return StreamQuery(tuple(channels), stats, since, filters or None)


def parse_position(text: str, field: str) -> Position:
    """An event id, ``<epoch>:<seq>``, as a position."""
    epoch, colon, seq = text.strip().rpartition(":")
    if not colon or not _EPOCH.fullmatch(epoch) or not _SEQ.fullmatch(seq):
        raise BadRequest(f"{field} must be an event id, <epoch>:<seq>, got {text[:80]!r}")
    number = int(seq)
    if number > INT64_MAX:
        raise BadRequest(f"{field}: the seq is past the largest a store holds")
    return Position(epoch, number)


def _filters(params: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    filters: dict[str, Any] = {}
    for key in ("lang", "author"):
        values = [piece.strip() for value in params.get(key, ()) for piece in value.split(",")]
        if values:
            filters[key] = values  # parse_filter refuses an empty name, and too many
    for value in params.get("has_media", ()):
        flag = _FLAGS.get(value.strip().lower())
        if flag is None:
            raise BadRequest("has_media must be true or false")
        filters["has_media"] = flag
    for value in params.get("keyword", ()):
        filters["keyword"] = value
    return filters


def _since(
    params: Mapping[str, Sequence[str]], last_event_id: str | None, now: float, *, has_tweets: bool
) -> Since | None:
    since = params.get("since", ())
    since_time = params.get("since_time", ())
    pace = params.get("pace", ())
    if since and since_time:
        raise BadRequest("since or since_time, not both")
    if pace and not since_time:
        raise BadRequest("pace needs since_time: it paces a rewind")
    # Every value is checked, even one a Last-Event-ID overrides: a bad URL is refused
    # on the first connection, not only on a later one.
    position = parse_position(since[0], "since") if since else None
    rewind = None
    if since_time:
        rewind = Rewind(
            rewind_time(since_time[0], now, "since_time"),
            rewind_pace(_number(pace[0], "pace") if pace else None, "pace"),
        )
    if (position or rewind) and not has_tweets:
        raise BadRequest("$stats has no history: since needs a tweet channel")
    if last_event_id and last_event_id.strip() and has_tweets:
        return parse_position(last_event_id, LAST_EVENT_ID)
    return position or rewind


def _number(text: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{field} must be a number above 1") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"{field} must be a number above 1")
    return value
