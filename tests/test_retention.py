"""Retention: the oldest tweets go, with everything they brought, in small batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import pytest

from relay.config import SAMPLE_RETENTION, Settings
from relay.core.query import parse_tweet_query
from relay.core.tweets import parse_line
from relay.core.values import parse_duration
from relay.jobs.retention import Retention, apply_retention
from relay.testing import RelayClient, RelayServer
from tests.pg_server import StoreMaker
from tests.support import UNIT, counted, receive_tweets, stream_line, subscribe, wait_for

T0 = 1_700_000_000.0


def batch(first: int, count: int, author: str, tags: tuple[str, ...]) -> tuple[Any, Any]:
    tweets: list[Any] = []
    users: list[dict[str, Any]] = []
    for i in range(first, first + count):
        parsed = parse_line(stream_line(i, f"word{i} common", tags=tags, author=author))
        tweets.extend(parsed.tweets)
        users.extend(parsed.users)
    return tweets, users


async def fill(store: Any) -> None:
    """30 tweets: 1-10 by a1 at T0 (cats), 11-20 by a2 at T0+100, 21-30 by a2 at T0+200
    (cats and dogs)."""
    await store.append(*batch(1, 10, "a1", ("cats",)), T0)
    await store.append(*batch(11, 10, "a2", ("cats",)), T0 + 100)
    await store.append(*batch(21, 10, "a2", ("cats", "dogs")), T0 + 200)
    if hasattr(store, "search_caught_up"):
        await store.search_caught_up()  # the deleted tweets are in the index first


async def seqs(store: Any) -> list[int]:
    return [row.seq for row in await store.read_after("tweets", 0, 10**9, 1000)]


async def count(store: Any, query: str) -> int:
    parsed = parse_tweet_query(parse_qs(query, keep_blank_values=True))
    return int((await store.query(parsed))[1])


def test_the_oldest_go_in_batches_with_their_search_rules_and_lone_authors(
    make_store: StoreMaker,
) -> None:
    async def scenario() -> dict[str, Any]:
        store = await make_store()
        try:
            await fill(store)
            deleted = await apply_retention(store, Retention(max_tweets=15, batch=4), T0 + 300)
            return {
                "deleted": deleted,
                "seqs": await seqs(store),
                "searchable": await count(store, "search=common"),
                "old word": await count(store, "search=word3"),
                "cats": await count(store, "rule=cats"),
                "dogs": await count(store, "rule=dogs"),
                "a1": await store.user("a1"),
                "a2": await store.user("a2") is not None,
                "stats": await store.stats(),
            }
        finally:
            await store.close()

    found = asyncio.run(scenario())
    assert found["deleted"] == 15
    assert found["seqs"] == list(range(16, 31))
    assert (found["searchable"], found["old word"]) == (15, 0)
    assert (found["cats"], found["dogs"]) == (15, 10)
    assert found["a1"] is None and found["a2"]  # a1 has no tweet left; a2 has
    assert found["stats"].oldest_seq == 16


def test_age_keeps_what_came_within_it_and_never_the_newest_tweet(make_store: StoreMaker) -> None:
    async def scenario() -> tuple[int, list[int], int, list[int]]:
        store = await make_store()
        try:
            await fill(store)
            first = await apply_retention(store, Retention(max_age=150), T0 + 250)
            kept = await seqs(store)
            second = await apply_retention(store, Retention(max_age=1), T0 + 10_000)
            return first, kept, second, await seqs(store)
        finally:
            await store.close()

    first, kept, second, last = asyncio.run(scenario())
    assert (first, kept) == (10, list(range(11, 31)))  # received at T0 + 100: exactly 150 s old
    assert (second, last) == (19, [30])  # the newest stays: the next seq counts from it


def test_a_store_reopened_after_retention_continues_the_seq(make_store: StoreMaker) -> None:
    async def scenario() -> list[int]:
        store = await make_store()
        await fill(store)
        await apply_retention(store, Retention(max_tweets=1), T0 + 300)
        await store.close()
        store = await make_store()
        try:
            await store.append(*batch(31, 2, "a3", ("cats",)), T0 + 400)
            return await seqs(store)
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [30, 31, 32]


def test_the_bundled_sample_keeps_100k_by_default_and_live_sources_keep_all() -> None:
    assert Settings().kept_tweets == SAMPLE_RETENTION == 100_000
    assert Settings(replay="my.jsonl").kept_tweets == 0
    assert Settings(source="x-stream").kept_tweets == 0
    assert Settings(retention_max_tweets=0).kept_tweets == 0
    assert Settings(replay="my.jsonl", retention_max_tweets=500).kept_tweets == 500


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800)]
)
def test_durations_take_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-1", "7w", "", "d", "inf", "nan"])
def test_a_bad_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_the_active_writer_applies_retention_on_its_schedule(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(retention_max_tweets=50, retention_interval=0.2, retention_batch=40)
    relay.push(*(stream_line(i) for i in range(1, 201)))
    relay.wait_seq(200)
    metrics = relay.relay.metrics
    wait_for(lambda: counted(metrics.retention_deleted) == 150, 4 * UNIT, "retention")
    status, body = relay.get("/v1/objects/tweets?count=1")
    assert (status, body["count"]) == (200, 50)


def test_a_resume_from_before_the_kept_history_is_told_where_it_starts(
    pushed: RelayServer,
) -> None:
    relay = pushed
    relay.push(*(stream_line(i) for i in range(1, 101)))
    relay.wait_seq(100)
    store = relay.relay.store
    assert store is not None
    relay.call(apply_retention(store, Retention(max_tweets=50), T0))
    epoch = store.epoch

    ws, subscribed = subscribe(relay.ws_url, "tweets", since={"epoch": epoch, "seq": 10})
    with ws:
        assert subscribed["_before"] == [
            {"type": "history_start", "channel": "tweets", "epoch": epoch, "seq": 51}
        ]
        assert [t["seq"] for t in receive_tweets(ws, 50)] == list(range(51, 101))
    # Within the kept history: a plain resume, no notice.
    ws, subscribed = subscribe(relay.ws_url, "tweets", since={"epoch": epoch, "seq": 60})
    with ws:
        assert "_before" not in subscribed
        assert [t["seq"] for t in receive_tweets(ws, 40)] == list(range(61, 101))
    # The shipped test client keeps it for a user's assertions.
    with RelayClient(relay.ws_url) as client:
        client.subscribe("tweets", since=(epoch, 5))
        assert client.history_starts == {"tweets": 51}
        assert [t["seq"] for t in client.tweets(50)] == list(range(51, 101))
    assert counted(relay.relay.metrics.history_gone) == 2


def test_the_terminal_client_says_where_history_starts(
    pushed: RelayServer,
) -> None:
    from client_demo.stream import ResumingStream

    relay = pushed
    relay.push(*(stream_line(i) for i in range(1, 31)))
    relay.wait_seq(30)
    assert relay.relay.store is not None
    relay.call(apply_retention(relay.relay.store, Retention(max_tweets=10), T0))

    async def first_events() -> list[tuple[str, str, int | None]]:
        stream = ResumingStream(relay.url, ["tweets"], since=5)
        seen: list[tuple[str, str, int | None]] = []
        async for event in stream.events():
            seen.append((event.kind, event.message, event.seq))
            if event.kind == "tweet":
                return seen
        return seen

    events = asyncio.run(asyncio.wait_for(first_events(), 4 * UNIT))
    notices = [message for kind, message, _ in events if "history" in message]
    assert notices == ["history now starts at seq 21: older tweets were deleted"]
    assert events[-1][0] == "tweet" and events[-1][2] == 21
