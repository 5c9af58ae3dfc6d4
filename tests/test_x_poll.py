"""Recent-search polling (``--source x-poll``) against the fake X API.

Whole relays show since_id surviving a restart, pagination and overlap; the 429 pause
is checked on :meth:`XPollSource.poll` directly, with a clock the test moves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.errors import ConfigError
from relay.obs.metrics import Metrics
from relay.sources.x_poll import XPollSource
from relay.sources.xapi import StreamRule
from relay.store.sqlite.store import SQLiteStore
from relay.testing import RelayServer
from tests.fake_x import TOKEN, FakeTime, FakeX, x_lines
from tests.support import UNIT, counted, free_port, wait_for

CATS, PYTHON = "cats OR kitten", "python"


@pytest.fixture
def messages() -> list[dict[str, Any]]:
    """Tweets in increasing id order, as search results hold them."""
    found = [orjson.loads(line) for line in x_lines(60, seed=21)]
    return sorted(found, key=lambda m: int(m["data"]["id"]))


def searches(fake: FakeX, query: str) -> list[dict[str, list[str]]]:
    return [
        params
        for _, path, params in fake.requests
        if path == "/2/tweets/search/recent" and params["query"] == [query]
    ]


def ids(messages: list[dict[str, Any]]) -> set[str]:
    return {m["data"]["id"] for m in messages}


def test_since_id_survives_a_restart_and_overlapping_results_are_stored_once(
    x_relay: Callable[..., RelayServer], fake: FakeX, messages: list[dict[str, Any]]
) -> None:
    # Tweets 10-14 match both rules; the highest of each rule matches only that rule.
    fake.search = {CATS: messages[10:30], PYTHON: [*messages[0:15], *messages[30:45]]}
    relay = x_relay("x-poll")
    wait_for(lambda: set(relay.stored_ids()) == ids(messages[:45]), 4 * UNIT, "first polls")
    assert len(relay.stored_ids()) == 45
    first = searches(fake, CATS) + searches(fake, PYTHON)
    assert all("since_id" not in params for params in first)  # an empty store: no since_id
    assert len(searches(fake, PYTHON)) == 3  # 30 results, 10 a page
    relay.stop()

    # While the relay is down, each rule gets new tweets; a restart on the same store
    # searches from the newest stored tweet of each rule and stores only the new ones.
    fake.search[CATS] += messages[45:50]
    fake.search[PYTHON] += messages[50:55]
    fake.requests.clear()
    relay = x_relay("x-poll")
    wait_for(lambda: set(relay.stored_ids()) == ids(messages[:55]), 4 * UNIT, "second polls")
    assert searches(fake, CATS)[0]["since_id"] == [messages[29]["data"]["id"]]
    assert searches(fake, PYTHON)[0]["since_id"] == [messages[44]["data"]["id"]]
    assert len(relay.stored_ids()) == 55


def test_pagination_follows_next_token_with_a_fixed_since_id_up_to_the_cap(
    x_relay: Callable[..., RelayServer], fake: FakeX, messages: list[dict[str, Any]]
) -> None:
    fake.search = {CATS: messages[:35], PYTHON: messages[35:40]}
    relay = x_relay("x-poll", poll_max_pages=2)
    newest_20 = ids(messages[15:35])
    wait_for(
        lambda: set(relay.stored_ids()) == newest_20 | ids(messages[35:40]),
        4 * UNIT,
        "the first two pages of cats and the one page of python",
    )
    cats = searches(fake, CATS)
    assert len(cats) == 2  # the cap, though a third page was offered
    assert "next_token" not in cats[0] and cats[1]["next_token"] == ["10"]
    assert cats[0].get("since_id") == cats[1].get("since_id")
    assert searches(fake, PYTHON)[0]["max_results"] == ["100"]
    assert relay.relay.metrics.poll_pages._value.get() == 3


def test_a_429_pauses_the_rule_until_the_rate_limit_resets(
    tmp_path: Path, fake: FakeX, messages: list[dict[str, Any]]
) -> None:
    fake.search = {CATS: messages[:5]}
    time = FakeTime()
    reset = int(time.now) + 900
    fake.search_statuses.append((429, {"x-rate-limit-reset": str(reset)}))
    cats = StreamRule(value=CATS, tag="cats")

    async def scenario() -> list[int]:
        store = await SQLiteStore.open(tmp_path / "poll.db")
        metrics = Metrics()
        source = XPollSource(
            token=TOKEN,
            base_url=fake.url,
            rules=[cats],
            newest_stored=store.highest_tweet_id,
            metrics=metrics,
            clock=time.clock,
        )
        try:
            pages = [await source.poll(cats)]  # answered 429
            assert source.paused_until["cats"] == reset
            assert metrics.rate_limited._value.get() == 1
            time.now = reset - 1
            pages.append(await source.poll(cats))  # still paused: no request at all
            requests_while_paused = len(fake.requests)
            time.now = reset + 1
            pages.append(await source.poll(cats))  # the limit has reset
            assert len(fake.requests) == requests_while_paused + 1
            # Nothing was committed (no ingest here, as when recording), yet the next
            # search starts after what this one found.
            pages.append(await source.poll(cats))
            assert searches(fake, CATS)[-1]["since_id"] == [messages[4]["data"]["id"]]
            return pages
        finally:
            await store.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 4 * UNIT)) == [0, 0, 1, 0]
    assert len(searches(fake, CATS)) == 3  # the 429, and two after the reset


def test_a_search_refused_for_good_stops_the_relay_once_instead_of_every_interval(
    x_relay: Callable[..., RelayServer], fake: FakeX
) -> None:
    relay = x_relay("x-poll", x_bearer_token="wrong-token")
    ingest = relay.relay.ingest
    assert ingest is not None
    wait_for(ingest.failed.is_set, 4 * UNIT, "ingest to stop")
    assert isinstance(ingest.error, ConfigError)
    assert "X_BEARER_TOKEN" in str(ingest.error) and "401" in str(ingest.error)
    assert relay.relay.failed.is_set()  # the process stops: exit 1 from the CLI


def test_transient_search_failures_are_counted_and_retried_next_interval(
    tmp_path: Path, fake: FakeX, messages: list[dict[str, Any]]
) -> None:
    fake.search = {CATS: messages[:3]}
    fake.search_statuses.append((503, {}))
    cats = StreamRule(value=CATS, tag="cats")

    async def scenario() -> list[int]:
        store = await SQLiteStore.open(tmp_path / "poll.db")
        metrics = Metrics()

        def source(base_url: str) -> XPollSource:
            return XPollSource(
                token=TOKEN,
                base_url=base_url,
                rules=[cats],
                newest_stored=store.highest_tweet_id,
                metrics=metrics,
                clock=FakeTime().clock,
            )

        try:
            pages = [await source(fake.url).poll(cats)]  # 503: retried next interval
            pages.append(await source(f"http://127.0.0.1:{free_port()}").poll(cats))  # refused
            pages.append(await source(fake.url).poll(cats))  # up again
            assert counted(metrics.poll_failures, cause="TwitterServerError") == 1
            assert counted(metrics.poll_failures, cause="ConnectionError") == 1
            return pages
        finally:
            await store.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 8 * UNIT)) == [0, 0, 1]
