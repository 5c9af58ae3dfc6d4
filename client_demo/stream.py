"""A subscription that survives disconnects: reconnect with backoff and jitter, resume by seq.

The client remembers, per channel, the store epoch and the last seq it received. After
any disconnect (a relay restart, a slow-consumer close, a network error) it reconnects
and subscribes with ``since`` set to that position, so the relay sends exactly what was
missed. A ``reset`` (the store changed) drops the position and goes on live.

Until the first connection succeeds nothing says the address is right: a wrong URL, a
DNS typo or a relay that is not there gives up after :data:`FIRST_TRIES` tries with one
:class:`DemoError`. Once connected, every later disconnection is retried forever. What
no retry can fix ends at once: a refused token, an unknown or forbidden channel, a
scheme that is not http(s) or ws(s). Frame types and fields the client does not know
are ignored (the protocol grows by adding them).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shlex
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

FIRST_TRIES = 4
"""Tries of the very first connection before giving up (about 2 s of backoff)."""

# Close codes after which reconnecting cannot help without a change by the person.
TERMINAL_CLOSES = {
    1008: "refused by policy (too many connections)",
    4001: "the token is no longer accepted",
    4003: "forbidden",
}
# What a 4001 means, by the word in its JSON reason (docs/protocol.md, close codes).
UNAUTHORIZED_CLOSES = {
    "expired": "the token expired and was not refreshed (give --token-command to refresh it)",
    "revoked": "the token was revoked: ask for a new one",
    "invalid": "the token is no longer valid",
}
SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
NO_TOKEN = "the relay needs a token: give --token or set RELAY_DEMO_TOKEN"


class DemoError(Exception):
    """Something the person must fix (a bad URL, a missing or refused token); ``code``
    is the exit status: 1 for the relay or the token, 2 for a channel."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Retry(Exception):
    """A failure that another try may fix; its text says what happened."""


@dataclass
class Position:
    epoch: str | None = None
    seq: int | None = None


@dataclass(frozen=True)
class Event:
    """What the stream reports: ``tweet``, ``status``, ``reset``, ``deleted`` (the tweet's
    id in ``message``) or ``error``."""

    kind: str
    channel: str = ""
    seq: int = 0
    tweet: dict[str, Any] = field(default_factory=dict)
    message: str = ""


def http_base(url: str) -> str:
    """The relay's http(s) base URL from any URL of it (http, ws, with or without a path);
    :class:`DemoError` for another scheme or no host."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    scheme = SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise DemoError(f"cannot use {url[:100]!r}: give an http(s):// or ws(s):// URL")
    if not parts.hostname:
        raise DemoError(f"cannot use {url[:100]!r}: it names no host")
    return urlunsplit((scheme, parts.netloc, "", "", ""))


def refused(token: str | None, status: int | str) -> DemoError:
    """The message for a 401/403: no token given, or the token refused."""
    if not token:
        return DemoError(NO_TOKEN)
    return DemoError(f"the relay refused the token ({status})")


def unauthorized(reason: str) -> str:
    """What a 4001 close says, from its reason: JSON naming why (``expired``, ``revoked``,
    ``invalid``) with a message; a reason this client cannot read is shown as it came."""
    try:
        fields = orjson.loads(reason)
    except orjson.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict):
        return f"{TERMINAL_CLOSES[4001]} ({one_line(reason) or 'no reason given'})"
    why = str(fields.get("reason", ""))
    message = one_line(str(fields.get("message") or ""))
    said = UNAUTHORIZED_CLOSES.get(why)
    if said is None:  # a reason added after this client: the relay's words, as they are
        return f"{TERMINAL_CLOSES[4001]} ({message or one_line(why) or 'no reason given'})"
    if why == "invalid" and message:
        return f"{said}: {message}"
    return said


def one_line(text: str) -> str:
    """``text`` cut to 200 characters, on one line, without control characters."""
    return " ".join("".join(c if c.isprintable() else " " for c in text[:200]).split())


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
            raise refused(token, f"HTTP {exc.code}") from None
        raise _Retry(f"the relay at {base} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Retry(f"cannot reach the relay at {base}: {reason}") from None
    except orjson.JSONDecodeError:
        raise _Retry(f"{base} answered /v1/info with something other than JSON") from None


def run_token_command(command: str, timeout: float = 30.0) -> str:
    """A new token from ``--token-command`` (its first line of output)."""
    try:
        done = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=timeout, check=True
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        raise DemoError(f"--token-command failed: {exc}") from None
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise DemoError("--token-command printed no token")
    return lines[0].strip()


class ResumingStream:
    """Yields :class:`Event` s for some channels, reconnecting and resuming forever."""

    def __init__(
        self,
        url: str,
        channels: list[str],
        *,
        token: str | None = None,
        token_command: str | None = None,
        since: int | None = None,
        rng: random.Random | None = None,
        max_delay: float = 10.0,
        first_tries: int = FIRST_TRIES,
        info: Callable[[str, str | None], dict[str, Any]] = fetch_info,
    ) -> None:
        self.base = http_base(url)
        self.channels = channels
        self.token = token
        self.token_command = token_command
        self.rng = rng or random.Random()
        self.max_delay = max_delay
        self.first_tries = first_tries
        self._info = info
        self.positions = {c: Position(seq=since) for c in channels}
        self._first_since = since is not None
        self.connected_once = False

    def backoff(self, attempt: int) -> float:
        """Exponential from 0.25 s, capped, with full jitter so clients do not stampede."""
        return self.rng.uniform(0, min(self.max_delay, 0.25 * 2**attempt))

    async def events(self) -> AsyncGenerator[Event, None]:
        attempt = 0
        while True:
            try:
                # Closed with this generator: a reader that stops (a closed pipe, Ctrl-C)
                # closes the connection at once, not when the garbage is collected.
                async with contextlib.aclosing(self._session()) as session:
                    async for event in session:
                        attempt = 0
                        yield event
                reason = "the relay closed the stream"
            except _Retry as exc:
                reason = str(exc)
            delay = self.backoff(attempt)
            attempt += 1
            if not self.connected_once:
                # Quiet until it is known whether the address is right at all.
                if attempt >= self.first_tries:
                    raise DemoError(f"{reason} (gave up after {attempt} tries)")
            else:
                yield Event("status", message=f"disconnected ({reason})")
                yield Event("status", message=f"reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)

    async def _session(self) -> AsyncGenerator[Event, None]:
        """One connection: its events; :class:`_Retry` when it fails in a way another try
        may fix, :class:`DemoError` when it cannot."""
        info = await asyncio.to_thread(self._info, self.base, self.token)
        if self._first_since:  # --since SEQ means "of the current epoch"
            for position in self.positions.values():
                position.epoch = info["epoch"]
            self._first_since = False
        url = str(info.get("stream_url") or "")
        if self.token:
            url += "?" + urlencode({"token": self.token})
        try:
            async with connect(url, open_timeout=10, max_size=None) as ws:
                self.connected_once = True
                try:
                    yield Event("status", message="connected")
                    for channel in self.channels:
                        await ws.send(orjson.dumps(self._subscribe(channel)).decode())
                    async for message in ws:
                        frame = orjson.loads(message)
                        if not isinstance(frame, dict):
                            continue
                        if frame.get("type") == "refresh_required":
                            yield await self._refresh(ws, frame)
                            continue
                        event = self._read(frame)
                        if event is not None:
                            yield event
                except (DemoError, GeneratorExit):
                    # Giving up, or the reader is done (a closed pipe): a normal close
                    # (1000), not the 1011 the library sends when its block raises.
                    await ws.close()
                    raise
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise refused(self.token, f"HTTP {status}") from None
            raise _Retry(f"HTTP {status}") from None
        except InvalidURI:
            raise DemoError(f"the relay gave an unusable stream URL: {url[:100]!r}") from None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            if code == 4001 and exc.rcvd is not None:
                why = unauthorized(exc.rcvd.reason)
                raise DemoError(f"the relay closed the stream: {why}") from None
            if code in TERMINAL_CLOSES:
                raise DemoError(f"the relay closed the stream: {TERMINAL_CLOSES[code]}") from None
            raise _Retry(f"close code {code or 'none'}") from None
        except (TimeoutError, OSError) as exc:
            raise _Retry(str(exc) or exc.__class__.__name__) from None

    async def _refresh(self, ws: ClientConnection, frame: dict[str, Any]) -> Event:
        if self.token_command is None:
            return Event(
                "status",
                message="the token expires soon and no --token-command can refresh it",
            )
        self.token = await asyncio.to_thread(run_token_command, self.token_command)
        await ws.send(orjson.dumps({"op": "refresh", "token": self.token}).decode())
        return Event("status", message="refreshing the token")

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
            code, message = frame.get("code"), str(frame.get("message", ""))[:300]
            if frame.get("op") == "subscribe" or code in ("unknown_channel", "forbidden"):
                if code == "unauthorized":
                    raise refused(self.token, message)
                if code in ("unknown_channel", "forbidden"):
                    raise DemoError(f"{code}: {message}", code=2)
            return Event("error", channel, message=f"{code}: {message}")
        if kind == "deleted":  # the relay deleted a tweet: the view drops its copy
            return Event(
                "deleted", channel, int(frame.get("seq") or 0), message=str(frame.get("id"))
            )
        if kind == "refreshed":
            return Event("status", channel, message="token refreshed")
        return None  # a frame type this client does not know: ignored
