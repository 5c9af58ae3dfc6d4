"""Server-sent events over plain HTTP/1.1 for the terminal client: no SSE library.

:class:`EventParser` is pure (bytes in, events out) and follows the event-stream rules
of the HTML standard: a line ends with CRLF, LF or CR; a blank line dispatches the event
gathered so far; ``data`` lines join with a line feed; ``id`` sets the last event id (one
holding NUL is ignored); ``retry`` takes digits only; a line that starts with ``:`` is a
comment (a keep-alive); a line without ``:`` is a field with an empty value; one space
after the ``:`` is dropped. An event with no data is not dispatched.

:class:`EventStream` opens one ``GET`` on asyncio streams (TLS for https), reads the
answer's head, and then its body, chunked or not, through the parser. A status other
than 200, or a 200 that is not ``text/event-stream``, is :class:`Refused` with the
message of the JSON error body when there is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

import orjson

MAX_HEAD = 64 * 1024
"""The most an answer's status line and headers may take."""
MAX_ERROR_BODY = 64 * 1024
"""The most of a refusal's body read for its message."""
MAX_EVENT = 16 * 1024 * 1024
"""The most one event may gather before the stream is given up as broken."""
READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """One dispatched event: its type (``message`` when it names none), its data (the
    ``data`` lines joined), and the last event id when it was dispatched."""

    type: str
    data: str
    id: str


class Refused(Exception):
    """The server answered something other than an event stream: ``status`` and the
    message of its body (``{"errors": [{"message": ..., "reason": ...}]}``), ``reason``
    the body's reason word when it gave one."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status
        self.message = message
        self.reason = reason


class BrokenStream(Exception):
    """The answer could not be read as HTTP (a cut head, a bad chunk, an event too big)."""


class EventParser:
    """Feed it bytes as they come; it returns the events they complete."""

    def __init__(self) -> None:
        self.last_id = ""
        self.retry: int | None = None
        """The server's reconnect hint, in milliseconds, once it sent one."""
        self._pending = bytearray()  # a line not ended yet
        self._cr = False  # the last chunk ended with CR: a LF first in the next is its pair
        self._type = ""
        self._data: list[str] = []
        self._size = 0

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        if b"\n" not in chunk and b"\r" not in chunk:
            self._pending += chunk
            if len(self._pending) > MAX_EVENT:
                raise BrokenStream("an event line too long to be one")
            return []
        text = bytes(self._pending) + chunk
        lines = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._pending = bytearray(lines.pop())
        events = []
        for line in lines:
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the keep-alive
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._size += len(value)
            if self._size > MAX_EVENT:
                raise BrokenStream("an event too big to be one")
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None  # a field this parser does not know is ignored, as the standard says

    def _dispatch(self) -> ServerEvent | None:
        data, kind = self._data, self._type
        self._data, self._type, self._size = [], "", 0
        if not data:
            return None
        return ServerEvent(kind or "message", "\n".join(data), self.last_id)


@dataclass(frozen=True, slots=True)
class _Head:
    status: int
    headers: dict[str, str]


class EventStream:
    """``async with EventStream(url, headers) as stream: async for event in stream``.

    Opening sends the request and reads the answer's head (within ``open_timeout``
    seconds); a refusal raises :class:`Refused` there. Iterating yields the events until
    the server ends the answer. ``retry`` is the server's reconnect hint (ms), once sent.
    """

    def __init__(
        self, url: str, headers: dict[str, str] | None = None, open_timeout: float = 10.0
    ) -> None:
        self.url = url
        self.headers = headers or {}
        self.open_timeout = open_timeout
        self.parser = EventParser()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._chunked = False

    @property
    def retry(self) -> int | None:
        return self.parser.retry

    async def __aenter__(self) -> EventStream:
        try:
            await asyncio.wait_for(self._open(), self.open_timeout)
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError, ssl.SSLError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _open(self) -> None:
        parts = urlsplit(self.url)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        context = ssl.create_default_context() if secure else None
        self._reader, self._writer = await asyncio.open_connection(
            host, port, ssl=context, limit=MAX_HEAD
        )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = parts.netloc.rpartition("@")[2]
        fields = {
            "Host": authority,
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
            **self.headers,
        }
        request = f"GET {target} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in fields.items()
        )
        self._writer.write(request.encode("latin-1") + b"\r\n")
        await self._writer.drain()
        head = await self._read_head()
        self._chunked = "chunked" in head.headers.get("transfer-encoding", "").lower()
        if head.status != 200:
            raise self._refusal(head.status, await self._error_body(head))
        kind = head.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "text/event-stream":
            raise Refused(200, f"the answer is {kind or 'untyped'}, not an event stream")

    async def _read_head(self) -> _Head:
        assert self._reader is not None
        try:
            raw = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            raise BrokenStream("the server closed the connection before answering") from None
        except asyncio.LimitOverrunError:
            raise BrokenStream("the answer's head is too long") from None
        lines = raw.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
            raise BrokenStream(f"not an HTTP answer: {lines[0][:60]!r}")
        try:
            status = int(status_line[1])
        except ValueError:
            raise BrokenStream(f"not an HTTP status: {lines[0][:60]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        return _Head(status, headers)

    async def _error_body(self, head: _Head) -> bytes:
        body = b""
        try:
            if self._chunked:
                async for chunk in self._chunks():
                    body += chunk
                    if len(body) >= MAX_ERROR_BODY:
                        break
            elif "content-length" in head.headers:
                assert self._reader is not None
                size = min(int(head.headers["content-length"]), MAX_ERROR_BODY)
                body = await asyncio.wait_for(self._reader.readexactly(size), self.open_timeout)
        except (ValueError, OSError, BrokenStream, asyncio.IncompleteReadError, TimeoutError):
            pass  # the status says enough
        return body[:MAX_ERROR_BODY]

    @staticmethod
    def _refusal(status: int, body: bytes) -> Refused:
        try:
            document = orjson.loads(body)
            error = document["errors"][0]
            return Refused(status, str(error.get("message", "")), str(error.get("reason", "")))
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            text = body.decode("utf-8", errors="replace").strip()
            return Refused(status, " ".join(text.split())[:200])

    def __aiter__(self) -> AsyncIterator[ServerEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[ServerEvent]:
        body = self._chunks() if self._chunked else self._until_closed()
        async for chunk in body:
            for event in self.parser.feed(chunk):
                yield event

    async def _until_closed(self) -> AsyncIterator[bytes]:
        assert self._reader is not None
        while chunk := await self._reader.read(READ_SIZE):
            yield chunk

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The body of a chunked answer, as it comes (RFC 9112 7.1); trailers skipped."""
        assert self._reader is not None
        reader = self._reader
        try:
            while True:
                size_line = await reader.readuntil(b"\r\n")
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise BrokenStream(f"a bad chunk size: {size_line[:40]!r}") from None
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return
                left = size
                while left:
                    chunk = await reader.read(min(left, READ_SIZE))
                    if not chunk:
                        raise BrokenStream("the answer ended inside a chunk")
                    left -= len(chunk)
                    yield chunk
                if await reader.readexactly(2) != b"\r\n":
                    raise BrokenStream("a chunk without its line end")
        except asyncio.IncompleteReadError:
            raise BrokenStream("the answer ended inside a chunk") from None
        except asyncio.LimitOverrunError:
            raise BrokenStream("a chunk line too long") from None
