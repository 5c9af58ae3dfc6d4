"""A subscription that survives disconnects: reconnect with backoff and jitter, resume by seq.

The client remembers, per channel, the store epoch and the last seq it received. After
any disconnect (a relay restart, a slow-consumer close, a network error) it reconnects
and subscribes with ``since`` set to that position, so the relay sends exactly what was
missed. A ``reset`` (the store changed) drops the position and goes on live.
"""

from __future__ import annotations

import asyncio
import random
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

# Close codes after which reconnecting cannot help without a change by the person.
TERMINAL_CLOSES = {1008: "refused by policy", 4001: "unauthorized", 4003: "forbidden"}


class DemoError(Exception):
    """Something the person must fix (a bad URL, a missing or refused token)."""


@dataclass
class Position:
    epoch: str | None = None
    seq: int | None = None


@dataclass(frozen=True)
class Event:
    """What the stream reports: ``tweet``, ``status``, ``reset`` or ``error``."""

    kind: str
    channel: str = ""
    seq: int = 0
    tweet: dict[str, Any] = field(default_factory=dict)
    message: str = ""


def http_base(url: str) -> str:
    """The relay's http(s) base URL from any URL of it (http, ws, with or without a path)."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def fetch_info(base: str, token: str | None, timeout: float = 5.0) -> dict[str, Any]:
    """``GET /v1/info``: where the stream lives, the epoch, the channels."""
    request = urllib.request.Request(base + "/v1/info")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            info: dict[str, Any] = orjson.loads(response.read())
            return info
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise DemoError(f"the relay refused the token (HTTP {exc.code})") from None
        raise DemoError(f"the relay at {base} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DemoError(f"cannot reach the relay at {base}: {reason}") from None


class ResumingStream:
    """Yields :class:`Event` s for some channels, reconnecting and resuming forever."""

    def __init__(
        self,
        url: str,
        channels: list[str],
        *,
        token: str | None = None,
        since: int | None = None,
        rng: random.Random | None = None,
        max_delay: float = 10.0,
        info: Callable[[str, str | None], dict[str, Any]] = fetch_info,
    ) -> None:
        self.base = http_base(url)
        self.channels = channels
        self.token = token
        self.rng = rng or random.Random()
        self.max_delay = max_delay
        self._info = info
        self.positions = {c: Position(seq=since) for c in channels}
        self._first_since = since is not None

    def backoff(self, attempt: int) -> float:
        """Exponential from 0.25 s, capped, with full jitter so clients do not stampede."""
        return self.rng.uniform(0, min(self.max_delay, 0.25 * 2**attempt))

    async def events(self) -> AsyncIterator[Event]:
        attempt = 0
        while True:
            try:
                info = await asyncio.to_thread(self._info, self.base, self.token)
                if self._first_since:  # --since SEQ means "of the current epoch"
                    for position in self.positions.values():
                        position.epoch = info["epoch"]
                    self._first_since = False
                url = info["stream_url"]
                if self.token:
                    url += "?" + urlencode({"token": self.token})
                async with connect(url, open_timeout=10, max_size=None) as ws:
                    yield Event("status", message="connected")
                    for channel in self.channels:
                        await ws.send(orjson.dumps(self._subscribe(channel)).decode())
                    attempt = 0
                    async for message in ws:
                        event = self._read(orjson.loads(message))
                        if event is not None:
                            yield event
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    raise DemoError(f"the relay refused the token (HTTP {status})") from None
                yield Event("status", message=f"disconnected (HTTP {status})")
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                if code in TERMINAL_CLOSES:
                    raise DemoError(
                        f"the relay closed the stream: {TERMINAL_CLOSES[code]}"
                    ) from None
                yield Event("status", message=f"disconnected ({code or 'no close frame'})")
            except DemoError as exc:
                yield Event("status", message=f"disconnected ({exc})")
            except (TimeoutError, OSError) as exc:
                yield Event("status", message=f"disconnected ({exc.__class__.__name__})")
            delay = self.backoff(attempt)
            attempt += 1
            yield Event("status", message=f"reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)

    def _subscribe(self, channel: str) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "subscribe", "channel": channel}
        position = self.positions[channel]
        if position.epoch is not None and position.seq is not None:
            op["since"] = {"epoch": position.epoch, "seq": position.seq}
        return op

    def _read(self, frame: dict[str, Any]) -> Event | None:
        kind = frame.get("type")
        channel = frame.get("channel", "")
        if kind == "tweet":
            position = self.positions.get(channel)
            if position is None:
                return None
            if position.seq is not None and frame["seq"] <= position.seq:
                return None  # never show a tweet twice, whatever happens
            position.seq = frame["seq"]
            return Event("tweet", channel, frame["seq"], frame["tweet"])
        if kind == "subscribed":
            position = self.positions[channel]
            if position.epoch is None or position.seq is None:
                position.epoch, position.seq = frame["epoch"], frame["seq"]
            return Event(
                "status",
                channel,
                frame["seq"],
                message=f"subscribed to {channel}, {frame['recovered']} to recover",
            )
        if kind == "reset":
            self.positions[channel] = Position(frame["epoch"], frame["seq"])
            return Event("reset", channel, frame["seq"], message="the relay's store changed")
        if kind == "history_start":
            # Retention deleted part of what we missed: say so; what we hold stays valid.
            return Event(
                "status",
                channel,
                frame["seq"],
                message=f"history now starts at seq {frame['seq']}: older tweets were deleted",
            )
        if kind == "error":
            return Event("error", channel, message=f"{frame['code']}: {frame['message']}")
        return None
