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

It reads the stream over WebSocket, or as server-sent events (``transport="sse"``:
``GET /v1/events``, plain HTTP, :mod:`client_demo.sse`): the same events either way. A
rewind (``since_time``) starts each channel at a moment instead of a seq; once a tweet
has come, the channel resumes by seq like any other.
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
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from client_demo.errors import (
    TERMINAL_CLOSES,
    DemoError,
    one_line,
    refused,
    unauthorized,
)
from client_demo.members import member_text
from client_demo.sse import BrokenStream, EventStream, Refused, ServerEvent

__all__ = ["DemoError", "Event", "Position", "ResumingStream", "member_text"]

FIRST_TRIES = 4
"""Tries of the very first connection before giving up (about 2 s of backoff)."""

FINAL_EVENT = "close"
"""The event a relay sends last before it ends a server-sent events stream: its data is
the WebSocket close reason (``reason``, ``seq``, ``message``) with the ``code``."""
SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


class _Retry(Exception):
    """A failure that another try may fix; its text says what happened."""


class _Reopen(Exception):
    """Open the stream again at once, from the position held (a new token over SSE,
    which cannot change the token of an open stream); its text says why."""


@dataclass
class Position:
    epoch: str | None = None
    seq: int | None = None
    asked: bool = False
    """``seq`` is the ``--since`` of the command line: no tweet has come since."""
    rewind: str | None = None
    """The ``--since-time`` still to rewind to (ISO 8601 or ``-15m``): no tweet of the
    channel has come yet, and the relay said it has some to send from then."""


@dataclass(frozen=True)
class Event:
    """What the stream reports: ``tweet``, ``status``, ``reset``, ``deleted`` (the tweet's
    id in ``message``) or ``error``."""

    kind: str
    channel: str = ""
    seq: int = 0
    tweet: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    frame: str = ""
    """The frame as the relay sent it (``tweet`` events): :func:`member_text` finds the
    tweet object's own text in it, byte for byte."""


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
        since_time: str | None = None,
        transport: str = "ws",
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
        self.positions = {
            c: Position(seq=since, asked=since is not None, rewind=since_time) for c in channels
        }
        self._first_since = since is not None
        self.transport = transport
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
            except _Reopen as exc:
                yield Event("status", message=str(exc))
                continue  # at once: nothing failed
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
        session = self._sse_session if self.transport == "sse" else self._ws_session
        async with contextlib.aclosing(session(info)) as events:
            async for event in events:
                yield event

    async def _ws_session(self, info: dict[str, Any]) -> AsyncGenerator[Event, None]:
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
                            if event.kind == "tweet":
                                text = message if isinstance(message, str) else message.decode()
                                event = replace(event, frame=text)
                            yield event
                except (DemoError, GeneratorExit, asyncio.CancelledError):
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

    async def _sse_session(self, info: dict[str, Any]) -> AsyncGenerator[Event, None]:
        url = str(info.get("events_url") or self.base + "/v1/events")
        url += "?" + urlencode(self._sse_query(), doseq=True)
        headers = {"User-Agent": "relay-demo"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            async with EventStream(url, headers) as stream:
                self.connected_once = True
                yield Event("status", message="connected (server-sent events)")
                async for message in stream:
                    for event in await self._read_sse(message):
                        yield event
        except Refused as exc:
            raise self._sse_refusal(exc) from None
        except (BrokenStream, TimeoutError, OSError) as exc:
            raise _Retry(str(exc) or exc.__class__.__name__) from None
        raise _Retry("the relay ended the stream")

    def _sse_query(self) -> dict[str, Any]:
        """The channels, and where the stream starts: after the earliest position held
        (a channel past it drops what it already has), else the rewind, else live."""
        query: dict[str, Any] = {"channel": self.channels}
        held = [p for c, p in self.positions.items() if p.seq is not None and p.epoch]
        if held:
            earliest = min(held, key=lambda p: p.seq or 0)
            query["since"] = f"{earliest.epoch}:{earliest.seq}"
        else:
            rewind = next((p.rewind for p in self.positions.values() if p.rewind), None)
            if rewind is not None:
                query["since_time"] = rewind
        return query

    async def _read_sse(self, message: ServerEvent) -> list[Event]:
        """The events of one server-sent event: a tweet on several channels followed is
        one event for each, as over WebSocket."""
        try:
            frame = orjson.loads(message.data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(frame, dict):
            return []
        frame.setdefault("type", message.type)
        if message.type == FINAL_EVENT:
            if frame.get("reason") == "expired" and self.token_command is not None:
                # No refresh comes over an event stream: a new one opens with a new token.
                self.token = await asyncio.to_thread(run_token_command, self.token_command)
                raise _Reopen("token refreshed: reopening the stream from where it was")
            raise self._sse_end(frame)
        channels = frame.get("channels")
        if not isinstance(channels, list):
            channels = [frame.get("channel")]
        events = []
        for channel in channels:
            if channel in self.positions or channel == frame.get("channel"):
                event = self._read({**frame, "channel": channel})
                if event is not None:
                    events.append(replace(event, frame=message.data))
        return events

    def _sse_refusal(self, refusal: Refused) -> Exception:
        """A refusal before the stream started: a token (exit 1), a channel or a value
        (exit 2), or something another try may fix (a relay starting, a rate limit)."""
        message = one_line(refusal.message) or f"HTTP {refusal.status}"
        if refusal.status == 401:
            return refused(self.token, f"HTTP 401: {message}") if self.token else refused(None, 401)
        if refusal.status in (400, 403, 404):
            return DemoError(f"{refusal.reason or refusal.status}: {message}", code=2)
        return _Retry(f"HTTP {refusal.status}: {message}")

    def _sse_end(self, frame: dict[str, Any]) -> Exception:
        """The relay's last event says why it ends the stream, with the close code a
        WebSocket would have had: read as that close (4001, 4003 and 1008 end the client;
        anything else is retried from the position held)."""
        code = frame.get("code")
        why = one_line(str(frame.get("reason", "")))
        if code == 4001:
            said = unauthorized(orjson.dumps(frame).decode())
            return DemoError(f"the relay closed the stream: {said}")
        if code in TERMINAL_CLOSES:
            return DemoError(f"the relay closed the stream: {TERMINAL_CLOSES[code]}")
        return _Retry(f"the relay ended the stream: {code} {why}".rstrip())

    async def _refresh(self, ws: ClientConnection, frame: dict[str, Any]) -> Event:
        if self.token_command is None:
            return Event(
                "status",
                message="the token expires soon and no --token-command can refresh it",
            )
        self.token = await asyncio.to_thread(run_token_command, self.token_command)
        await ws.send(orjson.dumps({"op": "refresh", "token": self.token}).decode())
        return Event("status", message="refreshing the token")

    def _reset_reason(self, held: Position, frame: dict[str, Any]) -> str:
        """Why the relay reset a channel: the same epoch means the position asked for is
        past its newest tweet (``--since`` too high, or a store put back from an older
        copy); another epoch, that the store was replaced."""
        head = frame["seq"]
        if held.epoch != frame["epoch"] or held.seq is None or held.seq <= head:
            return "the relay's store changed: showing new tweets from here"
        if held.asked:
            return (
                f"--since {held.seq} is past the relay's newest tweet (seq {head}): "
                "showing new tweets from here"
            )
        return (
            f"the relay's newest tweet (seq {head}) is older than the last one shown "
            f"(seq {held.seq}): its store was put back from an older copy; "
            "showing new tweets from here"
        )

    def _subscribe(self, channel: str) -> dict[str, Any]:
        op: dict[str, Any] = {"op": "subscribe", "channel": channel}
        position = self.positions[channel]
        if position.epoch is not None and position.seq is not None:
            op["since"] = {"epoch": position.epoch, "seq": position.seq}
        elif position.rewind is not None:
            op["since"] = {"time": position.rewind}
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
            position.asked = False
            position.rewind = None
            return Event("tweet", channel, frame["seq"], frame["tweet"])
        if kind == "subscribed":
            position = self.positions[channel]
            recovered = frame.get("recovered", 0)
            more = "+" if frame.get("recovered_capped") else ""
            message = f"subscribed to {channel}, {recovered}{more} to recover"
            if position.rewind is not None and position.seq is None:
                # The rewound tweets come next, older than this head: the position stays
                # the moment until the first of them (a reconnect rewinds again).
                position.epoch = frame["epoch"]
                message = (
                    f"subscribed to {channel} from {position.rewind}: {recovered}{more} "
                    "stored tweets received since then, then live"
                )
                if not recovered:
                    position.seq, position.rewind = frame["seq"], None
            elif position.epoch is None or position.seq is None:
                position.epoch, position.seq = frame["epoch"], frame["seq"]
            if frame.get("known") is False:
                # The relay's rules are still open and none of its tweets matched this one:
                # a typo looks the same, so say it instead of waiting in silence.
                message = (
                    f"subscribed to {channel}, but no tweet has matched that rule yet "
                    "(check the name: the relay lists its channels at /v1/info)"
                )
            return Event("status", channel, frame["seq"], message=message)
        if kind == "reset":
            held = self.positions.get(channel) or Position()
            self.positions[channel] = Position(frame["epoch"], frame["seq"])
            return Event("reset", channel, frame["seq"], message=self._reset_reason(held, frame))
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
                if code in ("unknown_channel", "forbidden", "bad_request"):
                    raise DemoError(f"{code}: {message}", code=2)
            return Event("error", channel, message=f"{code}: {message}")
        if kind == "deleted":  # the relay deleted a tweet: the view drops its copy
            return Event(
                "deleted", channel, int(frame.get("seq") or 0), message=str(frame.get("id"))
            )
        if kind == "refreshed":
            return Event("status", channel, message="token refreshed")
        return None  # a frame type this client does not know: ignored
