"""Each tweet keeps its own line's receive time, whatever batch it shares: in the store
(both of them), through ingest, and in a RelayServer replay at ``speed="max"``, which
commits in batches and still stores the same bytes on every run."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.core.times import time_from_unix, times_from_unix
from relay.core.tweets import parse_line
from relay.core.user_rows import UserRows
from relay.ingest.chunk import parse_chunk
from relay.store import Received
from relay.testing import RelayClient, RelayServer, ReplayClock, tweets_of
from relay.testing.source import FIXED_START
from tests.pg_server import StoreMaker

T0 = 1_767_000_000.0


def line(number: int, name: str, *, author: str = "u1", at: float | None = None) -> bytes:
    """A stream line of tweet ``number`` by ``author`` whose included user is called
    ``name`` (so a later line changes the user), with a recorded time when ``at``."""
    payload: dict[str, Any] = {
        "data": {
            "id": str(number),
            "text": f"tweet {number}",
            "author_id": author,
            "edit_history_tweet_ids": [str(number)],
        },
        "includes": {"users": [{"id": author, "username": f"user_{author}", "name": name}]},
        "matching_rules": [{"id": "1", "tag": "cats" if number % 2 else "dogs"}],
    }
    if at is not None:
        payload["__relay"] = {"received_at": at}
    return orjson.dumps(payload)


def test_times_from_unix_writes_what_time_from_unix_writes() -> None:
    values = [T0 + n * 0.0004 for n in range(3000)] + [0.0, -0.0005, -1.5, 0.9999996, 1e300]
    values += [float("nan"), 253402300799.0, -62135596800.0, T0 + 0.9995]
    assert times_from_unix(values) == [time_from_unix(value) for value in values]


def test_an_append_stores_each_tweet_and_user_at_its_own_time_as_one_at_a_time_would(
    make_store: StoreMaker,
) -> None:
    lines = [line(1, "a"), line(2, "b", author="u2"), line(1, "dup"), line(3, "c")]
    times = [T0 + 1.25, T0 + 2.5, T0 + 3.75, T0 + 5.0]

    async def stored(name: str, one_at_a_time: bool) -> tuple[list[Any], list[Any]]:
        store = await make_store(name)
        parsed = [parse_line(data) for data in lines]
        if name == "as_parsed":  # as ingest hands it over: times and user rows built
            chunk = parse_chunk(lines, False, times)
            assert isinstance(chunk.users, UserRows)
            received = Received(
                [times[i] for i in chunk.tweet_lines],
                [times[i] for i in chunk.user_lines],
                chunk.tweet_times,
                chunk.user_times,
            )
            await store.append(chunk.tweets, chunk.users, received)
        elif one_at_a_time:
            for each, when in zip(parsed, times, strict=True):
                await store.append(each.tweets, each.users, when)
        else:
            tweets = [t for each in parsed for t in each.tweets]
            users = [u for each in parsed for u in each.users]
            result = await store.append(tweets, users, Received(times, times))
            assert [t.received for t in result.stored] == [times[0], times[1], times[3]]
            assert result.duplicates == 1
        bodies = [orjson.loads(await store.tweet(i) or b"null") for i in ("1", "2", "3")]
        users = [orjson.loads(await store.user(i) or b"null") for i in ("u1", "u2")]
        await store.close()
        return bodies, users

    async def run() -> None:
        batched = await stored("batched", one_at_a_time=False)
        assert batched == await stored("single", one_at_a_time=True)
        assert batched == await stored("as_parsed", one_at_a_time=False)
        bodies, (u1, u2) = batched
        assert [b["received_at"] for b in bodies] == times_from_unix([times[0], times[1], times[3]])
        # The tweets sent no created_at: each takes its own receive time, not the batch's.
        assert [b["createdAt"] for b in bodies] == [b["received_at"] for b in bodies]
        assert (u1["name"], u1["updatedAt"]) == ("c", time_from_unix(times[3]))
        assert (u2["name"], u2["updatedAt"]) == ("b", time_from_unix(times[1]))

    asyncio.run(run())


def test_an_append_refuses_receive_times_that_do_not_match_its_tweets(
    make_store: StoreMaker,
) -> None:
    async def run() -> None:
        store = await make_store()
        parsed = parse_line(line(1, "a"))
        try:
            with pytest.raises(ValueError, match="1 tweet and 0 user receive times"):
                await store.append(parsed.tweets, parsed.users, Received([T0], []))
            assert await store.head() == 0
        finally:
            await store.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 lines: two in three with a recorded time, every third without (the test
    clock gives it one); three authors whose user objects change from line to line; a
    repeated tweet; a malformed line."""
    lines = []
    for number in range(1, 3001):
        at = None if number % 3 == 0 else T0 + number * 0.01
        lines.append(line(number, f"name {number}", author=f"u{number % 3}", at=at))
    lines.insert(1500, lines[10])
    lines.insert(2000, b"{not json")
    path = tmp_path_factory.mktemp("batches") / "stream.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


TABLES = {
    "tweets": "seq",
    "users": "rowid",
    "rules": "rowid",
    "tweet_rules": "tag, seq",
    "source_state": "key",
}


def replayed(recording: Path, store: Path, **options: Any) -> tuple[dict[str, list[Any]], int]:
    """Every row of the store's tables after a ``max`` replay, and how many commits the
    relay made."""
    with RelayServer(recording, store=store, clock=ReplayClock(), **options) as server:
        summary = server.wait_replayed()
        assert (summary.stored, summary.duplicates, summary.malformed) == (3000, 1, 1)
        assert server.relay is not None
        commits = commit_count(server.relay.metrics.commit_seconds)
    with sqlite3.connect(store) as conn:
        rows = {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
            for table, order in TABLES.items()
        }
    return rows, commits


def commit_count(histogram: Any) -> int:
    return int(
        sum(
            sample.value
            for metric in histogram.collect()
            for sample in metric.samples
            if sample.name.endswith("_count")
        )
    )


def test_a_max_replay_commits_in_batches_and_stores_the_same_bytes_every_run(
    recording: Path, tmp_path: Path
) -> None:
    first, first_commits = replayed(recording, tmp_path / "first.db")
    second, _ = replayed(recording, tmp_path / "second.db")
    # One line a commit: the way a RelayServer replayed before, and the reference.
    single, single_commits = replayed(recording, tmp_path / "single.db", batch_size=1)
    assert first_commits < single_commits / 10  # batches, not lines
    assert first == second == single
    assert [row[0] for row in first["tweets"]] == list(range(1, 3001))

    # Each tweet has its own line's time: recorded, or the clock's reading for it.
    received = [orjson.loads(row[-1])["received_at"] for row in first["tweets"]]
    readings = iter(range(10_000))
    expected = []
    for data in recording.read_bytes().splitlines():
        payload = orjson.loads(data) if data.startswith(b'{"') else None
        recorded = payload and payload.get("__relay", {}).get("received_at")
        when = recorded or FIXED_START + next(readings) * 0.001
        if payload and payload["data"]["id"] not in {e[0] for e in expected}:
            expected.append((payload["data"]["id"], time_from_unix(when)))
    assert received == [when for _, when in expected]


def test_a_client_gets_the_same_frames_from_a_batched_replay_as_from_a_stepped_one(
    recording: Path,
) -> None:
    def frames(speed: str) -> list[dict[str, Any]]:
        with RelayServer(recording, speed=speed) as server, RelayClient(server.ws_url) as client:
            client.subscribe(since=(server.epoch, 0))
            if speed == "step":
                server.step(3002)
            client.until_seq(3000)
            return tweets_of(client.frames)

    assert frames("max") == frames("step")
