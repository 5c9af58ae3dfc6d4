"""Both stores (SQLite and PostgreSQL, one fixture, opened as the relay opens them): each
role (Writer, Log, Catalog, Admin), seq, epoch, dedupe, group commit; the SQLite file's
migrations."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlite_utils

from relay.config import Settings
from relay.core.tweets import parse_line
from relay.errors import ConfigError, StoreError, StoreNotReady
from relay.store.open import open_store
from relay.store.postgres.schema import MIGRATIONS as POSTGRES_MIGRATIONS
from relay.store.sqlite.schema import MIGRATIONS, PAGE_SIZE
from relay.store.sqlite.search import register as register_search
from relay.store.sqlite.store import SQLiteStore
from tests.pg_server import StoreMaker
from tests.support import UNIT, stream_line, wait_for


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


def test_a_new_store_has_16_kib_pages_and_an_older_one_keeps_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def pages(path: Path) -> tuple[int, int]:
        conn = sqlite3.connect(path)
        try:
            return conn.execute("PRAGMA page_size").fetchone()[0], conn.execute(
                "SELECT count(*) FROM tweets"
            ).fetchone()[0]
        finally:
            conn.close()

    async def fill(path: Path, first: int) -> int:
        store = await SQLiteStore.open(path)
        try:
            result = await store.append(_tweets(first, first + 1), [], 1.0)
            threshold = await store._write(  # what the writer's connection runs with
                lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            )
            assert [t.seq for t in result.stored] == [first, first + 1]
            return int(threshold)
        finally:
            await store.close()

    new = tmp_path / "new.db"
    assert asyncio.run(fill(new, 1)) == 0  # no checkpoint inside a commit
    assert pages(new) == (PAGE_SIZE, 2) and PAGE_SIZE == 16384
    # A store made before (4 KiB pages) opens, takes appends and keeps its page size.
    old = tmp_path / "old.db"
    monkeypatch.setattr("relay.store.sqlite.schema.PAGE_SIZE", 4096)
    asyncio.run(fill(old, 1))
    monkeypatch.undo()
    assert asyncio.run(fill(old, 3)) == 0
    assert pages(old) == (4096, 4)


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


def test_a_steady_trickle_of_writes_keeps_the_wal_small_without_a_truncating_checkpoint(
    tmp_path: Path,
) -> None:
    """Never idle long enough for the idle checkpoint, and no truncation (it made one
    commit wait 20-60 ms): the copies alone let the log start over in its file (each
    start bumps the checkpoint sequence number in the WAL's header), so it stays small."""

    async def trickle(name: str, copy_every: float) -> tuple[int, int, int]:
        wal = tmp_path / f"{name}.db-wal"
        store = await SQLiteStore.open(
            tmp_path / f"{name}.db", idle_checkpoint=60.0, checkpoint_every=copy_every
        )
        largest, starts, sequence = 0, 0, None
        try:
            for i in range(1, 201):  # a commit a tweet, as a trickle of tweets makes them
                await store.append(_tweets(i), [], float(i))
                largest = max(largest, wal.stat().st_size)
                with wal.open("rb") as log:
                    now = int.from_bytes(log.read(16)[12:16], "big")
                starts += sequence is not None and now != sequence
                sequence = now
                await asyncio.sleep(0.005)
            truncations = store._writer._copier.truncations  # type: ignore[union-attr]
        finally:
            await store.close()
        return largest, starts, truncations

    never_copied, never_started, _ = asyncio.run(trickle("never", 1e9))
    copied, started, truncations = asyncio.run(trickle("copied", 0.05))
    assert never_started == 0 and truncations == 0
    assert started >= 3, started
    assert copied < never_copied / 2, (copied, never_copied)


# -- rewind by time: Log.seq_at --------------------------------------------------------

BATCHES = [(1, 100.0), (2, 200.0), (3, 200.0), (4, 300.25)]
"""(tweet id, receive time) of one append each: seq n is tweet n."""


async def _appended(store: Any, batches: list[tuple[int, float]]) -> None:
    for tweet_id, received in batches:
        await store.append(_tweets(tweet_id), [], received)


def test_seq_at_is_the_first_seq_received_at_or_after_a_moment(make_store: StoreMaker) -> None:
    async def run() -> None:
        store = await make_store()
        assert await store.seq_at(0.0) == 1  # empty: head + 1
        await _appended(store, BATCHES)
        reader = await make_store.reader()
        try:
            for log in (store, reader):
                assert await log.seq_at(0.0) == 1  # before the oldest kept tweet
                assert await log.seq_at(100.0) == 1
                assert await log.seq_at(100.001) == 2
                assert await log.seq_at(199.9995) == 2  # to the millisecond
                assert await log.seq_at(200.0) == 2  # two tweets received at once: the first
                assert await log.seq_at(250.0) == 4
                assert await log.seq_at(300.25) == 4
                assert await log.seq_at(300.251) == 5  # after the newest: head + 1
                assert await log.seq_at(4e9) == 5
        finally:
            await reader.close()
            await store.close()

    asyncio.run(run())


def test_seq_at_misses_no_tweet_when_receive_times_step_back(make_store: StoreMaker) -> None:
    """Seq 3 was received before seq 2 (a clock set back, a recording replayed with its
    own times): a rewind to 150 starts at seq 2, not at seq 3, the first in time order."""

    async def run() -> None:
        store = await make_store()
        await _appended(store, [(1, 100.0), (2, 300.0), (3, 200.0), (4, 400.0), (5, 150.0)])
        expected = {50.0: 1, 100.0: 1, 150.0: 2, 250.0: 2, 300.0: 2, 350.0: 4, 400.0: 4, 401.0: 6}
        assert {moment: await store.seq_at(moment) for moment in expected} == expected
        # The record the writer keeps says where times stepped back ...
        assert await _receive_order(make_store) == (5, 5)
        # ... and without it (rows written by a writer that kept none) the answers hold.
        await _receive_order(make_store, reset=True)
        assert {moment: await store.seq_at(moment) for moment in expected} == expected
        await store.append(_tweets(6), [], 500.0)  # the next commit looks at them all
        assert await _receive_order(make_store) == (6, 5)
        await store.close()

    asyncio.run(run())


async def _receive_order(make_store: StoreMaker, *, reset: bool = False) -> tuple[int, int]:
    """The writer's record: (checked, late_through); ``reset``: forget it."""
    if make_store.kind == "sqlite":
        with sqlite3.connect(make_store.url()) as conn:
            if reset:
                conn.execute(
                    "UPDATE receive_order SET checked = 0, received_max = '', late_through = 0"
                )
            row = conn.execute("SELECT checked, late_through FROM receive_order").fetchone()
        return int(row[0]), int(row[1])
    import psycopg

    async with await psycopg.AsyncConnection.connect(make_store.url(), autocommit=True) as conn:
        if reset:
            await conn.execute(
                "UPDATE receive_order SET checked = 0, received_max = NULL, late_through = 0"
            )
        cur = await conn.execute("SELECT checked, late_through FROM receive_order")
        found = await cur.fetchone()
        assert found is not None
        return int(found[0]), int(found[1])


def test_seq_at_counts_from_the_oldest_kept_tweet_after_retention(make_store: StoreMaker) -> None:
    async def run() -> None:
        store = await make_store()
        await _appended(store, BATCHES)
        trimmed = await store.trim(through_seq=2, received_before=None, limit=10)
        assert (trimmed.deleted, trimmed.oldest_seq) == (2, 3)
        assert await store.seq_at(0.0) == 3  # the history before it is gone
        assert await store.seq_at(150.0) == 3
        assert await store.seq_at(250.0) == 4
        await store.close()

    asyncio.run(run())


def test_read_after_gives_each_tweet_its_receive_time(make_store: StoreMaker) -> None:
    async def run() -> None:
        store = await make_store()
        await _appended(store, BATCHES)
        rows = await store.read_after("rule:cats", 0, 4, 10)
        assert [(t.seq, t.received) for t in rows] == [
            (1, 100.0),
            (2, 200.0),
            (3, 200.0),
            (4, 300.25),
        ]
        await store.close()

    asyncio.run(run())


def test_a_reader_of_a_store_from_before_the_rewind_migration_waits_for_it(
    tmp_path: Path,
) -> None:
    """A serving process that opens a file an older relay wrote (schema version 6, no
    record of receive order yet) hears that it is not migrated yet, and retries; the
    writer's start migrates it and keeps every tweet."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.isolation_level = None
        db = sqlite_utils.Database(conn)
        register_search(conn)
        for number, migration in enumerate(MIGRATIONS[:6], 1):
            migration(db)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute(
            "INSERT INTO tweets (seq, id, text, created_at, received_at, has_media, rules, "
            "object) VALUES (1, '1', 'old', '2026-01-01T00:00:00.000Z', "
            "'2026-01-01T00:00:00.000Z', 0, '[]', '{}')"
        )

    async def run() -> None:
        settings = Settings.from_mapping({"db": str(path)})
        with pytest.raises(StoreNotReady, match=r"version 6\) is older .* run `relay migrate`"):
            await open_store(settings, writer=False, serves=False)
        writer = await open_store(settings, writer=True)
        assert await writer.seq_at(1_767_225_600.0) == 1  # the record covers the old tweet
        await writer.close()
        reader = await open_store(settings, writer=False, serves=False)
        assert await reader.head() == 1
        await reader.close()

    asyncio.run(run())


def test_the_wal_is_copied_into_the_file_beside_the_commits(tmp_path: Path) -> None:
    """No commit copies the WAL (that made one append in a hundred take tens of ms at a
    live rate): the writer's copier thread does, while the writes go on, and the writer
    (here told never to truncate) does not."""
    path = tmp_path / "copied.db"

    async def run() -> None:
        store = await SQLiteStore.open(path, idle_checkpoint=1e9, checkpoint_every=0.2)
        try:
            await store.append(_tweets(1, 2), [], 1.0)
            empty = path.stat().st_size  # the schema's pages; the tweets are in the WAL
            for first in range(3, 400, 2):
                await store.append(_tweets(first, first + 1), [], 1.0)
            await asyncio.to_thread(
                wait_for, lambda: path.stat().st_size > empty, 10 * UNIT, "the copy"
            )
            assert Path(f"{path}-wal").exists()  # copied, not truncated: the copier's work
        finally:
            await store.close()

    asyncio.run(run())
