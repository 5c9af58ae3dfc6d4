"""How the shared port reads an HTTP request: one per connection, answered, then closed.

websockets (17.x) reads the opening request with ``Request.parse`` and then parses
whatever follows as WebSocket frames, even before it answers. For the plain GET routes
that loses requests: a request with a body (``Content-Length`` > 0, chunked) is dropped
without an answer, and a second pipelined request is taken for frames, which fails the
connection before the first is answered. :func:`parse_request` replaces the protocol's
parser: it reads the request line and headers as the library does, and then

- for a WebSocket upgrade, goes on with the library's frame parser;
- for anything else, reads nothing more: the request is answered (``server.py`` adds
  ``Connection: close``) and the connection closes, whatever bytes came after it.

:func:`install` puts it in a new ``ServerProtocol`` (``relay.connection`` does, for
every connection).
"""

from __future__ import annotations

import http
from collections.abc import Generator

from websockets.exceptions import (
    HeaderLineTooLong,
    InvalidMessage,
    RequestLineTooLong,
    TooManyHeaders,
)
from websockets.http11 import Request, parse_headers, parse_line
from websockets.protocol import Protocol
from websockets.server import ServerProtocol
from websockets.streams import StreamReader


def has_body(request: Request) -> bool:
    """Whether the request says a body follows (which nothing here reads)."""
    lengths = set(request.headers.get_all("Content-Length"))
    return "Transfer-Encoding" in request.headers or not lengths <= {"0"}


def is_upgrade(request: Request) -> bool:
    upgrade = request.headers.get("Upgrade", "")
    return request.method == "GET" and "websocket" in upgrade.lower() and not has_body(request)


def read_request(reader: StreamReader) -> Generator[None, None, Request]:
    """``Request.parse`` without its refusal of bodies: the request line and the headers."""
    try:
        line = yield from parse_line(reader.read_line, RequestLineTooLong)
    except EOFError as exc:
        raise EOFError("connection closed while reading HTTP request line") from exc
    try:
        raw_method, raw_path, raw_protocol = line.split(b" ", 2)
    except ValueError:
        raise ValueError("invalid HTTP request line") from None
    if raw_protocol not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise ValueError("unsupported protocol; expected HTTP/1.1 or HTTP/1.0")
    method = raw_method.decode("ascii")
    path = raw_path.decode("ascii")
    headers = yield from parse_headers(reader.read_line)
    return Request(path, headers, method, raw_protocol.decode("ascii"))


def parse_request(protocol: ServerProtocol) -> Generator[None]:
    """The parser of a server connection: its opening request, then frames or nothing."""
    try:
        request = yield from read_request(protocol.reader)
    except RequestLineTooLong as exc:
        yield from _refuse(protocol, exc, http.HTTPStatus.REQUEST_URI_TOO_LONG)
        return
    except (HeaderLineTooLong, TooManyHeaders) as exc:
        yield from _refuse(protocol, exc, http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)
        return
    except Exception as exc:  # not HTTP at all: close without an answer, as the library does
        protocol.handshake_exc = InvalidMessage("did not receive a valid HTTP request")
        protocol.handshake_exc.__cause__ = exc
        protocol.send_eof()
        protocol.parser = protocol.discard()
        next(protocol.parser)
        yield
        return
    protocol.events.append(request)
    if is_upgrade(request):
        # The library's frame parser in place of this one (as the library itself swaps
        # parsers): nothing of the request stays referenced by a suspended frame.
        protocol.parser = Protocol.parse(protocol)
        next(protocol.parser)
        yield
        return
    # One answer, then the connection closes: a body or a pipelined request is not read.
    while not (yield from protocol.reader.at_eof()):
        protocol.reader.discard()
    while True:  # at EOF before the answer went out; the answer replaces this parser
        yield


def _refuse(protocol: ServerProtocol, exc: Exception, status: http.HTTPStatus) -> Generator[None]:
    protocol.handshake_exc = exc
    protocol.send_response(protocol.reject(status, f"{status.phrase}.\n"))
    yield


def install(protocol: ServerProtocol) -> None:
    """Make ``protocol`` read its request with :func:`parse_request` (before any data)."""
    protocol.parser = parse_request(protocol)
    next(protocol.parser)
