"""A small blocking client of the relay's server-sent events (``GET /v1/events``), for tests:
the sibling of :class:`~relay.testing.RelayClient` with the same shape (``frames``,
``subscribed``, ``resets``, ``last_seq``, ``tweets()``, ``until_seq()``), and a resume
(:meth:`SseClient.resume`) that reconnects with ``Last-Event-ID`` as a browser's
``EventSource`` does.

It speaks plain HTTP with :mod:`http.client` and parses the event stream itself (no SSE
library), as the HTML standard reads it: ``field: value`` lines, ``data`` lines joined, an
event at each blank line, comments (``:``) counted and skipped. A thread reads the
response, so every wait has a timeout that leaves the stream usable.
"""

from __future__ import annotations

import contextlib
import http.client
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from relay.testing.errors import RelayClientError
from relay.testing.source import UNIT
from relay.testing.waiting import Frame, TweetWaits


@dataclass(slots=True)
class Event:
    """One server-sent event as the stream gave it."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    """Its ``id:`` field (None: it had none)."""
    retry: int | None = None

    def json(self) -> Frame:
        decoded: Frame = orjson.loads(self.data)
        return decoded


@dataclass(slots=True)
class _Parser:
    """The event stream format, line by line (whatwg HTML, "Server-sent events")."""

    event: Event = field(default_factory=Event)
    data: list[str] = field(default_factory=list)
    comments: int = 0
    retry: int | None = None

    def line(self, line: str) -> Event | None:
        if not line:
            event, data = self.event, self.data
            self.event, self.data = Event(), []
            if not data:
                return None  # a block without data dispatches nothing (a lone retry:)
            event.data = "\n".join(data)
            return event
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event.event = value
        elif name == "id" and "\0" not in value:
            self.event.id = value
        elif name == "retry" and value.isdigit():
            self.retry = self.event.retry = int(value)
        return None


class SseClient(TweetWaits):
    """One event stream of ``events_url`` (``RelayServer.events_url``): ``channels`` (as
    ``?channel=``), ``filters`` as query parameters, ``since`` as ``?since=<epoch>:<seq>``
    (a tuple or that text), ``last_event_id`` as the ``Last-Event-ID`` header, ``token``
    as ``Authorization: Bearer`` (``token_in_query``: as ``?token=``, as EventSource)."""

    def __init__(
        self,
        events_url: str,
        channels: str | Sequence[str] = "tweets",
        *,
        token: str | None = None,
        token_in_query: bool = False,
        since: tuple[str, int] | str | None = None,
        last_event_id: str | None = None,
        filters: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float = 4 * UNIT,
    ) -> None:
        self.events_url = events_url
        self.channels = (channels,) if isinstance(channels, str) else tuple(channels)
        self.token = token
        self.token_in_query = token_in_query
        self.filters = dict(filters or {})
        self.params = dict(params or {})
        self.timeout = timeout
        query: list[tuple[str, str]] = [("channel", channel) for channel in self.channels]
        for key, value in self.filters.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            query += [(key, _text(item)) for item in values]
        if since is not None:
            query.append(("since", since if isinstance(since, str) else f"{since[0]}:{since[1]}"))
        if token is not None and token_in_query:
            query.append(("token", token))
        query += list(self.params.items())
        parts = urlsplit(events_url)
        headers = {"Accept": "text/event-stream"}
        if token is not None and not token_in_query:
            headers["Authorization"] = f"Bearer {token}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=timeout
        )
        self.connection.request("GET", f"{parts.path}?{urlencode(query)}", headers=headers)
        # The socket, before the response takes it over (the answer closes the connection).
        self._sock: socket.socket | None = self.connection.sock
        self.response = self.connection.getresponse()
        self.status = self.response.status
        """The answer's status: 200, or the refusal's (the client then raises)."""
        self.headers = {name.lower(): value for name, value in self.response.getheaders()}
        if self.status != 200:
            body = self.response.read()
            self.connection.close()
            raise RelayClientError(
                f"the event stream was refused: {self.status} {body[:300]!r}",
                frame=orjson.loads(body) if body else None,
                code=self.status,
            )
        self.events: list[Event] = []
        """Every event received, in order."""
        self.frames: list[Frame] = []
        """Every event's data, decoded, in order (the payloads a WebSocket gets as frames)."""
        self.subscribed: dict[str, Frame] = {}
        """The ``subscribed`` event of each channel (of each of the stream's channels)."""
        self.resets: list[Frame] = []
        self.last_seq: dict[str, int] = {}
        """The last tweet seq received on each channel."""
        self.last_event_id: str | None = last_event_id
        """The last ``id:`` received: what a reconnect sends as ``Last-Event-ID``."""
        self.history_starts: dict[str, int] = {}
        self.deleted: list[Frame] = []
        self.closed: Frame | None = None
        """The stream's last event (``close``: reason, seq, code), once it came."""
        self._parser = _Parser()
        self._queue: queue.Queue[Event | BaseException | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="sse-client", daemon=True)
        self._reader.start()

    # -- what came

    @property
    def retry(self) -> int | None:
        """The ``retry:`` hint in milliseconds."""
        return self._parser.retry

    @property
    def comments(self) -> int:
        """Comment lines received (``: keep-alive``)."""
        return self._parser.comments

    def next_event(self, timeout: float | None = None, until: Any = None) -> Event:
        """The next event (or the next one ``until(event)`` accepts); an ``error`` event
        raises, and so does the end of the stream."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            event = self._receive(deadline)
            if until is None or until(event):
                return event

    def next_frame(self, timeout: float | None = None, until: Any = None) -> Frame:
        """The next event's data (or the next ``until(data)`` accepts)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            frame = self._receive(deadline).json()
            if until is None or until(frame):
                return frame

    def _default_channel(self) -> str:
        return self.channels[0]

    def wait_closed(self, timeout: float | None = None) -> Frame:
        """The stream's ``close`` event, once the relay ended the stream (events before it
        are kept)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while self.closed is None:
            try:
                self._receive(deadline)
            except RelayClientError:
                if self.closed is None:
                    raise
        return self.closed

    def resume(self, **changes: Any) -> SseClient:
        """A new stream of the same URL from where this one got to (``Last-Event-ID``: the
        last id received), as EventSource reconnects; this one is closed first."""
        self.close()
        args: dict[str, Any] = {
            "channels": self.channels,
            "token": self.token,
            "token_in_query": self.token_in_query,
            "last_event_id": self.last_event_id,
            "filters": self.filters,
            "params": self.params,
            "timeout": self.timeout,
            **changes,
        }
        return SseClient(self.events_url, **args)

    def close(self) -> None:
        """Hang up (the relay sees the client go)."""
        if self._sock is not None:
            # The reader thread is in a read: a shutdown ends it, then the files close.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._reader.join(self.timeout)
            self._sock = None
        self.response.close()
        self.connection.close()

    def __enter__(self) -> SseClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals

    def _read(self) -> None:
        try:
            for raw in _lines(self.response.readline):
                event = self._parser.line(raw)
                if event is not None:
                    self._queue.put(event)
        except Exception as exc:  # the connection closed under us (or we closed it)
            self._queue.put(exc)
        self._queue.put(None)

    def _next_tweet(self, deadline: float) -> Frame:
        while True:
            event = self._receive(deadline)
            if event.event == "tweet":
                return event.json()

    def _receive(self, deadline: float) -> Event:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise queue.Empty
            item = self._queue.get(timeout=remaining)
        except queue.Empty:
            raise RelayClientError(f"timed out after {len(self.events)} events") from None
        if item is None or isinstance(item, BaseException):
            self._queue.put(item)  # every later wait sees the end too
            why = f" ({self.closed})" if self.closed is not None else ""
            raise RelayClientError(f"the stream ended{why}", code=_code(self.closed))
        self._keep(item)
        return item

    def _keep(self, event: Event) -> None:
        self.events.append(event)
        if event.id is not None:
            self.last_event_id = event.id
        frame = event.json()
        self.frames.append(frame)
        kind = event.event
        names = frame.get("channels") or [frame.get("channel")]
        if kind == "tweet":
            for name in names:
                self.last_seq[name] = frame["seq"]
        elif kind == "subscribed":
            for name in names:
                self.subscribed[name] = frame
        elif kind == "reset":
            self.resets.append(frame)
            for name in names:
                self.last_seq.pop(name, None)
        elif kind == "history_start":
            for name in names:
                self.history_starts[name] = frame["seq"]
        elif kind == "deleted":
            self.deleted.append(frame)
        elif kind == "close":
            self.closed = frame
        elif kind == "error":
            raise RelayClientError(
                f"error event {frame.get('code')}: {frame.get('message')}", frame=frame
            )


def _lines(readline: Callable[[], bytes]) -> Iterable[str]:
    """The stream's lines without their ends (LF, CRLF or CR), until it ends."""
    pending = ""
    while line := readline():
        text = pending + line.decode()
        pending = ""
        pieces = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        *whole, pending = pieces
        yield from whole
    if pending:
        yield pending


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _code(closed: Frame | None) -> int | None:
    code = closed.get("code") if closed is not None else None
    return code if isinstance(code, int) else None
