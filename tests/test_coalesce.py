"""The coalescing window (``coalesce_ms``): live publishes that come within it go out as
one write per client, on both transports, every frame in order; 0 writes each publish
at the loop's next step; the wait is in the delivery latency, and bounded by the window.

Publishes go straight to the relay's hub in its own loop, one loop step apart, so the
test decides how many publishes the window sees; the clients are real WebSocket and
event-stream clients on real sockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest

from relay.store import StoredTweet
from relay.stream.hub import Hub
from relay.testing import RelayServer, SseClient
from tests.support import UNIT, receive_tweets, subscribe, wait_for

Start = Callable[..., RelayServer]

WINDOW_MS = 20.0
WIDE_WINDOW_MS = 500.0
"""A window the eight publishes' loop steps fit in however busy the machine is."""
PUBLISHES = 8


def _hub(relay: RelayServer) -> Hub:
    hub = relay.relay.hub
    assert hub is not None
    return hub


def _writes(relay: RelayServer) -> float:
    """The writes counted, read on the relay's loop: a write's count comes just after the
    write in the same loop callback, so a client may hold a frame before it is counted;
    once the loop runs this read, every write made before it is counted."""

    async def read() -> float:
        return relay.relay.metrics.registry.get_sample_value("relay_stream_writes_total") or 0.0

    return relay.call(read())


def _latency(relay: RelayServer, bucket: str | None = None) -> float:
    registry = relay.relay.metrics.registry
    if bucket is None:
        return registry.get_sample_value("relay_delivery_latency_seconds_count") or 0.0
    labels = {"le": bucket}
    return registry.get_sample_value("relay_delivery_latency_seconds_bucket", labels) or 0.0


def _publish_steps(relay: RelayServer, publishes: int) -> list[int]:
    """``publishes`` publishes of one tweet each, a loop step apart (as a follower hands
    over tweets one XREAD at a time), each received just before it is published."""
    hub = _hub(relay)

    async def go() -> list[int]:
        seqs = []
        for _ in range(publishes):
            seq = hub.head + 1
            body = orjson.dumps({"id": str(seq), "text": f"tweet {seq}"})
            hub.publish([StoredTweet(seq, ("tweets",), body, received=time.time())])
            seqs.append(seq)
            await asyncio.sleep(0)  # the next step: without a window, a write per publish
        return seqs

    return relay.call(go())


def _clients(relay: RelayServer) -> tuple[object, SseClient]:
    ws, _ = subscribe(relay.ws_url, "tweets")
    events = SseClient(relay.events_url)
    assert events.next_event().event == "subscribed"
    hub = _hub(relay)
    wait_for(lambda: sum(len(s.subscriptions) for s in hub.sessions) == 2, UNIT, "2 subscribers")
    return ws, events


@pytest.mark.parametrize("coalesce_ms", [0.0, WIDE_WINDOW_MS])
def test_publishes_within_the_window_go_out_as_one_write_per_client_and_0_writes_each(
    start_relay: Start, coalesce_ms: float
) -> None:
    relay = start_relay(coalesce_ms=coalesce_ms)
    ws, events = _clients(relay)
    before = _writes(relay)
    seqs = _publish_steps(relay, PUBLISHES)
    assert [f["seq"] for f in receive_tweets(ws, PUBLISHES)] == seqs  # type: ignore[arg-type]
    assert [t["seq"] for t in events.tweets(PUBLISHES)] == seqs
    writes = _writes(relay) - before
    if coalesce_ms:
        # The whole run of publishes fits in the window: one write per client.
        assert writes == 2 < PUBLISHES
    else:
        assert writes == 2 * PUBLISHES  # today's behaviour: a write per client per publish
    more = _publish_steps(relay, 1)  # and the next window writes what comes after, in order
    assert [f["seq"] for f in receive_tweets(ws, 1)] == more  # type: ignore[arg-type]
    assert [t["seq"] for t in events.tweets(1)] == more
    ws.close()  # type: ignore[attr-defined]
    events.close()


def test_the_window_wait_is_in_the_delivery_latency_and_bounded_by_it(
    start_relay: Start,
) -> None:
    relay = start_relay(coalesce_ms=WINDOW_MS)
    ws, events = _clients(relay)
    observed = _latency(relay)
    rounds = 5
    for _ in range(rounds):
        seqs = _publish_steps(relay, PUBLISHES)
        assert [f["seq"] for f in receive_tweets(ws, PUBLISHES)] == seqs  # type: ignore[arg-type]
        assert [t["seq"] for t in events.tweets(PUBLISHES)] == seqs
    # One observation a window (its frames all with the sockets), not one a publish.
    wait_for(lambda: _latency(relay) == observed + rounds, UNIT, "an observation a window")
    # Each waited the window (20 ms: none in the 10 ms bucket) and no longer than a
    # window and a stalled loop (all in the 1 s bucket; the buckets are the histogram's).
    assert _latency(relay, "0.01") == 0
    assert _latency(relay, "1.0") == _latency(relay) == observed + rounds
    ws.close()  # type: ignore[attr-defined]
    events.close()


def test_the_window_is_a_setting_in_milliseconds_and_refuses_what_is_not_one() -> None:
    from relay.config import Settings
    from relay.errors import ConfigError

    assert Settings.from_mapping({"coalesce_ms": "7.5"}).coalesce_ms == 7.5
    for bad in ("-1", "1001", "nan", "inf"):
        with pytest.raises(ConfigError, match="coalesce_ms"):
            Settings.from_mapping({"coalesce_ms": bad})
