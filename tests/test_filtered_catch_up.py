"""A filtered resume reads only the tweets its filter passes: the store tests the filter, so
a filter that matches nothing reads nothing, however large the store.

``relay_recovered_tweets`` counts the tweets catch-ups read from the store; with the filter
in the store it equals the tweets the filter passes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from relay.core.auth import issue_token
from relay.testing import RelayServer
from tests.support import UNIT, counted, stream_line, subscribe
from tests.test_auth import SECRET

COUNT = 3000
NEEDLE = COUNT + 1


def tweet(i: int) -> bytes:
    """Langs en/ja/es in turn, seven authors (usernames user_a0..6), rule cats or dogs."""
    return stream_line(
        i,
        f"tweet {i}",
        tags=("cats" if i % 2 else "dogs",),
        lang=("en", "ja", "es")[i % 3],
        author=f"a{i % 7}",
    )


def needle(tag: str = "cats", lang: str = "en", author: str = "a1") -> bytes:
    """The one tweet with "needle" in its text, pushed live after a resume."""
    return stream_line(NEEDLE, f"tweet {NEEDLE} Needle", tags=(tag,), lang=lang, author=author)


@pytest.fixture
def relay(
    start_relay: Callable[..., RelayServer],
) -> RelayServer:
    running = start_relay(secret=SECRET, public_channels=[])
    # Windows smaller than the store, so reads cross many of them and many full pages.
    assert running.relay.hub is not None
    running.relay.hub.catch_ups.scan = 256
    running.push(*(tweet(i) for i in range(1, COUNT + 1)))
    running.wait_seq(COUNT)
    return running


def token(channels: list[str], filters: dict[str, Any]) -> dict[str, Any]:
    value = issue_token(
        SECRET, subject="s", channels=channels, ttl=600, now=time.time(), filters=filters
    )
    return {"additional_headers": {"Authorization": f"Bearer {value}"}}


def resume_until_needle(
    relay: RelayServer, channel: str, auth: dict[str, Any], live: bytes
) -> list[int]:
    """Resume ``channel`` from seq 0, push ``live`` (the needle, which passes), and return
    the seqs received up to and including it: it comes only once the catch-up is over."""
    ws, subscribed = subscribe(
        relay.ws_url, channel, since={"epoch": relay.relay.store.epoch, "seq": 0}, **auth
    )
    assert subscribed["channel"] == channel
    relay.push(live)
    seqs: list[int] = []
    deadline = time.monotonic() + 4 * UNIT
    try:
        while not seqs or seqs[-1] != NEEDLE:
            frame = orjson.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if frame["type"] == "tweet":
                assert frame["channel"] == channel
                seqs.append(frame["seq"])
    finally:
        ws.close()
    return seqs


def test_a_catch_up_whose_filter_matches_nothing_reads_nothing_and_goes_live(
    relay: RelayServer,
) -> None:
    auth = token(["tweets"], {"keyword": "needle"})
    assert resume_until_needle(relay, "tweets", auth, needle()) == [NEEDLE]
    assert counted(relay.relay.metrics.recovered) == 0  # not one row of the store read out


@pytest.mark.parametrize(
    ("channel", "filters", "live"),
    [
        # A third of the tweets: full pages of 64, each window of seqs holds matches.
        ("tweets", {"lang": "ja"}, needle(lang="ja")),
        (
            "tweets",
            {"lang": ["en", "es"], "author": ["user_a3", "@user_a5"]},
            needle(author="a3"),
        ),
        ("rule:cats", {"author": "USER_A2"}, needle(author="a2")),
        ("rule:dogs", {"keyword": "TWEET 1", "lang": "ja"}, needle("dogs", "ja")),
    ],
)
def test_a_filtered_catch_up_delivers_exactly_what_the_object_api_lists(
    relay: RelayServer, channel: str, filters: dict[str, Any], live: bytes
) -> None:
    auth = token([channel], filters)
    secret = auth["additional_headers"]["Authorization"].removeprefix("Bearer ")
    # Ids are seqs here: tweets 1..COUNT were pushed in order into an empty store.
    listed = [int(t["id"]) for t in relay.all_tweets(token=secret)]
    assert 0 < len(listed) < COUNT
    assert resume_until_needle(relay, channel, auth, live)[:-1] == listed
    assert counted(relay.relay.metrics.recovered) == len(listed)  # only matches were read


def test_a_page_read_before_a_refresh_narrowed_the_filter_is_read_again(
    relay: RelayServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first page is read under the first token's filter (en and ja) and held back
    # until a refresh has pinned ja alone: what the client gets is read under ja.
    store = relay.relay.store
    real = store.read_bodies
    held = threading.Event()
    gate: asyncio.Event = relay.call(_event())
    calls = 0

    async def held_first(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        page = await real(*args, **kwargs)
        calls += 1
        if calls == 1:
            held.set()
            await gate.wait()
        return page

    monkeypatch.setattr(store, "read_bodies", held_first)
    wide = token(["tweets"], {"lang": ["en", "ja"]})
    narrow = token(["tweets"], {"lang": "ja"})
    secret = narrow["additional_headers"]["Authorization"].removeprefix("Bearer ")
    listed = [int(t["id"]) for t in relay.all_tweets(token=secret)]
    ws, _ = subscribe(relay.ws_url, "tweets", since={"epoch": store.epoch, "seq": 0}, **wide)
    try:
        assert held.wait(2 * UNIT), "the first page was never read"
        ws.send(orjson.dumps({"op": "refresh", "token": secret, "id": 1}).decode())
        assert orjson.loads(ws.recv(timeout=UNIT))["type"] == "refreshed"
        relay.call(_set(gate))
        relay.push(needle(lang="ja"))
        seqs: list[int] = []
        deadline = time.monotonic() + 4 * UNIT
        while not seqs or seqs[-1] != NEEDLE:
            frame = orjson.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if frame["type"] == "tweet":
                seqs.append(frame["seq"])
    finally:
        ws.close()
    assert seqs[:-1] == listed  # not one en tweet of the page read under the wide filter
    assert calls > 1


async def _event() -> asyncio.Event:
    return asyncio.Event()


async def _set(event: asyncio.Event) -> None:
    event.set()
