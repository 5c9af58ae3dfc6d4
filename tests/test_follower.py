"""The bus follower: the store is the truth, the bus a hint.

A tweet committed but never published (an ingester that died between commit and
publish, a bus that lost it) reaches clients anyway: at the next seq jump, at the
next heartbeat, or at the next store check when everything is quiet. The test
writes to the real store directly, as such an ingester would have, and watches a
real client.
"""

from __future__ import annotations

import time
from dataclasses import replace

from relay.core.tweets import ALL_CHANNEL, parse_line
from relay.testing import RelayServer
from tests.support import (
    UNIT,
    counted,
    receive_tweets,
    stream_line,
    subscribe,
    wait_for,
)


def commit_unpublished(relay: RelayServer, ids: range) -> None:
    """Store tweets the way a dying ingester would: committed, never on the bus."""
    assert relay.relay.store is not None
    tweets = [t for i in ids for t in parse_line(stream_line(i)).tweets]
    result = relay.call(relay.relay.store.append(tweets, [], time.time()))
    assert len(result.stored) == len(ids)


def test_a_seq_jump_on_the_bus_is_filled_from_the_store_in_order(start_relay):
    relay = start_relay(bus_check_interval=3600)
    ws, _ = subscribe(relay.ws_url)
    relay.push(*(stream_line(i) for i in range(1, 4)))
    assert [f["seq"] for f in receive_tweets(ws, 3)] == [1, 2, 3]
    commit_unpublished(relay, range(4, 9))  # seqs 4..8 never reach the bus
    relay.push(stream_line(9))  # seq 9 does: a jump from 3
    frames = receive_tweets(ws, 6)
    assert [f["seq"] for f in frames] == [4, 5, 6, 7, 8, 9]
    assert [f["tweet"]["id"] for f in frames] == [str(i) for i in range(4, 10)]
    assert relay.relay.follower is not None and relay.relay.follower.filled == 5
    ws.close()


def test_a_heartbeat_ahead_of_the_hub_is_filled_from_the_store(start_relay):
    relay = start_relay(bus_check_interval=3600)
    ws, _ = subscribe(relay.ws_url)
    commit_unpublished(relay, range(1, 5))
    assert relay.relay.bus is not None
    relay.loop.call_soon_threadsafe(relay.relay.bus.announce, 4)
    assert [f["seq"] for f in receive_tweets(ws, 4)] == [1, 2, 3, 4]
    ws.close()


def test_a_quiet_loss_is_found_by_the_store_check(start_relay):
    relay = start_relay(bus_check_interval=0.1)
    ws, _ = subscribe(relay.ws_url)
    commit_unpublished(relay, range(1, 4))  # nothing on the bus, no heartbeat either
    assert [f["seq"] for f in receive_tweets(ws, 3)] == [1, 2, 3]
    ws.close()


def test_a_redelivered_batch_is_not_delivered_twice(start_relay):
    relay = start_relay(bus_check_interval=3600)
    ws, _ = subscribe(relay.ws_url)
    relay.push(*(stream_line(i) for i in range(1, 4)))
    assert [f["seq"] for f in receive_tweets(ws, 3)] == [1, 2, 3]
    store, bus = relay.relay.store, relay.relay.bus
    assert store is not None and bus is not None
    again = relay.call(store.read_after(ALL_CHANNEL, 0, 3, 10))
    relay.loop.call_soon_threadsafe(bus.publish, again)  # a new ingester re-publishes 1..3
    relay.push(stream_line(4))
    assert [f["seq"] for f in receive_tweets(ws, 1)] == [4]
    ws.close()


def test_a_bus_entry_the_store_does_not_hold_is_dropped(start_relay):
    relay = start_relay(bus_check_interval=3600)
    ws, _ = subscribe(relay.ws_url)
    relay.push(*(stream_line(i) for i in range(1, 3)))
    assert [f["seq"] for f in receive_tweets(ws, 2)] == [1, 2]
    store, bus = relay.relay.store, relay.relay.bus
    assert store is not None and bus is not None
    (real,) = relay.call(store.read_after(ALL_CHANNEL, 1, 2, 10))
    forged = replace(real, seq=10**12)  # a stale or foreign writer on the bus
    relay.loop.call_soon_threadsafe(bus.publish, [forged])
    relay.push(stream_line(3))  # the next real tweet is still delivered, in order
    assert [f["seq"] for f in receive_tweets(ws, 1)] == [3]
    # Seq 3 may come from the fill the forged entry set off, before the follower counts it.
    wait_for(lambda: counted(relay.relay.metrics.bus_foreign) == 1, UNIT, "the count")
    ws.close()
