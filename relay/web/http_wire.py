"""How the shared port reads an HTTP request and writes its answer: one request per
connection, answered, then closed.

websockets (17.x) reads the opening request with ``Request.parse`` and then parses
whatever follows as WebSocket frames, even before it answers. For the plain GET routes
that loses requests: a request with a body (``Content-Length`` > 0, chunked) is dropped
without an answer, and a second pipelined request is taken for frames, which fails the
connection before the first is answered. :func:`parse_request` replaces the protocol's
parser: it reads the request line and headers as the library does, and then

- for a WebSocket upgrade, goes on with the library's frame parser;
- for anything else, reads nothing more: the request is answered (``server.py`` adds
  ``Connection: close``) and the connection closes, whatever bytes came after it.

:func:`install` puts it in a new ``ServerProtocol`` (``relay.web.connection`` does, for
every connection). An answer goes on the raw transport, its head as :func:`response_head`
writes it; :func:`answered` then drops what the client sends, and ends the answer (a
half-close) when it is complete, or once it has streamed to its end.

A request that is not HTTP/1.x as RFC 9112 writes it is answered at once, as servers of
record do, with ``Connection: close``: 505 for a well-formed version other than 1.x, 414
for a request line past 8 KiB, 431 for a header line past it or too many headers, and 400
for the rest (no version, as HTTP/0.9 sends; a line ending in LF alone; a header without
a colon or folded onto the next line; a method that is no token; a target with a space,
a control character or a byte past ASCII; an empty line for a request line; a request
cut short). A connection closed before its first byte gets nothing: there is no request
to answer. Each refusal is handed to the connection (a :class:`Refusal`) to be counted
and logged like any answered request.
"""

from __future__ import annotations

import http
import re
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass

from websockets.exceptions import (
    HeaderLineTooLong,
    InvalidMessage,
    RequestLineTooLong,
    TooManyHeaders,
)
from websockets.http11 import MAX_LINE_LENGTH, Request, parse_headers
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from relay.errors import MalformedRequest

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
"""A method (RFC 9110 5.6.2)."""
_TARGET = re.compile(rb"[\x21-\x7e]+")
"""A request target: visible ASCII only (a URI has no space, control or raw byte past it)."""
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request answered at the wire, before any route: the status, why (fixed text, never
    the client's bytes), and what of the request line could be read, for the log."""

    status: int
    reason: str
    method: str = ""
    target: str = ""

    def body(self) -> str:
        return f"{http.HTTPStatus(self.status).phrase}: {self.reason}.\n"


def has_body(request: Request) -> bool:
    """Whether the request says a body follows (which nothing here reads)."""
    lengths = set(request.headers.get_all("Content-Length"))
    return "Transfer-Encoding" in request.headers or not lengths <= {"0"}


def is_upgrade(request: Request) -> bool:
    upgrade = request.headers.get("Upgrade", "")
    return request.method == "GET" and "websocket" in upgrade.lower() and not has_body(request)


def _text(raw: bytes) -> str:
    """Bytes of the request line for a log line (the log escapes what is not printable)."""
    return raw[:1024].decode("utf-8", "backslashreplace")


def _crlf_lines(
    reader: StreamReader,
) -> Callable[[int, type[Exception]], Generator[None, None, bytes]]:
    """The library's ``read_line``, refusing a line that ends in LF without CR."""

    def read_line(limit: int, too_long: type[Exception]) -> Generator[None, None, bytes]:
        line = yield from reader.read_line(limit, too_long)
        if not line.endswith(b"\r\n"):
            raise MalformedRequest(400, "a line ends in LF without CR")
        return bytes(line)

    return read_line


def read_request(reader: StreamReader) -> Generator[None, None, Request]:
    """The request line and the headers; a body is left unread (``Request.parse`` refuses
    one). Raises :class:`~relay.errors.MalformedRequest` for what is not HTTP/1.x, EOFError
    when the connection closed before sending anything."""
    read_line = _crlf_lines(reader)
    try:
        line = (yield from read_line(MAX_LINE_LENGTH, RequestLineTooLong))[:-2]
    except EOFError:
        if not reader.buffer:
            raise EOFError("connection closed before a request") from None
        raise MalformedRequest(400, "the request ends before its line does") from None
    parts = line.split(b" ")
    if len(parts) != 3:
        raise MalformedRequest(400, "the request line is not: method, target, HTTP version")
    raw_method, raw_target, raw_version = parts
    method, target = _text(raw_method), _text(raw_target)
    version = _VERSION.fullmatch(raw_version)
    if version is None:
        raise MalformedRequest(400, "the request line has no HTTP version", method, target)
    if version.group(1) != b"1":
        raise MalformedRequest(505, "only HTTP/1.0 and HTTP/1.1 are served", method, target)
    if not _TOKEN.fullmatch(raw_method):
        raise MalformedRequest(400, "the method is not a token", method, target)
    if not _TARGET.fullmatch(raw_target):
        reason = "the request target has a control character or a byte past ASCII"
        raise MalformedRequest(400, reason, method, target)
    try:
        headers = yield from parse_headers(read_line)
    except (HeaderLineTooLong, TooManyHeaders):
        reason = "a header line is too long, or too many"
        raise MalformedRequest(431, reason, method, target) from None
    except MalformedRequest as exc:
        raise MalformedRequest(400, exc.reason, method, target) from None
    except EOFError:
        raise MalformedRequest(400, "the request ends in its headers", method, target) from None
    except ValueError:  # no colon, folded, a bad name or value: the library says which
        raise MalformedRequest(400, "a header line is not valid", method, target) from None
    # HTTP/1.x past 1.1 is read as 1.1 (RFC 9110 2.5).
    protocol = "HTTP/1.0" if raw_version == b"HTTP/1.0" else "HTTP/1.1"
    return Request(raw_target.decode("ascii"), headers, raw_method.decode("ascii"), protocol)


Refused = Callable[[Refusal], None]


def parse_request(protocol: ServerProtocol, refused: Refused) -> Generator[None]:
    """The parser of a server connection: its opening request, then frames or nothing."""
    try:
        request = yield from read_request(protocol.reader)
    except EOFError as exc:  # not a byte came: no request to answer
        protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
        protocol.handshake_exc.__cause__ = exc
        protocol.send_eof()
        protocol.parser = protocol.discard()
        next(protocol.parser)
        yield
        return
    except RequestLineTooLong as exc:
        yield from _refuse(protocol, refused, Refusal(414, "the request line is too long"), exc)
        return
    except MalformedRequest as exc:
        yield from _refuse(
            protocol, refused, Refusal(exc.status, exc.reason, exc.method, exc.target), exc
        )
        return
    except Exception as exc:  # what else the library raises: still no valid request
        yield from _refuse(protocol, refused, Refusal(400, "not an HTTP/1.x request"), exc)
        return
    protocol.events.append(request)
    if is_upgrade(request):
        # The library's frame parser in place of this one (as the library itself swaps
        # parsers): nothing of the request stays referenced by a suspended frame.
        protocol.parser = Protocol.parse(protocol)
        next(protocol.parser)
        yield
        return
    # One answer, then the connection closes: a body or a pipelined request is not read
    # (the answer replaces this parser).
    yield from _drop_input(protocol.reader)


def _refuse(
    protocol: ServerProtocol, refused: Refused, refusal: Refusal, exc: Exception
) -> Generator[None]:
    protocol.handshake_exc = exc
    # reject() says Connection: close; sending it half-closes and discards what follows.
    protocol.send_response(protocol.reject(refusal.status, refusal.body()))
    refused(refusal)
    yield


def response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    """The status line and headers of an HTTP/1.1 answer, byte for byte as the library
    writes them."""
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode()


def answered(protocol: ServerProtocol, *, end: bool) -> None:
    """The request is answered on the raw transport: what the client sends next is read
    to its end and dropped. ``end``: the answer is complete, and the connection half-closes
    as the library's does after any answer but a 101; else the answer streams on, and this
    is called again with ``end`` when it is over."""
    if end:
        protocol.send_eof()
        protocol.parser = protocol.discard()
    else:
        protocol.parser = _drop_input(protocol.reader)
    next(protocol.parser)


def _drop_input(reader: StreamReader) -> Generator[None]:
    while not (yield from reader.at_eof()):
        reader.discard()
    while True:
        yield


def install(protocol: ServerProtocol, refused: Refused = lambda refusal: None) -> None:
    """Make ``protocol`` read its request with :func:`parse_request` (before any data);
    ``refused`` hears of each request answered here."""
    protocol.parser = parse_request(protocol, refused)
    next(protocol.parser)
