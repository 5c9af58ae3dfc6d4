"""Who a client is behind a PaaS router: X-Forwarded-For, trusted only as far as configured.

Every client of a relay behind a router arrives from the router's address; without
``trusted_proxies`` they would all share the limits per address. Here the test's
clients play the router (they all come from 127.0.0.1) and write the header it would.
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from relay.access.forwarded import client_address
from relay.config import Settings
from relay.errors import BadForwardedFor, ConfigError
from relay.testing import RelayServer
from tests.support import UNIT, counted, subscribe, wait_for, ws_connect

Start = Callable[..., RelayServer]
SOCKET = "10.0.0.1"


@pytest.mark.parametrize(
    ("lines", "trusted", "expected"),
    [
        (["203.0.113.7"], 0, SOCKET),  # not trusted: the header is anyone's to write
        ([], 1, SOCKET),  # a request that did not come through the proxy
        ([" , "], 1, SOCKET),
        (["203.0.113.7"], 1, "203.0.113.7"),
        (["6.6.6.6, 203.0.113.7"], 1, "203.0.113.7"),  # the client wrote 6.6.6.6
        (["6.6.6.6", "203.0.113.7"], 1, "203.0.113.7"),  # two header lines are one list
        (["6.6.6.6, 203.0.113.7", "198.51.100.2"], 2, "203.0.113.7"),  # CDN, then router
        (["203.0.113.7"], 3, "203.0.113.7"),  # fewer entries than proxies: the leftmost
        (["2001:DB8:0::1"], 1, "2001:db8::1"),  # one spelling per address
        (["garbage, 203.0.113.7"], 1, "203.0.113.7"),  # what is left of the client's is not read
    ],
)
def test_the_client_is_the_entry_trusted_proxies_from_the_right(
    lines: list[str], trusted: int, expected: str
) -> None:
    assert client_address(SOCKET, lines, trusted) == expected


@pytest.mark.parametrize("entry", ["unknown", "203.0.113.7:4711", "_hidden", "1.2.3.4.5"])
def test_an_entry_that_is_not_an_ip_address_is_refused(entry: str) -> None:
    with pytest.raises(BadForwardedFor, match="not an IP address"):
        client_address(SOCKET, [f"6.6.6.6, {entry}"], 1)


def test_trusted_proxies_is_a_setting_that_is_never_negative() -> None:
    assert Settings.load(environ={"RELAY_TRUSTED_PROXIES": "1"}).trusted_proxies == 1
    assert Settings().trusted_proxies == 0
    with pytest.raises(ConfigError, match="trusted_proxies"):
        Settings.from_mapping({"trusted_proxies": -1})


def _via(address: str) -> dict[str, Any]:
    return {"additional_headers": {"X-Forwarded-For": f"6.6.6.6, {address}"}}


def _is_refused(relay: RelayServer, **connect_args: Any) -> bool:
    """Whether a new connection is closed at once with 1008 (over a connection limit)."""
    ws = ws_connect(relay.ws_url, **connect_args)
    try:
        ws.send('{"op":"ping"}')
        ws.recv(timeout=UNIT)  # the pong of a connection that was let in
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1008
        return True
    finally:
        ws.close()
    return False


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_connection_limit(
    start_relay: Start,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="relay.web.server")
    relay = start_relay(trusted_proxies=1, max_connections_per_address=1)
    first, _ = subscribe(relay.ws_url, **_via("203.0.113.1"))
    # Two header lines are one list: its last entry names the client.
    second, _ = subscribe(
        relay.ws_url,
        additional_headers=[("X-Forwarded-For", "203.0.113.1"), ("X-Forwarded-For", "::2")],
    )
    assert _is_refused(relay, **_via("203.0.113.1"))  # the first client's one connection
    assert "refused 203.0.113.1 via 127.0.0.1:" in caplog.text  # logs name the client
    first.close()
    second.close()


def test_without_trusted_proxies_a_forged_header_changes_nothing(start_relay: Start) -> None:
    relay = start_relay(max_connections_per_address=1)
    first, _ = subscribe(relay.ws_url, **_via("203.0.113.1"))
    # Another "client" behind the same address: the header is not read, the limit shared.
    assert _is_refused(relay, **_via("203.0.113.2"))
    assert _is_refused(relay)
    first.close()


def test_a_bad_forwarded_entry_counts_as_the_socket_address_and_is_logged_sampled(
    start_relay: Start,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="relay.web.server")
    relay = start_relay(trusted_proxies=1, max_connections_per_address=1)
    bad = {"additional_headers": {"X-Forwarded-For": "203.0.113.1, unknown"}}
    first, _ = subscribe(relay.ws_url, **bad)
    assert _is_refused(relay, additional_headers={"X-Forwarded-For": "127.0.0.1"})
    assert not _is_refused(relay, **_via("203.0.113.1"))
    for _ in range(40):
        request = urllib.request.Request(relay.url + "/healthz", headers={"X-Forwarded-For": "?"})
        with urllib.request.urlopen(request, timeout=UNIT) as response:
            assert response.status == 200
    assert counted(relay.relay.metrics.bad_forwarded_for) == 41
    logged = [r for r in caplog.records if "X-Forwarded-For entry" in r.getMessage()]
    assert 1 <= len(logged) <= 20
    first.close()


@pytest.mark.parametrize("trusted", [0, 1])
def test_the_query_cap_is_per_forwarded_client_only_behind_trusted_proxies(
    trusted: int, start_relay: Start
) -> None:
    relay = start_relay(trusted_proxies=trusted, queries_per_client=1, query_readers=1)
    store, api = relay.relay.store, relay.relay.server.api  # type: ignore[union-attr]
    release = threading.Event()
    store._query_readers.submit(release.wait, 4 * UNIT)  # type: ignore[union-attr]
    answers: dict[str, int] = {}

    def query(address: str) -> None:
        request = urllib.request.Request(
            relay.url + "/v1/objects/tweets", headers={"X-Forwarded-For": address}
        )
        try:
            with urllib.request.urlopen(request, timeout=2 * UNIT) as response:
                answers[address] = response.status
        except urllib.error.HTTPError as error:
            answers[address] = error.code

    threads = [threading.Thread(target=query, args=(a,)) for a in ("203.0.113.1", "203.0.113.2")]
    try:
        threads[0].start()
        wait_for(lambda: bool(api._in_flight), 2 * UNIT, "the first query in flight")
        threads[1].start()
        if trusted:  # the second client's query waits for the reader too: its own slot
            wait_for(lambda: len(api._in_flight) == 2, 2 * UNIT, "both queries in flight")
        else:  # one address for both: the second is over the cap at once
            threads[1].join(2 * UNIT)
            assert answers == {"203.0.113.2": 429}
    finally:
        release.set()
        for thread in threads:
            thread.join(2 * UNIT)
    if trusted:
        assert answers == {"203.0.113.1": 200, "203.0.113.2": 200}
    else:
        assert answers == {"203.0.113.1": 200, "203.0.113.2": 429}


def info_urls(relay: RelayServer, headers: dict[str, str]) -> tuple[str, str]:
    request = urllib.request.Request(relay.url + "/v1/info", headers=headers)
    with urllib.request.urlopen(request, timeout=UNIT) as response:
        body = orjson.loads(response.read())
    return body["stream_url"], body["objects_url"]


FORGED = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"}


def test_forwarded_host_and_proto_are_ignored_without_trusted_proxies(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay()
    stream, objects = info_urls(relay, FORGED)
    assert stream == f"ws://127.0.0.1:{relay.port}/v1/stream"
    assert objects.startswith(f"http://127.0.0.1:{relay.port}/")


def test_forwarded_host_and_proto_are_used_behind_a_trusted_proxy(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(trusted_proxies=1)
    stream, objects = info_urls(relay, FORGED)
    assert stream == "wss://evil.example/v1/stream"
    assert objects == "https://evil.example/v1/objects/tweets"
    # Even a trusted proxy's header must be a host: anything else falls back.
    stream, _ = info_urls(relay, {"X-Forwarded-Host": "a b/<x>", "X-Forwarded-Proto": "gopher"})
    assert stream == "ws://localhost/v1/stream"
