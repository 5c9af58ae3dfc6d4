"""The client wire protocol, sans-I/O: client operations in, server payloads out.

Every function here takes text or bytes and returns values or bytes; none
touches a socket. A payload is the JSON object a client receives, whatever the
transport: each transport kind frames it (WebSocket: :mod:`relay.web.ws_frames`).
``docs/protocol.md`` is the reference for what is on the wire.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from relay.core.times import MAX_UNIX, usable_unix
from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX
from relay.errors import ProtocolError

PROTOCOL_VERSION = 1
OPS = ("subscribe", "unsubscribe", "ping", "refresh")
# A rule key is whatever tag an operator chose, within reason: printable, bounded.
_RULE_KEY = re.compile(r"[^\x00-\x1f\x7f]{1,128}")


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client is in a store: ``(epoch, seq)``."""

    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Rewind:
    """A moment to start from: every matching tweet received (``received_at``) at or after
    ``time`` (unix seconds), in seq order, then live. ``pace``: the rewound part goes out
    at ``pace`` times its recorded pace (> 1), then live once it has caught up."""

    time: float
    pace: float | None = None


Since = Position | Rewind
"""Where a subscription starts: after a position, or at a moment."""

MAX_PACE = 1_000_000.0
"""The fastest paced rewind asked for; past it, a plain rewind is the same."""
_RELATIVE = re.compile(r"-(\d{1,9})(s|m|h|d)", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def rewind_time(value: Any, now: float, field: str = "since.time") -> float:
    """A rewind's moment as unix seconds: an ISO 8601 time (``2026-12-07T06:00:00Z``; no
    zone means UTC) or a time back from ``now`` (``-30s``, ``-15m``, ``-1h``, ``-7d``).
    Raises :class:`ProtocolError` (``bad_request``) naming ``field``."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise ProtocolError(
            "bad_request", f"{field} must be an ISO 8601 time or a time back like -15m"
        )
    relative = _RELATIVE.fullmatch(value)
    if relative:
        return float(max(0.0, now - int(relative.group(1)) * _UNITS[relative.group(2)]))
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = usable_unix(moment.timestamp())
    except (ValueError, OverflowError):
        seconds = None
    if seconds is None:
        raise ProtocolError(
            "bad_request",
            f"{field} must be an ISO 8601 time or a time back like -15m, got {value[:40]!r}",
        )
    return min(seconds, MAX_UNIX)


def rewind_pace(value: Any, field: str = "since.pace") -> float | None:
    """A paced rewind's speed: a number > 1 (a pace of 1 or less would never catch up)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ProtocolError("bad_request", f"{field} must be a number above 1")
    if value <= 1:
        raise ProtocolError(
            "bad_request", f"{field} must be above 1: a rewind at that pace never catches up"
        )
    return min(float(value), MAX_PACE)


@dataclass(frozen=True, slots=True)
class Op:
    """One decoded client operation."""

    op: str
    channel: str | None = None
    since: Since | None = None
    ref: Any = None
    """The client's optional ``id``, echoed in the direct reply."""
    extra: dict[str, Any] | None = None
    """Further fields of the op (filters, tokens) for layers that read them."""


def decode(frame: str | bytes, now: float | None = None) -> Op:
    """Decode and validate one client frame; raise :class:`ProtocolError` if it is bad.
    ``now``: the unix time a relative rewind (``"-15m"``) counts back from."""
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError("bad_request", "frame is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError("bad_request", "frame must be a JSON object")
    ref = message.get("id")
    if (ref is not None and not isinstance(ref, (str, int))) or isinstance(ref, bool):
        raise ProtocolError("bad_request", "id must be a string or an integer")
    op = message.get("op")
    if not isinstance(op, str):
        raise ProtocolError("bad_request", "op must be a string", ref=ref)
    if op == "ping":
        return Op("ping", ref=ref)
    if op == "refresh":
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("bad_request", "refresh needs a token string", op, ref)
        return Op("refresh", ref=ref, extra={"token": token})
    if op not in OPS:
        raise ProtocolError("unknown_op", f"unknown op {op[:40]!r}", op=op[:40], ref=ref)
    channel = channel_name(message.get("channel"), op, ref)
    since = None
    if op == "subscribe" and message.get("since") is not None:
        since = _since(message["since"], ref, time.time() if now is None else now)
    extra = None
    if op == "subscribe" and message.get("filters") is not None:
        extra = {"filters": message["filters"]}
    return Op(op, channel=channel, since=since, ref=ref, extra=extra)


STATS_CHANNEL = "$stats"
"""The process's stats every few seconds (public like /v1/info; no tweets, no resume)."""


def channel_name(value: Any, op: str | None = None, ref: Any = None) -> str:
    """Check a channel name: ``tweets``, ``rule:<key>`` or ``$stats``."""
    if not isinstance(value, str):
        raise ProtocolError("bad_request", "channel must be a string", op=op, ref=ref)
    if value in (ALL_CHANNEL, STATS_CHANNEL):
        return value
    if value.startswith(RULE_PREFIX) and _RULE_KEY.fullmatch(value[len(RULE_PREFIX) :]):
        return value
    raise ProtocolError(
        "unknown_channel",
        f"unknown channel {value[:64]!r}: use 'tweets', 'rule:<tag>' or '$stats'",
        op=op,
        ref=ref,
        channel=value[:64],
    )


def _since(value: Any, ref: Any, now: float) -> Since:
    if not isinstance(value, dict):
        raise ProtocolError(
            "bad_request", "since must be an object {epoch, seq} or {time}", "subscribe", ref
        )
    if "time" in value:
        try:
            return Rewind(rewind_time(value["time"], now), rewind_pace(value.get("pace")))
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, "subscribe", ref) from None
    epoch, seq = value.get("epoch"), value.get("seq")
    if not isinstance(epoch, str) or not epoch:
        raise ProtocolError("bad_request", "since.epoch must be a string", "subscribe", ref)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError(
            "bad_request", "since.seq must be a non-negative integer", "subscribe", ref
        )
    return Position(epoch, seq)


# -- server frames ------------------------------------------------------------


def _frame(fields: dict[str, Any], ref: Any = None) -> bytes:
    if ref is not None:
        fields["id"] = ref
    return orjson.dumps(fields)


def subscribed(
    channel: str,
    epoch: str,
    seq: int,
    recovered: int,
    ref: Any = None,
    filters: dict[str, Any] | None = None,
    *,
    capped: bool = False,
    known: bool = True,
) -> bytes:
    """``capped``: more than ``recovered`` tweets come from the store (the count stops).
    ``known`` False: a rule channel no tweet has matched yet, while the relay's rule set
    is still open (``"known": false``; absent when the channel is known)."""
    fields: dict[str, Any] = {
        "type": "subscribed",
        "channel": channel,
        "epoch": epoch,
        "seq": seq,
        "recovered": recovered,
    }
    if capped:
        fields["recovered_capped"] = True
    if not known:
        fields["known"] = False
    if filters:
        fields["filters"] = filters
    return _frame(fields, ref)


def unsubscribed(channel: str, ref: Any = None) -> bytes:
    return _frame({"type": "unsubscribed", "channel": channel}, ref)


def reset(channel: str, epoch: str, seq: int) -> bytes:
    return _frame({"type": "reset", "channel": channel, "epoch": epoch, "seq": seq})


def history_start(channel: str, epoch: str, seq: int) -> bytes:
    """Kept history starts at ``seq``: retention deleted the older tweets a resume asked for."""
    return _frame({"type": "history_start", "channel": channel, "epoch": epoch, "seq": seq})


def stats(sample: dict[str, Any]) -> bytes:
    return _frame({**sample, "type": "stats", "channel": STATS_CHANNEL})


def deleted(channel: str, tweet_id: str, seq: int) -> bytes:
    """The tweet ``tweet_id`` (``seq``) was deleted: a client drops its copy."""
    return _frame({"type": "deleted", "channel": channel, "id": tweet_id, "seq": seq})


def refresh_required(expires_at: float, deadline: float) -> bytes:
    """The token expires at ``expires_at``; send ``refresh`` before ``deadline``."""
    return _frame(
        {"type": "refresh_required", "expires_at": int(expires_at), "deadline": int(deadline)}
    )


def refreshed(expires_at: float, ref: Any = None) -> bytes:
    return _frame({"type": "refreshed", "expires_at": int(expires_at)}, ref)


def pong(ref: Any = None) -> bytes:
    return _frame({"type": "pong"}, ref)


def error(
    code: str, message: str, op: str | None = None, ref: Any = None, channel: str | None = None
) -> bytes:
    """``channel``: the channel the refused op named, so a client knows which one failed
    without tracking ids (an added field: older clients ignore it)."""
    fields: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if op is not None:
        fields["op"] = op
    if channel is not None:
        fields["channel"] = channel
    return _frame(fields, ref)


def tweet(channel: str, seq: int, body: bytes) -> bytes:
    """A ``tweet`` payload around an already encoded object (encoded once per tweet, its
    payload once per channel; each transport kind frames it)."""
    return b"".join(
        (
            b'{"type":"tweet","channel":',
            orjson.dumps(channel),
            b',"seq":',
            str(seq).encode(),
            b',"tweet":',
            body,
            b"}",
        )
    )


CLOSE_REASON_BYTES = 123
"""The most a close frame's reason may hold (RFC 6455 5.5: 125 bytes of payload, 2 of code)."""

# Why a connection was closed with 4001: a word a client can act on.
TOKEN_EXPIRED = "expired"  # no refresh came by the deadline: get a fresh token
TOKEN_REVOKED = "revoked"  # on the revocation list: this token will never work again
TOKEN_INVALID = "invalid"  # no longer verifiable (signed with a retired secret)


def close_reason(reason: str, seq: int, message: str = "") -> str:
    """The close reason: compact JSON with a reason word, the last seq sent and, when
    given, a message for people; the message is cut so that the whole stays within
    :data:`CLOSE_REASON_BYTES`."""
    fields: dict[str, Any] = {"reason": reason[:40], "seq": seq}
    if message:
        fields["message"] = message
    text = orjson.dumps(fields).decode()
    while (excess := len(text.encode()) - CLOSE_REASON_BYTES) > 0 and fields.get("message"):
        # Cut the excess in bytes (a character cut in half goes); escapes may need another turn.
        fields["message"] = fields["message"].encode()[:-excess].decode(errors="ignore")
        text = orjson.dumps(fields).decode()
    return text
