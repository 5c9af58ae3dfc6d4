"""Both stores (SQLite and PostgreSQL, one fixture, opened as the relay opens them): each
role (Writer, Log, Catalog, Admin), seq, epoch, dedupe, group commit; the SQLite file's
migrations."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from relay.core.tweets import parse_line
from relay.errors import ConfigError, StoreError
from relay.store.postgres.schema import MIGRATIONS as POSTGRES_MIGRATIONS
from relay.store.sqlite.schema import MIGRATIONS
from relay.store.sqlite.store import SQLiteStore
from tests.pg_server import StoreMaker
from tests.support import UNIT, stream_line


def _tweets(*ids: int, tags: tuple[str, ...] = ("cats",)) -> list:  # type: ignore[type-arg]
    return [t for i in ids for t in parse_line(stream_line(i, tags=tags)).tweets]


def test_seq_increases_ids_are_stored_once_and_the_epoch_survives_a_reopen(
    make_store: StoreMaker,
) -> None:
    async def run() -> None:
        store = await make_store()
        epoch = store.epoch
        first = await store.append(_tweets(1, 2, 2, 3), [], 1.0)
        assert [t.seq for t in first.stored] == [1, 2, 3]
        assert first.duplicates == 1
        again = await store.append(_tweets(3, 4), [], 2.0)
        assert [t.seq for t in again.stored] == [4]
        await store.close()

        reopened = await make_store()
        assert reopened.epoch == epoch
        assert await reopened.head() == 4
        later = await reopened.append(_tweets(5), [], 3.0)
        assert [t.seq for t in later.stored] == [5]
        body = await reopened.tweet("5")
        assert body is not None and orjson.loads(body)["seq"] == 5
        await reopened.close()

    asyncio.run(run())


def test_concurrent_appends_are_group_committed_in_order(make_store: StoreMaker) -> None:
    async def run() -> None:
        store = await make_store()
        results = await asyncio.gather(
            *(store.append(_tweets(n * 10 + 1, n * 10 + 2), [], 1.0) for n in range(50))
        )
        seqs = [t.seq for r in results for t in r.stored]
        assert seqs == list(range(1, 101))
        assert store.commits < 50  # several appends shared a commit
        await store.close()

    asyncio.run(run())


def test_channel_reads_and_counts_follow_the_rules(make_store: StoreMaker) -> None:
    async def run() -> None:
        store = await make_store()
        await store.append(
            _tweets(1, 2, tags=("cats",)) + _tweets(3, tags=("dogs", "cats")), [], 1.0
        )
        assert [t.seq for t in await store.read_after("rule:cats", 0, 3, 10)] == [1, 2, 3]
        assert [t.seq for t in await store.read_after("rule:dogs", 0, 3, 10)] == [3]
        assert [t.seq for t in await store.read_after("tweets", 1, 2, 10)] == [2]
        assert await store.count_after("rule:cats", 1, 3) == 2
        assert await store.rule_keys() == ["cats", "dogs"]
        assert await store.highest_tweet_id() == "3"
        await store.set_state("since_id", "42")
        assert await store.get_state("since_id") == "42"
        assert await store.get_state("nothing") is None
        await store.close()

    asyncio.run(run())


def test_a_reader_opened_apart_reads_the_log_and_the_catalog_and_writes_nothing(
    make_store: StoreMaker,
) -> None:
    async def run() -> None:
        writer = await make_store()
        await writer.append(_tweets(1, 2, tags=("cats",)) + _tweets(3, tags=("dogs",)), [], 10.0)
        reader = await make_store.reader()
        try:
            # The Log: what a serving process reads.
            assert reader.epoch == writer.epoch == await reader.current_epoch()
            assert (await reader.head(), await reader.oldest_seq()) == (3, 1)
            page = await reader.read_bodies("rule:cats", 0, 3, 10, lambda rows: list(rows))
            assert [seq for seq, _ in page.built] == [1, 2]
            assert (page.count, page.last, page.complete) == (2, 2, True)
            cut = await reader.read_bodies("tweets", 0, 3, 2, len)
            assert (cut.built, cut.last, cut.complete) == (2, 2, False)
            assert await reader.count_after("tweets", 0, 3, cap=1) == 2  # stops past the cap
            assert (await reader.known_channels()).stored == {"cats", "dogs"}
            # The Catalog: the object API's and a source's reads.
            stats = await reader.stats()
            assert (stats.oldest_seq, stats.oldest_received_at) == (1, 10.0)
            assert stats.size_bytes > 0
            assert await reader.highest_tweet_id("dogs") == "3"
            body = await reader.tweet("2")
            assert body is not None and orjson.loads(body)["seq"] == 2
            # The Writer role is the writer's alone.
            with pytest.raises(StoreError):
                await reader.claim_writer()
            with pytest.raises(StoreError):
                await reader.append(_tweets(4), [], 11.0)
            assert await writer.head() == 3
        finally:
            await reader.close()
            await writer.close()

    asyncio.run(run())


def test_the_admin_side_migrates_and_gives_a_new_epoch(make_store: StoreMaker) -> None:
    migrations = MIGRATIONS if make_store.kind == "sqlite" else POSTGRES_MIGRATIONS

    async def run() -> None:
        admin = make_store.admin()
        first = await admin.migrate()
        assert (first.version, first.new_epoch) == (len(migrations), "")
        store = await make_store()
        old = store.epoch
        await store.close()
        again = await admin.migrate(new_epoch=True)
        assert again.version == len(migrations) and again.new_epoch not in ("", old)
        reopened = await make_store()
        assert reopened.epoch == again.new_epoch
        await reopened.close()

    asyncio.run(run())


def test_backups_and_checks_are_sqlite_s_postgresql_has_its_own_tools(
    make_store: StoreMaker, tmp_path: Path
) -> None:
    async def run() -> None:
        store = await make_store()
        await store.append(_tweets(1, 2), [], 1.0)
        await store.close()
        admin = make_store.admin()
        if make_store.kind == "postgres":
            with pytest.raises(ConfigError, match="pg_dump"):
                await admin.backup(tmp_path / "copy.db")
            with pytest.raises(ConfigError, match="pg_amcheck"):
                await admin.integrity_check()
            return
        copy = await admin.backup(tmp_path / "copy.db")
        assert (copy.tweets, copy.head) == (2, 2)
        assert (await admin.integrity_check(quick=True)).problems == []

    asyncio.run(run())


def test_a_database_from_a_newer_relay_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        asyncio.run(SQLiteStore.open(path))


def test_a_missing_folder_is_a_clear_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        asyncio.run(SQLiteStore.open(tmp_path / "no" / "such" / "r.db"))


async def _wal_size(path: Path, until: Callable[[int], bool], timeout: float) -> int:
    """The WAL file's size once ``until`` holds for it (0 without a file), or at the timeout."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        size = path.stat().st_size if path.exists() else 0
        if until(size) or asyncio.get_running_loop().time() > deadline:
            return size
        await asyncio.sleep(0.02)


def test_the_wal_is_truncated_once_writes_pause_and_stats_tell_it_from_the_database(
    tmp_path: Path,
) -> None:
    db = tmp_path / "r.db"
    wal = tmp_path / "r.db-wal"

    async def run() -> None:
        store = await SQLiteStore.open(db)
        try:
            for i in range(1, 201):  # a commit a tweet, as a trickle of tweets makes them
                await store.append(_tweets(i), [], float(i))
            stats = await store.stats()
            assert stats.wal_bytes > 0
            assert stats.size_bytes == db.stat().st_size + stats.wal_bytes
            # Idle now: the WAL goes back into the file, and the file to nothing.
            assert await _wal_size(wal, lambda size: size == 0, 5 * UNIT) == 0
            stats = await store.stats()
            assert stats.wal_bytes == 0 and stats.size_bytes == db.stat().st_size
            assert await store.head() == 200
        finally:
            await store.close()

    asyncio.run(run())


def test_a_steady_trickle_of_writes_still_truncates_the_wal_now_and_then(tmp_path: Path) -> None:
    wal = tmp_path / "r.db-wal"

    async def run() -> None:
        # Never idle long enough for the idle checkpoint: only the periodic one can act.
        store = await SQLiteStore.open(
            tmp_path / "r.db", idle_checkpoint=60.0, checkpoint_every=0.2
        )
        sizes: list[int] = []
        try:
            for i in range(1, 1001):
                await store.append(_tweets(i), [], float(i))
                sizes.append(wal.stat().st_size if wal.exists() else 0)
                if len(sizes) > 1 and sizes[-1] < sizes[-2]:
                    break  # truncated while writes went on
                await asyncio.sleep(0.005)
        finally:
            await store.close()
        assert len(sizes) > 1 and sizes[-1] < sizes[-2], max(sizes)

    asyncio.run(run())
