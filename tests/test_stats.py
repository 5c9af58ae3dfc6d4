"""`GET /v1/stats` and the periodic jobs that feed it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from relay.errors import StoreError
from relay.jobs.scheduler import Housekeeping
from relay.obs.metrics import Metrics
from relay.testing import RelayServer
from tests.support import (
    UNIT,
    counted,
    receive_tweets,
    stream_line,
    subscribe,
    wait_for,
    ws_connect,
)


def test_stats_report_rates_connections_subscribers_head_and_the_store(
    pushed: RelayServer,
) -> None:
    relay = pushed
    relay.push(*(stream_line(i) for i in range(1, 11)))
    relay.wait_seq(10)
    sampler = relay.relay.stats
    assert sampler is not None
    first = relay.call(sampler.sample())
    client, _ = subscribe(relay.ws_url, "tweets")
    with client:
        relay.push(*(stream_line(i) for i in range(11, 111)))
        relay.wait_seq(110)
        assert len(receive_tweets(client, 100)) == 100
        second = relay.call(sampler.sample())
        status, stats = relay.get("/v1/stats")
    assert status == 200
    assert stats == second  # the latest sample, not a new one
    window = second["time"] - first["time"]
    assert second["tweets_in_per_second"] * window == pytest.approx(100, rel=0.02)
    assert second["frames_out_per_second"] > 0
    assert (second["connections"], second["subscribers"]) == (1, {"tweets": 1})
    assert second["head_seq"] == 110
    assert second["store"]["oldest_seq"] == 1
    assert second["store"]["size_bytes"] > 0
    assert 0 <= second["store"]["oldest_age_seconds"] < 60
    assert second["process"] == relay.relay.store.holder  # type: ignore[union-attr]


def test_a_job_that_may_pass_is_counted_and_one_that_fails_for_good_stops_the_relay() -> None:
    async def scenario() -> tuple[Metrics, list[BaseException]]:
        metrics = Metrics()
        failures: list[BaseException] = []
        stopped = asyncio.Event()
        runs = {"flaky": 0}

        async def flaky() -> None:
            runs["flaky"] += 1
            raise StoreError("the database is restarting")

        async def broken() -> None:
            raise ValueError("a bug")

        def failed(exc: BaseException) -> None:
            failures.append(exc)
            stopped.set()

        jobs = Housekeeping(metrics, failed)
        jobs.every(0.05, "flaky", flaky, first=0)
        jobs.every(60, "broken", broken, first=0.2)
        jobs.start()
        try:
            await asyncio.wait_for(stopped.wait(), 4 * UNIT)
        finally:
            jobs.stop()
        assert runs["flaky"] >= 2  # retried at its next run
        return metrics, failures

    metrics, failures = asyncio.run(scenario())
    assert [type(exc) for exc in failures] == [ValueError]
    assert counted(metrics.job_failures, job="flaky") >= 2
    assert counted(metrics.job_failures, job="broken") == 1


def test_a_run_cancelled_by_the_stop_before_it_started_is_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A run the scheduler had handed to the loop when the relay stopped is cancelled before
    # its first step; APScheduler logged that as "Error running job" with a traceback.
    async def scenario() -> int:
        runs = 0

        async def job() -> None:
            nonlocal runs
            runs += 1

        jobs = Housekeeping(Metrics(), lambda exc: None)
        jobs.every(60, "upkeep", job)
        jobs.start()
        scheduled = jobs.scheduler.get_job("upkeep")
        executor = jobs.scheduler._lookup_executor("default")
        jobs.stop()  # the scheduler's shutdown runs at the loop's next step...
        executor.submit_job(scheduled, [datetime.now(UTC)])  # ...before this run's first
        for _ in range(3):
            await asyncio.sleep(0)  # the cancelled task's end and its callback
        return runs

    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(scenario()) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_the_stats_channel_is_public_and_gets_every_sample(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(public_channels=["rule:cats"], secret="s" * 32)
    sampler = relay.relay.stats
    assert sampler is not None
    relay.call(sampler.sample())
    ws, subscribed = subscribe(relay.ws_url, "$stats")  # no grant needed, like /v1/info
    with ws:
        assert subscribed["channel"] == "$stats"
        latest = orjson.loads(ws.recv(timeout=UNIT))  # the last sample at once
        assert (latest["type"], latest["channel"]) == ("stats", "$stats")
        sample = relay.call(sampler.sample())
        frame = orjson.loads(ws.recv(timeout=UNIT))
        assert frame == {**sample, "type": "stats", "channel": "$stats"}
        assert frame["subscribers"] == {"$stats": 1} and frame["connections"] == 1
        ws.send(orjson.dumps({"op": "subscribe", "channel": "tweets"}).decode())
        refused = orjson.loads(ws.recv(timeout=UNIT))
        assert (refused["type"], refused["code"]) == ("error", "unauthorized")


def test_the_stats_channel_takes_no_filters_or_since(pushed: tuple[RelayServer, Any]) -> None:
    relay = pushed
    with ws_connect(relay.ws_url) as ws:
        ws.send(orjson.dumps({"op": "subscribe", "channel": "$stats", "filters": {}}).decode())
        frame = orjson.loads(ws.recv(timeout=UNIT))
        assert (frame["type"], frame["code"]) == ("error", "bad_request")


def test_delivery_latency_is_measured_from_the_line_to_the_sockets(
    pushed: RelayServer,
) -> None:
    relay = pushed
    client, _ = subscribe(relay.ws_url, "tweets")
    with client:
        relay.push(*(stream_line(i) for i in range(1, 21)))
        assert len(receive_tweets(client, 20)) == 20
    histogram = relay.relay.metrics.registry
    wait_for(
        lambda: (histogram.get_sample_value("relay_delivery_latency_seconds_count") or 0) >= 1,
        UNIT,
        "a latency sample",
    )
    total = histogram.get_sample_value("relay_delivery_latency_seconds_sum") or 0.0
    count = histogram.get_sample_value("relay_delivery_latency_seconds_count") or 0.0
    assert 0 <= total / count < UNIT  # seconds, from the receive time the store was given


def test_the_receive_time_travels_on_the_bus_and_a_bad_one_reads_as_unknown() -> None:
    from relay.bus.entries import decode_entry, encode_tweet
    from relay.store import StoredTweet

    tweet = StoredTweet(seq=7, channels=("tweets",), body=b"{}", received=1_700_000_000.5)
    fields = encode_tweet(tweet)
    assert decode_entry(b"7-0", fields).received == 1_700_000_000.5  # type: ignore[union-attr]
    meta = orjson.loads(fields[b"meta"])
    for bad in ("soon", None, True, float("nan")):
        fields[b"meta"] = orjson.dumps({**meta, "received": bad})
        assert decode_entry(b"7-0", fields).received == 0.0  # type: ignore[union-attr]
