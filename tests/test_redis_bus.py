"""The Redis Streams bus against a real redis-server (tests/redis_server.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import pytest

from relay.bus import BusItem, Heartbeat
from relay.bus.entries import decode_entry, encode_tweet
from relay.bus.redis import RedisBus, where
from relay.errors import ConfigError
from relay.obs.metrics import Metrics
from relay.store import StoredTweet
from tests.redis_server import RedisServer
from tests.support import UNIT

EPOCH = "e1"


def tweet(seq: int) -> StoredTweet:
    text = f"tweet {seq}: ünïcödé ✓ 🚀"
    return StoredTweet(
        seq=seq,
        channels=("all", f"rule:r{seq % 3}"),
        body=orjson.dumps({"id": str(10_000 + seq), "text": text, "pad": "x" * (seq % 50)}),
        lang="en" if seq % 2 else None,
        author=f"user{seq % 5}" if seq % 7 else None,
        has_media=seq % 4 == 0,
        text=text,
    )


def tweets(first: int, last: int) -> list[StoredTweet]:
    return [tweet(seq) for seq in range(first, last + 1)]


def seqs(items: Sequence[BusItem]) -> list[int]:
    return [item.seq for item in items if isinstance(item, StoredTweet)]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def published(bus: RedisBus) -> float:
    return sample(bus.metrics, "relay_bus_published_total", kind="tweet")


def reconnects(bus: RedisBus, role: str) -> float:
    return sample(bus.metrics, "relay_bus_reconnects_total", role=role)


async def until(condition: Callable[[], bool], timeout: float = 4 * UNIT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def read_until(
    stream: AsyncIterator[Sequence[BusItem]],
    done: Callable[[list[BusItem]], bool],
    timeout: float = 4 * UNIT,
) -> list[BusItem]:
    got: list[BusItem] = []
    async with asyncio.timeout(timeout):
        async for batch in stream:
            got.extend(batch)
            if done(got):
                return got
    raise AssertionError("the follow stream ended")


def has_seq(seq: int) -> Callable[[list[BusItem]], bool]:
    return lambda items: seq in seqs(items)


def bus(server: RedisServer, **options: Any) -> RedisBus:
    options.setdefault("epoch", EPOCH)
    return RedisBus(server.url, **options)


def test_entries_round_trip_every_field() -> None:
    for seq in (1, 4, 7, 14, 28):
        original = tweet(seq)
        assert decode_entry(f"{seq}-0".encode(), encode_tweet(original)) == original
    assert decode_entry(b"9-3", {b"head": b"9"}) == Heartbeat(9)


def test_where_never_shows_the_password() -> None:
    assert where("rediss://h:s3cret@redis.example:25061/0") == "redis.example:25061"
    assert where("redis://:s3cret@10.0.0.1") == "10.0.0.1:6379"
    assert where("redis://[::1]:6380") == "[::1]:6380"


def test_two_followers_get_the_same_tweets_in_seq_order(redis_server: RedisServer) -> None:
    published = tweets(1, 1200)

    async def main() -> None:
        publisher, one, two = bus(redis_server), bus(redis_server), bus(redis_server)
        for b in (publisher, one, two):
            await b.start()
        readers = [asyncio.create_task(read_until(b.follow(0), has_seq(1200))) for b in (one, two)]
        for start in range(0, 1200, 100):  # committed batches, in seq order
            publisher.publish(published[start : start + 100])
        first, second = await asyncio.gather(*readers)
        for got in (first, second):
            assert [item for item in got if isinstance(item, StoredTweet)] == published
        assert sample(publisher.metrics, "relay_bus_published_total", kind="tweet") == 1200
        for b in (publisher, one, two):
            await b.close()

    asyncio.run(main())


def test_a_publish_reaches_a_waiting_follower_in_one_read(redis_server: RedisServer) -> None:
    """Redis answers a blocked XREAD right after the command that added to the stream:
    added one by one, a publish of 5 reached the follower as 1 and then 4 (two fan-outs
    to every client). In one transaction it arrives whole."""

    async def main() -> None:
        publisher, follower = bus(redis_server), bus(redis_server)
        await publisher.start()
        batches = follower.follow(0)
        first = asyncio.ensure_future(anext(batches))
        probe = redis_server.client()
        await until(lambda: int(probe.info("clients")["blocked_clients"]) >= 1)
        publisher.publish(tweets(1, 5))
        async with asyncio.timeout(4 * UNIT):
            assert seqs(await first) == [1, 2, 3, 4, 5]
        await batches.aclose()
        await publisher.close()
        await follower.close()

    asyncio.run(main())


def test_adds_redis_refuses_are_counted_and_later_ones_go_through(
    redis_server: RedisServer,
) -> None:
    """Out of memory, Redis refuses to queue an add and so the whole transaction: the
    batch goes again add by add, each refusal counted (followers read those from the
    store), and the bus goes on once Redis takes adds again."""

    async def main() -> None:
        publisher, follower = bus(redis_server), bus(redis_server)
        await publisher.start()
        probe = redis_server.client()
        probe.config_set("maxmemory", "1")
        try:
            publisher.publish(tweets(1, 3))
            await until(
                lambda: sample(publisher.metrics, "relay_bus_dropped_total", reason="error") == 3
            )
        finally:
            probe.config_set("maxmemory", "0")
        publisher.publish(tweets(4, 6))
        got = await read_until(follower.follow(0), has_seq(6))
        assert seqs(got) == [4, 5, 6]
        assert published(publisher) == 3
        await publisher.close()
        await follower.close()

    asyncio.run(main())


def test_a_follower_from_a_seq_gets_only_later_entries(redis_server: RedisServer) -> None:
    async def main() -> None:
        publisher, follower = bus(redis_server), bus(redis_server)
        await publisher.start()
        publisher.publish(tweets(1, 20))
        await until(lambda: published(publisher) == 20)
        got = await read_until(follower.follow(12), has_seq(20))
        assert seqs(got) == list(range(13, 21))
        await publisher.close()
        await follower.close()

    asyncio.run(main())


def test_a_republish_of_old_seqs_is_skipped_and_counted(redis_server: RedisServer) -> None:
    async def main() -> None:
        first = bus(redis_server)
        await first.start()
        first.publish(tweets(1, 10))
        await first.close()  # flushes
        # A new ingester publishes again from its last commit before the crash.
        second, follower = bus(redis_server), bus(redis_server)
        await second.start()
        second.publish(tweets(5, 12))
        got = await read_until(follower.follow(0), has_seq(12))
        assert seqs(got) == list(range(1, 13))  # each once, in order
        await until(lambda: sample(second.metrics, "relay_bus_refused_ids_total") == 6)
        assert sample(second.metrics, "relay_bus_published_total", kind="tweet") == 2
        await second.close()
        await follower.close()

    asyncio.run(main())


def test_trimming_keeps_about_maxlen_entries(redis_server: RedisServer) -> None:
    async def main() -> None:
        publisher = bus(redis_server, maxlen=100)
        await publisher.start()
        publisher.publish(tweets(1, 2000))
        await publisher.close()
        assert sample(publisher.metrics, "relay_bus_published_total", kind="tweet") == 2000

    asyncio.run(main())
    client = redis_server.client()
    length = client.xlen(f"relay:tweets:{EPOCH}")
    assert 100 <= length <= 200, length  # approximate: whole nodes go
    top = client.xrevrange(f"relay:tweets:{EPOCH}", count=1)
    assert top[0][0] == b"2000-0"
    client.close()

    async def late() -> list[BusItem]:
        follower = bus(redis_server)
        try:
            return await read_until(follower.follow(5), has_seq(2000))
        finally:
            await follower.close()

    # A follower behind the trimmed part reads on from the oldest entry kept (a seq
    # jump the follower fills from the store), never waits for what is gone.
    got = seqs(asyncio.run(late()))
    assert got == list(range(2001 - length, 2001))


def test_heartbeats_carry_the_head_while_nothing_is_published(redis_server: RedisServer) -> None:
    async def main() -> None:
        publisher = bus(redis_server, heartbeat_interval=0.05)
        follower = bus(redis_server)
        await publisher.start()
        stream = follower.follow(0)
        publisher.announce(42)
        got = await read_until(stream, lambda items: len(items) >= 3)
        assert got[:3] == [Heartbeat(42)] * 3
        assert seqs(got) == []
        publisher.publish(tweets(43, 45))
        got = await read_until(stream, lambda items: Heartbeat(45) in items)
        assert seqs(got) == [43, 44, 45]
        assert got.index(Heartbeat(45)) > got.index(tweet(45))  # never ahead of its tweets
        assert set(got) - set(tweets(43, 45)) <= {Heartbeat(42), Heartbeat(45)}
        await publisher.close()
        await follower.close()

    asyncio.run(main())


def test_a_follower_goes_on_after_redis_restarts_without_persistence(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.bus.redis")

    async def main() -> None:
        publisher, follower = bus(redis_server), bus(redis_server)
        await publisher.start()
        stream = follower.follow(0)
        publisher.publish(tweets(1, 50))
        assert seqs(await read_until(stream, has_seq(50))) == list(range(1, 51))
        next_read = asyncio.create_task(read_until(stream, has_seq(80), timeout=8 * UNIT))
        redis_server.stop()
        publisher.publish(tweets(51, 60))  # returns at once: queued
        await until(lambda: not publisher.connected and not follower.connected)
        publisher.publish(tweets(61, 70))
        redis_server.start()  # empty: the stream is gone
        publisher.publish(tweets(71, 80))
        assert seqs(await next_read) == list(range(51, 81))
        assert publisher.connected and follower.connected
        assert sample(publisher.metrics, "relay_bus_reconnects_total", role="publisher") >= 1
        assert sample(follower.metrics, "relay_bus_reconnects_total", role="follower") >= 1
        await publisher.close()
        await follower.close()

    asyncio.run(main())
    assert f"waiting for Redis at 127.0.0.1:{redis_server.port}" in caplog.text


def test_a_follower_above_a_lost_stream_follows_the_new_one(redis_server: RedisServer) -> None:
    """The stream restarted lower than the follower's position and nothing re-sent the
    old seqs: waiting for ids above the old position would stall it for good."""

    async def main() -> None:
        publisher, follower = bus(redis_server), bus(redis_server)
        await publisher.start()
        stream = follower.follow(0)
        publisher.publish(tweets(100, 110))
        await read_until(stream, has_seq(110))
        next_read = asyncio.create_task(read_until(stream, has_seq(3), timeout=8 * UNIT))
        await publisher.close()
        redis_server.restart()
        await until(lambda: reconnects(follower, "follower") >= 1)
        again = bus(redis_server)  # e.g. a store re-created under the same epoch name
        await again.start()
        again.publish(tweets(1, 3))
        assert seqs(await next_read) == [1, 2, 3]
        await again.close()
        await follower.close()

    asyncio.run(main())


def test_publish_drops_the_oldest_when_the_queue_is_full(redis_server: RedisServer) -> None:
    async def main() -> None:
        redis_server.stop()
        publisher = bus(redis_server, queue_limit=10)
        publisher.publish(tweets(1, 25))
        assert sample(publisher.metrics, "relay_bus_dropped_total", reason="queue_full") == 15
        redis_server.start()
        follower = bus(redis_server)
        got = await read_until(follower.follow(0), has_seq(25), timeout=8 * UNIT)
        assert seqs(got) == list(range(16, 26))
        await publisher.close()
        await follower.close()

    asyncio.run(main())


@pytest.mark.parametrize("down", ["stopped", "frozen"])
def test_close_gives_up_on_a_redis_that_is_down(redis_server: RedisServer, down: str) -> None:
    async def main() -> None:
        publisher = bus(redis_server)
        await publisher.start()
        if down == "stopped":
            redis_server.stop()
        else:
            redis_server.freeze()
        publisher.publish(tweets(1, 30))
        await asyncio.wait_for(publisher.close(), 4 * UNIT)
        assert sample(publisher.metrics, "relay_bus_dropped_total", reason="closed") == 30
        assert not publisher.connected

    try:
        asyncio.run(main())
    finally:
        if down == "frozen":
            redis_server.thaw()


def test_a_frozen_redis_is_noticed_and_both_sides_go_on_when_it_wakes(
    redis_server: RedisServer,
) -> None:
    """SIGSTOP: no connection is closed, nothing answers; the socket timeout finds it."""

    async def main() -> None:
        publisher, follower = bus(redis_server), bus(redis_server)
        await publisher.start()
        stream = follower.follow(0)
        publisher.publish(tweets(1, 5))
        await read_until(stream, has_seq(5))
        next_read = asyncio.create_task(read_until(stream, has_seq(10), timeout=8 * UNIT))
        redis_server.freeze()
        publisher.publish(tweets(6, 8))
        await until(lambda: not publisher.connected and not follower.connected)
        redis_server.thaw()
        publisher.publish(tweets(9, 10))
        assert seqs(await next_read) == list(range(6, 11))
        await publisher.close()
        await follower.close()

    try:
        asyncio.run(main())
    finally:
        redis_server.thaw()


def test_close_sends_what_is_queued(redis_server: RedisServer) -> None:
    async def main() -> None:
        publisher, follower = bus(redis_server), bus(redis_server)
        publisher.publish(tweets(1, 300))
        await publisher.close()
        assert seqs(await read_until(follower.follow(0), has_seq(300))) == list(range(1, 301))
        await follower.close()

    asyncio.run(main())


def test_processes_started_before_redis_wait_and_say_so(
    make_redis_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.bus.redis")
    server = make_redis_server(password="s3cret-pass", start=False)

    async def main() -> None:
        publisher, follower = bus(server), bus(server)
        starting = asyncio.create_task(publisher.start())
        reading = asyncio.create_task(read_until(follower.follow(0), has_seq(5), timeout=8 * UNIT))
        waiting = f"waiting for Redis at 127.0.0.1:{server.port}: "
        await until(lambda: caplog.text.count(waiting) >= 2)  # both sides say so
        assert not starting.done() and not publisher.connected
        server.start()
        await asyncio.wait_for(starting, 4 * UNIT)
        publisher.publish(tweets(1, 5))
        assert seqs(await reading) == [1, 2, 3, 4, 5]
        await publisher.close()
        await follower.close()

    asyncio.run(main())
    assert "retrying in 0.5 s" in caplog.text
    assert "s3cret" not in caplog.text


def test_a_wrong_password_is_a_config_error(
    make_redis_server: Callable[..., RedisServer],
) -> None:
    server = make_redis_server(password="right-pass")

    async def main() -> None:
        wrong = RedisBus(server.url.replace("right-pass", "wrong-pass"), epoch=EPOCH)
        with pytest.raises(ConfigError, match="refused the credentials") as refused:
            await asyncio.wait_for(wrong.start(), 4 * UNIT)
        assert "wrong-pass" not in str(refused.value)
        await wrong.close()

    asyncio.run(main())


def test_rediss_with_a_self_signed_certificate(
    make_redis_server: Callable[..., RedisServer],
) -> None:
    server = make_redis_server(tls=True)
    assert server.url.startswith("rediss://")

    async def main() -> None:
        publisher = bus(server, tls_verify=False)
        follower = bus(server, tls_verify=False)
        await publisher.start()
        publisher.publish(tweets(1, 5))
        assert seqs(await read_until(follower.follow(0), has_seq(5))) == [1, 2, 3, 4, 5]
        await publisher.close()
        await follower.close()

        verifying = bus(server)  # tls_verify=True: the certificate is nobody's
        with pytest.raises(ConfigError, match="RELAY_REDIS_TLS_VERIFY=false") as refused:
            await asyncio.wait_for(verifying.start(), 4 * UNIT)
        assert "certificate" in str(refused.value)
        await verifying.close()

    asyncio.run(main())


def test_a_malformed_entry_is_skipped_and_counted(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    key = f"relay:tweets:{EPOCH}"

    async def main() -> None:
        publisher, follower = bus(redis_server), bus(redis_server)
        await publisher.start()
        publisher.publish(tweets(1, 2))
        await until(lambda: published(publisher) == 2)
        client = redis_server.client()
        client.xadd(key, {"foo": "bar"}, id="3-0")  # another writer
        client.xadd(key, {"body": b"{}", "meta": b"not json"}, id="4-0")
        client.xadd(key, {"head": "x"}, id="5-0")
        client.close()
        publisher.publish(tweets(6, 7))
        got = await read_until(follower.follow(0), has_seq(7))
        assert seqs(got) == [1, 2, 6, 7]
        assert sample(follower.metrics, "relay_bus_malformed_entries_total") == 3
        await publisher.close()
        await follower.close()

    asyncio.run(main())
    assert "skipped bus entry b'4-0'" in caplog.text


def test_a_serving_process_holds_one_connection_per_follow(redis_server: RedisServer) -> None:
    """Small add-ons allow few connections (Heroku's mini: 20)."""

    async def main() -> None:
        follower, publisher = bus(redis_server), bus(redis_server)
        await follower.start()
        reading = asyncio.create_task(read_until(follower.follow(0), has_seq(1)))
        inspect = redis_server.client()

        def others() -> list[str]:
            return [c["cmd"] for c in inspect.client_list() if c["cmd"] != "client|list"]

        await until(lambda: others() == ["xread"])  # start()'s connection is closed
        publisher.publish(tweets(1, 1))
        assert seqs(await reading) == [1]
        inspect.close()
        await publisher.close()
        await follower.close()

    asyncio.run(main())
