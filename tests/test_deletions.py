"""`relay delete`: tweets leave the store, search and every client, as X's terms ask."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest

from relay.core.deletion_ids import ids_from_lines
from relay.core.query import parse_tweet_query
from relay.core.tweets import parse_line
from relay.testing import RelayServer
from tests.pg_server import StoreMaker
from tests.support import ROOT, UNIT, counted, stream_line, subscribe, wait_for


def parsed(*lines: bytes) -> tuple[list[Any], list[dict[str, Any]]]:
    tweets: list[Any] = []
    users: list[dict[str, Any]] = []
    for line in lines:
        result = parse_line(line)
        tweets.extend(result.tweets)
        users.extend(result.users)
    return tweets, users


async def total(store: Any, query: str) -> int:
    return int((await store.query(parse_tweet_query(parse_qs(query))))[1])


async def queue(make_store: StoreMaker, ids: list[str]) -> None:
    await make_store.admin().queue_deletions(ids)


def test_a_deletion_removes_the_tweet_its_search_entry_rules_and_lone_author(
    make_store: StoreMaker,
) -> None:
    async def scenario() -> dict[str, Any]:
        store = await make_store()
        try:
            await store.append(
                *parsed(
                    stream_line(1, "keep me", tags=("cats",), author="a1"),
                    stream_line(2, "delete me", tags=("cats", "dogs"), author="a2"),
                    stream_line(3, "keep too", tags=("dogs",), author="a1"),
                ),
                1_700_000_000.0,
            )
            if hasattr(store, "search_caught_up"):
                await store.search_caught_up()
            before = await store.last_deletion()
            await queue(make_store, ["2", "999"])
            applied = await store.apply_deletions(500)
            again = await store.apply_deletions(500)  # nothing pending any more
            return {
                "before": before,
                "applied": [(d.tweet_id, d.seq, d.channels) for d in applied],
                "again": again,
                "record": await store.deletions_after(before, 10),
                "last": await store.last_deletion(),
                "tweet": await store.tweet("2"),
                "search": await total(store, "search=delete"),
                "cats": await total(store, "rule=cats"),
                "dogs": await total(store, "rule=dogs"),
                "a2": await store.user("a2"),
                "a1": await store.user("a1") is not None,
                "kept": [row.seq for row in await store.read_after("tweets", 0, 10, 10)],
            }
        finally:
            await store.close()

    found = asyncio.run(scenario())
    assert found["applied"] == [
        ("2", 2, ("tweets", "rule:cats", "rule:dogs")),
        ("999", 0, ()),  # not stored: recorded, nothing to announce
    ]
    assert found["again"] == []
    assert [d.tweet_id for d in found["record"]] == ["2", "999"]
    assert found["last"] == found["record"][-1].n
    assert found["tweet"] is None and found["search"] == 0
    assert (found["cats"], found["dogs"]) == (1, 1)
    assert found["a2"] is None and found["a1"]
    assert found["kept"] == [1, 3]


def test_relay_delete_reaches_every_subscriber_of_the_tweets_channels(
    pushed: RelayServer, tmp_path: Path
) -> None:
    relay = pushed
    relay.push(stream_line(1, tags=("cats",)), stream_line(2, tags=("cats", "dogs")))
    relay.wait_seq(2)
    cats, _ = subscribe(relay.ws_url, "rule:cats")
    dogs, _ = subscribe(relay.ws_url, "rule:dogs")
    ids = tmp_path / "compliance.jsonl"
    ids.write_text('{"id": "2", "action": "delete"}\nnot an id\n')
    result = subprocess.run(
        [sys.executable, "-m", "relay", "delete", "--from-file", str(ids)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RELAY_DB": relay.relay.settings.db},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "queued 1 deletions" in result.stderr and "1 lines skipped" in result.stderr
    with cats, dogs:
        for ws, channel in ((cats, "rule:cats"), (dogs, "rule:dogs")):
            frame = orjson.loads(ws.recv(timeout=8 * UNIT))
            assert frame == {"type": "deleted", "channel": channel, "id": "2", "seq": 2}
    assert relay.get("/v1/objects/tweets/2")[0] == 404
    assert counted(relay.relay.metrics.deleted, outcome="deleted") == 1
    wait_for(lambda: relay.get("/v1/objects/tweets?count=1")[1]["count"] == 1, UNIT, "count")


@pytest.mark.parametrize(
    ("lines", "ids", "bad"),
    [
        (["123", " 456 ", "", "# a comment", "123"], ["123", "456"], 0),
        (['{"id": "7", "action": "delete", "reason": "deleted"}'], ["7"], 0),
        (['{"data": {"delete": {"tweet": {"id": "8", "author_id": "1"}}}}'], ["8"], 0),
        (['{"data": {"user_suspend": {"user": {"id": "9"}}}}'], [], 0),  # not a tweet
        (["12a", "{not json", '{"id": 5}', "[1]", "9" * 26], [], 5),
        # 64 bits at most: 2^64-1 is an id, 2^64 and a 23-digit number are not.
        (
            [str(2**64 - 1), str(2**64), "1" * 23, '{"id": "18446744073709551616"}'],
            [str(2**64 - 1)],
            3,
        ),
        (["007", '{"id": "0042"}', "\u0661\u0662"], ["7", "42"], 1),  # as the store keeps them
    ],
)
def test_ids_are_read_from_plain_lines_and_compliance_output(
    lines: list[str], ids: list[str], bad: int
) -> None:
    found, skipped = ids_from_lines(lines)
    assert (found, len(skipped)) == (ids, bad)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "no tweet ids given"),
        (["12x"], "'12x' is not a tweet id"),
        (["1" * 23], f"'{'1' * 23}' is not a tweet id (decimal digits, at most 2^64-1)"),
        ([str(2**64)], f"'{2**64}' is not a tweet id"),
        (
            ["--from-file", "bad.txt"],
            "no tweet id in bad.txt: 2 lines skipped (not an id), first: 'nope'",
        ),
        (["--from-file", "nope.txt"], "cannot read nope.txt"),
        (["1", "--db", "nope.db"], "no database at nope.db"),
    ],
)
def test_a_bad_delete_is_one_line_and_exit_2(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "bad.txt").write_text("nope\n# a comment\n\n99999999999999999999999\n")
    result = subprocess.run(
        [sys.executable, "-m", "relay", "delete", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1
