"""The SQLite store's full-text index behind the commits, its migration, and batched appends."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import sqlite_utils

from relay.core.query import Condition, TweetQuery
from relay.core.tweets import Tweet, parse_line
from relay.store.sqlite.schema import MIGRATIONS, TWEET_COLUMNS
from relay.store.sqlite.search import SEARCH_MARK
from relay.store.sqlite.store import SQLiteStore
from tests.support import UNIT, stream_line, wait_for


def _tweets(*ids: int, text: str = "hello") -> list[Tweet]:
    return [t for i in ids for t in parse_line(stream_line(i, text=text)).tweets]


def _search(word: str) -> TweetQuery:
    return TweetQuery(limit=100, conditions=(Condition("text", "search", (word,)),))


async def _found(store: SQLiteStore, word: str) -> list[int]:
    bodies, _ = await store.query(_search(word))
    return sorted(orjson.loads(body)["seq"] for body in bodies)


def test_search_catches_up_by_itself_within_the_lag_and_a_reader_finds_the_tweets(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        store = await SQLiteStore.open(tmp_path / "relay.db")
        reader = await SQLiteStore.open(tmp_path / "relay.db", writer=False)
        result = await store.append(_tweets(1, 2, text="kittens purr"), [], 1.0)
        assert [t.seq for t in result.stored] == [1, 2]
        # Nobody asks: the writer indexes once no append waits (at the latest SEARCH_LAG on).
        await asyncio.to_thread(
            wait_for, lambda: store.search_indexed >= 2, UNIT, "the index to catch up"
        )
        # A reader in another role never forces indexing: it sees what was indexed.
        assert await _found(reader, "kittens") == [1, 2]
        assert await _found(reader, "dogs") == []
        await reader.close()
        await store.close()

    asyncio.run(run())


def test_search_caught_up_gives_the_mark_and_it_survives_a_reopen(tmp_path: Path) -> None:
    async def run() -> None:
        store = await SQLiteStore.open(tmp_path / "relay.db")
        for start in range(1, 60, 10):  # several commits, all before the call
            await store.append(_tweets(*range(start, start + 10), text="otters swim"), [], 1.0)
        assert await store.search_caught_up() == 60
        assert store.search_indexed == 60
        assert len(await _found(store, "otters")) == 60
        await store.close()
        with sqlite3.connect(tmp_path / "relay.db") as conn:
            mark = conn.execute("SELECT value FROM meta WHERE key = ?", [SEARCH_MARK]).fetchone()
            indexed = conn.execute("SELECT count(*) FROM tweets_fts_docsize").fetchone()[0]
        assert mark == ("60",) and indexed == 60  # each tweet indexed once

        reopened = await SQLiteStore.open(tmp_path / "relay.db")
        assert reopened.search_indexed == 60
        await reopened.append(_tweets(61, text="otters again"), [], 2.0)
        # The writing process's own search sees its commits without waiting for the lag.
        assert await _found(reopened, "again") == [61]
        await reopened.close()

    asyncio.run(run())


def _old_store(path: Path, count: int) -> None:
    """A store as schema version 2 made it: an FTS5 trigger indexing inside each insert."""
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    for number, migration in enumerate(MIGRATIONS[:2], start=1):
        migration(db)
        conn.execute(f"PRAGMA user_version = {number:d}")
    conn.executemany(
        f"INSERT INTO tweets ({TWEET_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [
            (
                seq,
                str(seq),
                "1",
                "ann",
                f"old tweet {seq} about penguins みんな見て",
                "en",
                "2026-01-01T00:00:00.000Z",
                "2026-01-01T00:00:00.000Z",
                0,
                '["cats"]',
                orjson.dumps({"id": str(seq), "seq": seq}).decode(),
            )
            for seq in range(1, count + 1)
        ],
    )
    conn.close()


def test_a_store_of_the_old_schema_migrates_and_stays_searchable(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    _old_store(path, 5)

    async def run() -> None:
        store = await SQLiteStore.open(path)
        assert store.schema_version == len(MIGRATIONS)
        assert store.search_indexed == 5  # what the trigger indexed counts as indexed
        assert await _found(store, "penguins") == [1, 2, 3, 4, 5]
        # Schema 5 indexed it again in bigrams: a substring of the Japanese run is found.
        assert await _found(store, "見て") == [1, 2, 3, 4, 5]
        result = await store.append(_tweets(6, 7, text="penguins too"), [], 1.0)
        assert [t.seq for t in result.stored] == [6, 7]
        await store.search_caught_up()
        assert await _found(store, "penguins") == [1, 2, 3, 4, 5, 6, 7]
        # Old bodies (text) and new ones (bytes) read back alike.
        assert orjson.loads((await store.tweet("2")) or b"")["seq"] == 2
        assert orjson.loads((await store.tweet("7")) or b"")["seq"] == 7
        await store.close()

    asyncio.run(run())
    with sqlite3.connect(path) as conn:
        triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
        indexed = conn.execute("SELECT count(*) FROM tweets_fts_docsize").fetchone()[0]
    assert triggers == [] and indexed == 7  # no trigger left, nothing indexed twice


def test_a_batch_with_repeats_inside_and_against_the_store_keeps_seqs_dense(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        store = await SQLiteStore.open(tmp_path / "relay.db")
        await store.append(_tweets(1, 2), [], 1.0)
        batch = _tweets(3, 1, 4, 3) + _tweets(5, text="first five") + _tweets(5, text="later")
        result = await store.append(batch + _tweets(2), [], 2.0)
        assert [(t.seq, orjson.loads(t.body)["id"]) for t in result.stored] == [
            (3, "3"),
            (4, "4"),
            (5, "5"),
        ]
        assert result.duplicates == 4
        assert all(orjson.loads(t.body)["seq"] == t.seq for t in result.stored)
        assert orjson.loads((await store.tweet("5")) or b"")["text"] == "first five"
        # The next append goes on right after: no seq was spent on a repeat.
        assert [t.seq for t in (await store.append(_tweets(6), [], 3.0)).stored] == [6]
        assert [t.seq for t in await store.read_after("tweets", 0, 6, 10)] == [1, 2, 3, 4, 5, 6]
        await store.close()

    asyncio.run(run())


def test_a_user_repeated_in_a_batch_is_stored_as_its_last_version(tmp_path: Path) -> None:
    async def run() -> None:
        store = await SQLiteStore.open(tmp_path / "relay.db")
        users = [
            {"id": "7", "username": "old_name", "name": "Old"},
            {"id": "8", "username": "other"},
            {"id": "7", "username": "new_name", "name": "New"},
        ]
        await store.append(_tweets(1), users, 1.0)
        body = await store.user("7")
        assert body is not None and orjson.loads(body)["username"] == "new_name"
        assert await store.user("8") is not None
        await store.close()

    asyncio.run(run())
