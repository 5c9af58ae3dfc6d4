"""What the Qt client does with each thing the relay says, without Qt: an event of the
stream (``GET /v1/events``, read by :class:`client_demo.sse.EventParser`), a refusal
before the stream starts, a network failure. Each becomes one :class:`Step` the window
carries out: show a tweet, drop the list, say a line, ask for a token, retry or stop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from client_demo.errors import NO_TOKEN, TERMINAL_CLOSES, UNAUTHORIZED_CLOSES, one_line
from client_demo.sse import ServerEvent

STATS = "$stats"
"""The relay's statistics channel: one sample every 5 s on the same stream."""
NEW_TOKEN = "enter a new token to go on from the last tweet shown"
MAX_DELAY = 10.0
"""The longest wait between two tries, however long the relay stays away."""


@dataclass(frozen=True)
class Step:
    """``kind`` is one of ``tweet``, ``subscribed``, ``reset``, ``deleted``, ``stats``,
    ``say`` (a line, nothing else changes), ``retry`` (open the stream again after a
    backoff, from the position held), ``token`` (stop until a token is given: ``message``
    says why) or ``stop`` (nothing another try can fix)."""

    kind: str
    message: str = ""
    frame: dict[str, Any] = field(default_factory=dict)


def read_event(event: ServerEvent, channel: str) -> Step | None:
    """One server-sent event of a stream following ``channel`` and ``$stats``."""
    try:
        frame = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(frame, dict):
        return None
    kind = str(frame.get("type") or event.type)
    if kind == "tweet":
        tweet = frame.get("tweet")
        return Step("tweet", frame=tweet) if isinstance(tweet, dict) else None
    if kind == "stats":
        return Step("stats", frame=frame)
    if kind in ("subscribed", "reset") and not _position(frame):
        return None  # no position to go on from: not a frame of this protocol
    if kind == "subscribed":
        if frame.get("channel") == STATS:
            return None
        message = f"live on {channel}"
        if frame.get("known") is False:
            message = (
                f"live on {channel}, but no tweet has matched that rule yet "
                "(check the name: the relay lists its channels at /v1/info)"
            )
        return Step("subscribed", message, frame)
    if kind == "reset":
        return Step("reset", "the relay's store changed: showing new tweets from here", frame)
    if kind == "history_start":
        # Retention deleted part of what was missed: the rows held stay valid.
        return Step(
            "say", f"history now starts at seq {frame.get('seq')}: older tweets were deleted"
        )
    if kind == "deleted":
        return Step("deleted", str(frame.get("id", "")), frame)
    if kind == "refresh_required":
        return Step("token", f"the token expires soon: {NEW_TOKEN}")
    if kind == "error":
        return Step("say", f"{frame.get('code')}: {one_line(str(frame.get('message', '')))}")
    if kind == "close":
        return closed(frame)
    return None  # a type this client does not know: the protocol grows by adding them


def closed(frame: dict[str, Any]) -> Step:
    """The relay's last event, with the WebSocket close code of the same meaning."""
    code = frame.get("code")
    reason = str(frame.get("reason", ""))
    if code == 4001:
        said = UNAUTHORIZED_CLOSES.get(reason, TERMINAL_CLOSES[4001])
        if reason == "expired":
            said = "the token expired"
        return Step("token", f"{said.split(' (')[0]}: {NEW_TOKEN}")
    if code in TERMINAL_CLOSES:
        return Step("stop", f"the relay closed the stream: {TERMINAL_CLOSES[code]}")
    return Step(
        "retry", f"the relay ended the stream ({code} {one_line(reason)})".replace(" )", ")")
    )


def refusal(status: int, body: bytes, token: str) -> Step:
    """The relay answered the stream or a request with ``status`` instead of 200."""
    message, reason = _error_body(body)
    said = message or f"HTTP {status}"
    if status == 401:
        if not token:
            return Step("token", NO_TOKEN)
        return Step("token", f"the relay refused the token (HTTP 401: {said})")
    if status in (400, 403, 404):
        return Step("stop", f"{reason or status}: {said}")
    return Step("retry", f"the relay answered HTTP {status}: {said}")


def unreachable(base: str, error: str) -> Step:
    """The relay could not be reached at all (refused, no route, a name that does not
    resolve): one line naming it; tried again."""
    return Step("retry", f"cannot reach the relay at {base}: {one_line(error)}")


def _error_body(body: bytes) -> tuple[str, str]:
    try:
        error = orjson.loads(body)["errors"][0]
        return one_line(str(error.get("message", ""))), str(error.get("reason", ""))
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return one_line(body.decode("utf-8", errors="replace")), ""


def _position(frame: dict[str, Any]) -> bool:
    seq, epoch = frame.get("seq"), frame.get("epoch")
    return (
        isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 and isinstance(epoch, str)
    )


@dataclass(frozen=True)
class Info:
    """What the client takes from ``GET /v1/info``."""

    epoch: str
    head: int
    channels: list[str]
    events_url: str
    objects_url: str


def read_info(body: bytes, base: str) -> Info | None:
    """``/v1/info``'s answer, or None when it is not a relay's. Its URLs are taken only
    when they are http(s) (else the usual paths on ``base``)."""
    try:
        info = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(info, dict) or not _position(info):
        return None
    listed = info.get("channels")
    channels = [c for c in listed if isinstance(c, str)] if isinstance(listed, list) else []
    return Info(
        info["epoch"],
        info["seq"],
        channels,
        _http(info.get("events_url")) or base + "/v1/events",
        _http(info.get("objects_url")) or base + "/v1/objects/tweets",
    )


def read_listing(body: bytes) -> tuple[list[dict[str, Any]], int] | None:
    """The object API's ``{"results": [...], "count": n}``: the tweet objects and the
    count, or None when the answer is not that."""
    try:
        listing = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(listing, dict) or not isinstance(listing.get("results"), list):
        return None
    tweets = [t for t in listing["results"] if isinstance(t, dict)]
    count = listing.get("count")
    return tweets, count if isinstance(count, int) and not isinstance(count, bool) else len(tweets)


def _http(url: Any) -> str:
    return url if isinstance(url, str) and url.startswith(("http://", "https://")) else ""


def backoff(attempt: int, rng: random.Random) -> float:
    """Seconds before try ``attempt`` (0 first): doubling from 0.25 s up to
    :data:`MAX_DELAY`, with jitter so that clients do not all come back at once."""
    return rng.uniform(0.1, min(MAX_DELAY, 0.25 * 2 ** min(attempt, 16)))
