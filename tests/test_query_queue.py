"""Object API queries under a crowd: the time limit counts the wait for a reader, and past
a global bound requests are refused at once while discovery and readiness still answer."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from relay.testing import RelayServer
from tests.support import UNIT, counted, stream_line, wait_for

Answer = tuple[int, dict[str, str], Any]


def relay_with(
    start_relay: Callable[..., RelayServer],
    count: int = 20,
    **values: Any,
) -> RelayServer:
    relay = start_relay(**values)
    relay.push(*(stream_line(i, f"tweet {i}", tags=("cats",)) for i in range(1, count + 1)))
    relay.wait_seq(count)
    return relay


def get_from(relay: RelayServer, address: str, path: str, timeout: float = 2 * UNIT) -> Answer:
    """GET from a given loopback address (Linux routes all of 127/8 to lo): one client each."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", relay.port, timeout=timeout, source_address=(address, 0)
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.headers), orjson.loads(response.read())
    finally:
        conn.close()


def block_readers(relay: RelayServer) -> threading.Event:
    """Occupy the object API's only reader, as a long query would, until the event is set."""
    release = threading.Event()
    relay.relay.store._query_readers.submit(release.wait, 4 * UNIT)  # type: ignore[union-attr]
    return release


def queued(relay: RelayServer) -> int:
    return relay.relay.store._query_readers._work_queue.qsize()  # type: ignore[union-attr,no-any-return]


def test_a_query_that_waited_past_its_time_limit_answers_503_without_running(
    start_relay: Callable[..., RelayServer],
) -> None:
    timeout = 0.2  # far more than a one-tweet page of 20 tweets takes to run
    relay = relay_with(start_relay, query_readers=1, query_timeout=timeout)
    assert get_from(relay, "127.0.0.2", "/v1/objects/tweets?limit=1")[0] == 200
    release = block_readers(relay)
    answers: list[Answer] = []
    thread = threading.Thread(
        target=lambda: answers.append(get_from(relay, "127.0.0.2", "/v1/objects/tweets?limit=1"))
    )
    thread.start()
    try:
        wait_for(lambda: queued(relay) == 1, 2 * UNIT, "the query queued for the reader")
        since = time.monotonic()  # the query was accepted before this
        wait_for(lambda: time.monotonic() > since + timeout, 2 * UNIT, "its time limit passed")
        assert not answers
    finally:
        release.set()
        thread.join(2 * UNIT)
    assert answers, "no answer"
    status, headers, body = answers[0]
    assert status == 503 and body["errors"][0]["reason"] == "queryTimeout", body
    assert "waited" in body["errors"][0]["message"]
    assert int(headers["Retry-After"]) >= 1
    # The reader is free again and a fresh query runs within its limit.
    assert get_from(relay, "127.0.0.2", "/v1/objects/tweets?limit=1")[0] == 200


def test_past_the_global_bound_queries_answer_503_at_once_while_info_and_readyz_answer(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = relay_with(start_relay, query_readers=1, queries_per_client=2, queries_waiting=3)
    api = relay.relay.server.api  # type: ignore[union-attr]
    release = block_readers(relay)
    answers: dict[str, Answer] = {}

    def query(address: str) -> None:
        answers[address] = get_from(relay, address, "/v1/objects/tweets?limit=1")

    # Three clients, each under its own limit, fill the global bound.
    addresses = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
    threads = [threading.Thread(target=query, args=(a,)) for a in addresses]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(api._in_flight) == 3, 2 * UNIT, "three queries in flight")
        # A fourth client is refused at once, while the reader is still held.
        for address in ("127.0.0.5", "127.0.0.6"):
            status, headers, body = get_from(relay, address, "/v1/objects/tweets?limit=1", UNIT)
            assert status == 503 and body["errors"][0]["reason"] == "unavailable", body
            assert int(headers["Retry-After"]) >= 1
        assert counted(relay.relay.metrics.refused, reason="queries_waiting") == 2
        assert get_from(relay, "127.0.0.5", "/v1/info", UNIT)[0] == 200
        assert get_from(relay, "127.0.0.5", "/readyz", UNIT)[0] == 200
        assert not answers
    finally:
        release.set()
        for thread in threads:
            thread.join(2 * UNIT)
    assert {a: answer[0] for a, answer in answers.items()} == dict.fromkeys(addresses, 200)
    assert not api._in_flight and api._queries == 0
    assert get_from(relay, "127.0.0.5", "/v1/objects/tweets?limit=1")[0] == 200
