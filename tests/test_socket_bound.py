"""Sockets per address are bounded from the accept, in any state, and never leak.

A client holding many half-sent HTTP requests used to keep each one (a file
descriptor) for the whole handshake timeout, with no bound per address: enough of
them and the relay could accept no one. Now the count starts at the accept.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from relay.config import Settings
from relay.errors import ConfigError
from relay.testing import RelayServer
from relay.web.sockets import AcceptErrorFilter
from tests.support import UNIT, counted, stream_line, wait_for, ws_connect

HALF_REQUEST = b"GET /healthz HTTP/1.1\r\nHost: relay\r\n"  # no blank line: never complete


def _open_count(relay: RelayServer, address: str = "127.0.0.1") -> int:
    assert relay.relay.server is not None
    return relay.relay.server.sockets.open.get(address, 0)


def _half_open(stack: ExitStack, port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), UNIT, (source, 0)))
    sock.sendall(HALF_REQUEST)
    return sock


def _was_reset(sock: socket.socket) -> bool:
    """Whether the relay dropped the connection (it never answers a half-sent request)."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _healthz(port: int, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), UNIT, (source, 0)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
        answer = b""
        while chunk := sock.recv(1 << 16):
            answer += chunk
    return answer


@pytest.fixture
def bounded(start_relay: Callable[..., RelayServer]) -> Iterator[RelayServer]:
    yield start_relay(max_connections_per_address=2, max_sockets_per_address=5)


def test_sockets_past_the_bound_are_reset_at_once_and_others_are_served(
    bounded: RelayServer,
) -> None:
    relay, bound = bounded, 5
    with ExitStack() as stack:
        # Every state counts: one upgraded stream, the rest half-sent requests.
        ws = ws_connect(relay.ws_url)
        stack.callback(ws.close)
        held = [_half_open(stack, relay.port) for _ in range(bound - 1)]
        wait_for(lambda: _open_count(relay) == bound, 2 * UNIT, f"{bound} sockets counted")
        extra = [_half_open(stack, relay.port) for _ in range(3)]
        assert all(_was_reset(sock) for sock in extra)  # before the handshake timeout
        assert counted(relay.relay.metrics.refused, reason="too_many_sockets") == 3
        assert not any(_was_reset_now(sock) for sock in held)  # the ones under the bound stay
        # Another address is not held to this one's count.
        assert _healthz(relay.port, "127.0.0.2").startswith(b"HTTP/1.1 200")
        wait_for(lambda: _open_count(relay, "127.0.0.2") == 0, 2 * UNIT, "127.0.0.2 uncounted")
        assert _open_count(relay) == bound  # refused sockets were never counted
    # Closed by the client: the count goes back to nothing, and the address is served again.
    wait_for(lambda: _open_count(relay) == 0, 2 * UNIT, "every socket uncounted")
    assert relay.relay.server is not None and not relay.relay.server.sockets.open
    assert _healthz(relay.port, "127.0.0.1").startswith(b"HTTP/1.1 200")


def _was_reset_now(sock: socket.socket) -> bool:
    """Whether the relay already dropped ``sock`` (without waiting for it to)."""
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(UNIT)


def test_behind_a_trusted_proxy_the_socket_bound_is_not_applied(
    start_relay: Callable[..., RelayServer],
) -> None:
    # Every client comes from the router's address: a bound per socket address would be
    # one bound for all of them.
    relay = start_relay(trusted_proxies=1, max_connections_per_address=2, max_sockets_per_address=2)
    with ExitStack() as stack:
        held = [_half_open(stack, relay.port) for _ in range(4)]
        wait_for(lambda: _open_count(relay) == 4, 2 * UNIT, "4 sockets counted, none refused")
        assert not any(_was_reset_now(sock) for sock in held)
        assert counted(relay.relay.metrics.refused, reason="too_many_sockets") == 0
    wait_for(lambda: _open_count(relay) == 0, 2 * UNIT, "every socket uncounted")


def test_the_socket_bound_is_at_least_the_stream_bound() -> None:
    with pytest.raises(ConfigError, match="max_sockets_per_address must be at least"):
        Settings.from_mapping({"max_connections_per_address": 10, "max_sockets_per_address": 9})


def test_accept_errors_out_of_descriptors_are_sampled(
    bounded: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncio logs a traceback at each retry of a failed accept; the relay logs a sample."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    loop = asyncio.new_event_loop()
    try:
        for _ in range(30):  # what asyncio reports when accept() hits the open-files limit
            loop.call_exception_handler(
                {
                    "message": AcceptErrorFilter.MESSAGE,
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                }
            )
        loop.call_exception_handler({"message": "something else went wrong"})
    finally:
        loop.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    # One a minute for the whole process (another relay in this process may have had it).
    assert sum(m.startswith(AcceptErrorFilter.MESSAGE) for m in messages) <= 1
    assert any(m.startswith("something else went wrong") for m in messages)  # others pass


def test_a_write_timeout_before_the_stream_names_the_peer_as_host_and_port(
    start_relay: Callable[..., RelayServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An object API answer (no stream session yet) larger than the kernel's buffers, to a
    # client that reads nothing: the write times out after ping_timeout.
    relay = start_relay(ping_timeout=0.5)
    relay.push(*(stream_line(n, "x" * 9000) for n in range(1, 1001)))
    relay.wait_seq(1000)
    caplog.set_level(logging.INFO, logger="relay.web.connection")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        sock.settimeout(UNIT)
        sock.connect(("127.0.0.1", relay.port))
        sock.sendall(b"GET /v1/objects/tweets?limit=1000 HTTP/1.1\r\nHost: relay\r\n\r\n")
        wait_for(lambda: "a write waited" in caplog.text, 4 * UNIT, "the write timeout")
    assert re.search(r"closing 127\.0\.0\.1:\d+: a write waited", caplog.text), caplog.text
