"""What only the PostgreSQL store has. One active writer, with real processes: a standby
waits, takes over after kill -9 or SIGSTOP of the writer, and the old writer is fenced;
seqs never repeat. A PostgreSQL restart (clean or a crash) during writes loses nothing
and stores nothing twice. ``migrate``, URLs, waiting for the server, statement time
limits. (What both stores do is in test_store.py and test_store_queries.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from relay.core.query import parse_tweet_query
from relay.core.tweets import parse_line
from relay.errors import QueryTimeout, StoreError, WriterFenced
from relay.store.postgres.admin import migrate
from relay.store.postgres.schema import MIGRATIONS
from relay.store.postgres.store import PostgresStore
from tests.pg_server import PostgresServer
from tests.pg_writer import tweet_line
from tests.support import ROOT, UNIT, wait_for

TTL = 2.0


class Writer:
    """A ``tests.pg_writer`` process; its output lines, as they come."""

    def __init__(self, url: str, base: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.pg_writer", url, str(base), str(TTL)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, start: str) -> list[str]:
        return [line for line in list(self.lines) if line.startswith(start)]

    def stored(self) -> int:
        return len(self.said("stored "))

    def close(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
        self.process.wait(UNIT)
        self._reader.join(UNIT)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def writers() -> Iterator[list[Writer]]:
    started: list[Writer] = []
    yield started
    for writer in started:
        writer.close()


def _seqs_and_ids(url: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        return [
            (int(seq), str(tweet_id))
            for seq, tweet_id in conn.execute("SELECT seq, id FROM tweets ORDER BY seq")
        ]


def _assert_dense(rows: list[tuple[int, str]]) -> None:
    assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
    assert len({tweet_id for _, tweet_id in rows}) == len(rows)


def _start_pair(url: str, writers: list[Writer]) -> tuple[Writer, Writer]:
    first = Writer(url, 1_000_000)
    writers.append(first)
    wait_for(lambda: first.stored() >= 5, 4 * UNIT, "the first writer to store")
    second = Writer(url, 2_000_000)
    writers.append(second)
    wait_for(lambda: second.said("standing by"), 4 * UNIT, "the second to stand by")
    (line,) = second.said("standing by")
    assert f"held by {first.said('claimed ')[0].split()[1]} until " in line
    assert not second.said("claimed"), second.lines
    return first, second


def test_a_standby_takes_over_after_kill_9_and_no_seq_is_reused(
    pg_url: str, writers: list[Writer]
) -> None:
    first, second = _start_pair(pg_url, writers)
    first.process.kill()
    killed = time.monotonic()
    wait_for(lambda: second.said("claimed"), 4 * UNIT, "the standby to claim")
    assert time.monotonic() - killed < 2 * TTL + UNIT
    stored_before = second.stored()
    wait_for(lambda: second.stored() >= stored_before + 5, 4 * UNIT, "the new writer to store")
    second.close()
    rows = _seqs_and_ids(pg_url)
    _assert_dense(rows)
    assert any(tweet_id.startswith("2") for _, tweet_id in rows)


def test_a_frozen_writer_is_taken_over_and_fenced_when_it_wakes(
    pg_url: str, writers: list[Writer]
) -> None:
    first, second = _start_pair(pg_url, writers)
    os.kill(first.process.pid, signal.SIGSTOP)
    wait_for(lambda: second.said("claimed"), 6 * UNIT, "the standby to claim")
    wait_for(lambda: second.stored() >= 5, 4 * UNIT, "the new writer to store")
    os.kill(first.process.pid, signal.SIGCONT)
    assert first.process.wait(4 * UNIT) == 3
    (fenced,) = first.said("fenced: ")
    assert second.said("claimed ")[0].split()[1] in fenced
    stored_after = second.stored()
    wait_for(lambda: second.stored() >= stored_after + 3, 4 * UNIT, "the writer to go on")
    second.close()
    rows = _seqs_and_ids(pg_url)
    _assert_dense(rows)
    # What the old writer reported stored is in the store under that seq: nothing lost.
    for line in first.said("stored "):
        _, seq, tweet_id = line.split()
        assert rows[int(seq) - 1] == (int(seq), tweet_id)


def test_writes_before_claiming_and_after_being_fenced_raise(pg_url: str) -> None:
    async def run() -> None:
        old = await PostgresStore.open(pg_url, writer=True, lease_ttl=0.5, holder="old")
        with pytest.raises(StoreError, match="not the active writer"):
            await old.append(parse_line(tweet_line(1)).tweets, [], 1.0)
        await old.claim_writer()
        assert old.holder == "old"
        await old.set_state("k", "old")  # the writer now: its writes go through
        assert old._writer._renew_task is not None
        old._writer._renew_task.cancel()  # the old writer stops renewing: a freeze, in effect
        new = await PostgresStore.open(pg_url, writer=True, lease_ttl=0.5, holder="new")
        told: list[str] = []
        await asyncio.wait_for(new.claim_writer(told.append), 4 * UNIT)
        assert told and "held by old" in told[0]
        with pytest.raises(WriterFenced, match="taken over by new"):
            await old.append(parse_line(tweet_line(2)).tweets, [], 1.0)
        with pytest.raises(WriterFenced):
            await old.set_state("k", "v")
        stored = await new.append(parse_line(tweet_line(3)).tweets, [], 1.0)
        assert [t.seq for t in stored.stored] == [1]
        await old.close()
        await new.close()

    asyncio.run(run())


def test_a_holder_frozen_in_the_middle_of_a_statement_does_not_block_the_takeover(
    pg_url: str,
) -> None:
    """A writer frozen mid-COPY holds the lease row's lock in an *active* statement, which
    neither idle_in_transaction_session_timeout nor statement_timeout ends while its client
    sends nothing: the claimer ends that session once the lease has expired."""

    async def run() -> None:
        old = await PostgresStore.open(pg_url, writer=True, lease_ttl=0.5, holder="old")
        await old.claim_writer()
        await old.close()
        frozen = psycopg.connect(pg_url, autocommit=True)
        frozen.execute("CREATE TABLE frozen_rows (x text)")
        frozen.execute("BEGIN")
        frozen.execute("UPDATE writer_lease SET expires_at = now() WHERE name = 'writer'")
        copying = frozen.cursor().copy("COPY frozen_rows (x) FROM STDIN")  # kept: no exit
        copying.__enter__().write_row(["a row, then nothing"])  # the session waits for rows
        new = await PostgresStore.open(pg_url, writer=True, lease_ttl=0.5, holder="new")
        try:
            await asyncio.wait_for(new.claim_writer(), 4 * UNIT)
            stored = await new.append(parse_line(tweet_line(1)).tweets, [], 1.0)
            assert [t.seq for t in stored.stored] == [1]
        finally:
            await new.close()
            with contextlib.suppress(Exception):
                frozen.close()

    asyncio.run(run())


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_postgresql_restart_during_writes_loses_nothing_and_stores_nothing_twice(
    pg_server: PostgresServer, pg_url: str, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    async def run() -> list[int]:
        store = await PostgresStore.open(pg_url, writer=True, lease_ttl=TTL)
        await store.claim_writer()
        seqs: list[int] = []
        restart = asyncio.create_task(asyncio.to_thread(pg_server.restart, mode))
        number = 0
        while not restart.done() or number < 200:
            number += 1
            result = await store.append(parse_line(tweet_line(number)).tweets, [], 1.0)
            seqs.extend(t.seq for t in result.stored)
        await restart
        assert await store.head() == number
        await store.close()
        return seqs

    seqs = asyncio.run(run())
    rows = _seqs_and_ids(pg_url)
    _assert_dense(rows)
    assert [tweet_id for _, tweet_id in rows] == [str(n) for n in range(1, len(rows) + 1)]
    # Each tweet is reported stored at most once; one whose commit outcome was lost is
    # stored but not reported (its retry found it a duplicate): followers fill it.
    assert len(set(seqs)) == len(seqs) and set(seqs) <= {seq for seq, _ in rows}
    assert "while writing" in caplog.text


def test_migrate_is_idempotent_and_two_at_once_are_safe(pg_url: str) -> None:
    async def run() -> None:
        versions = await asyncio.gather(migrate(pg_url), migrate(pg_url), migrate(pg_url))
        assert versions == [len(MIGRATIONS)] * 3
        assert await migrate(pg_url) == len(MIGRATIONS)
        store = await PostgresStore.open(pg_url, writer=False)
        epoch = store.epoch
        await store.close()
        writer = await PostgresStore.open(pg_url, writer=True)
        assert writer.epoch == epoch
        await writer.close()

    asyncio.run(run())


def test_migrate_refuses_a_newer_schema_and_a_foreign_database(pg_url: str) -> None:
    asyncio.run(migrate(pg_url))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE meta SET value = %s WHERE key = 'schema_version'", [str(len(MIGRATIONS) + 1)]
        )
    with pytest.raises(StoreError, match="newer than this relay"):
        asyncio.run(migrate(pg_url))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        conn.execute("CREATE TABLE tweets (handle text, body text)")
    with pytest.raises(StoreError, match="not a tweet-relay database"):
        asyncio.run(migrate(pg_url))
    with pytest.raises(StoreError, match=r"^cannot open database 127\.0\.0\.1:\d+/\w+: not a"):
        asyncio.run(PostgresStore.open(pg_url, writer=True))
    with psycopg.connect(pg_url) as conn:  # nothing was written into it
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    assert tables == [("tweets",)]


def test_a_reader_on_an_empty_database_asks_for_migrate(pg_url: str) -> None:
    with pytest.raises(StoreError, match=r"no relay schema in .*run `relay migrate`"):
        asyncio.run(PostgresStore.open(pg_url, writer=False))


def test_urls_that_can_never_work_fail_at_once_without_the_password(
    pg_server: PostgresServer,
) -> None:
    with pytest.raises(StoreError, match="not a PostgreSQL URL"):
        asyncio.run(PostgresStore.open("mysql://x@127.0.0.1/db", writer=True))
    missing = pg_server.url("no_such_db", password="s3cret").replace("postgresql://", "postgres://")
    with pytest.raises(StoreError, match="does not exist") as caught:
        asyncio.run(PostgresStore.open(missing, writer=True))
    assert "s3cret" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_open_waits_for_a_server_that_is_not_up_yet(
    pg_server: PostgresServer, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pg_server.stop()
    try:
        with pytest.raises(StoreError, match="cannot reach"):
            asyncio.run(PostgresStore.open(pg_url, writer=True, wait=False))

        async def run() -> str:
            opening = asyncio.create_task(PostgresStore.open(pg_url, writer=True))
            await asyncio.to_thread(
                wait_for, lambda: "waiting for PostgreSQL" in caplog.text, 4 * UNIT, "a wait"
            )
            await asyncio.to_thread(pg_server.start)
            store = await asyncio.wait_for(opening, 4 * UNIT)
            epoch = store.epoch
            await store.close()
            return epoch

        assert asyncio.run(run())
    finally:
        if pg_server.process is None or pg_server.process.poll() is not None:
            pg_server.start()
    (line,) = {r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()}
    host = pg_url.split("@")[1]
    assert line.startswith(f"waiting for PostgreSQL at {host.split('/')[0]}/")
    assert "retrying in 1 s" in line


def test_a_statement_past_the_query_time_limit_is_stopped_by_the_server(pg_url: str) -> None:
    async def run() -> None:
        store = await PostgresStore.open(pg_url, writer=True)

        async def slow(cur: psycopg.AsyncCursor[object]) -> None:
            await cur.execute("SELECT pg_sleep(30)")

        started = time.monotonic()
        with pytest.raises(QueryTimeout, match=r"ran longer than 0\.2 s"):
            await store._query(slow, 0.2)
        assert time.monotonic() - started < UNIT  # stopped, not waited out
        # The pool's connection is fine afterwards: the next query runs.
        assert (await store.query(parse_tweet_query({}), timeout=UNIT)) == ([], 0)
        await store.close()

    asyncio.run(run())


def _index_valid(url: str, name: str = "tweets_received_at") -> bool | None:
    """Whether the index is valid; None when there is none."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid "
            "WHERE c.relname = %s",
            [name],
        ).fetchone()
    return None if row is None else bool(row[0])


def _stored(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM tweets").fetchone()
    return int(row[0]) if row else 0


def test_the_rewind_index_is_built_while_the_writer_goes_on_writing(pg_url: str) -> None:
    """The index a rewind looks up is built with CREATE INDEX CONCURRENTLY, after the
    migrations' transaction: while it waits for a write transaction to end, another
    writer's appends go through (a plain CREATE INDEX would queue them behind it)."""
    asyncio.run(migrate(pg_url))
    assert _index_valid(pg_url) is True
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP INDEX tweets_received_at")  # a store from before this index
    writing = psycopg.connect(pg_url)  # a write transaction, open: the build waits for it
    writing.execute("LOCK TABLE tweets IN ROW EXCLUSIVE MODE")
    migrated: list[int] = []
    build = threading.Thread(target=lambda: migrated.append(asyncio.run(migrate(pg_url))))
    build.start()
    try:
        wait_for(lambda: _waiting_build(pg_url), 4 * UNIT, "the index build to wait")

        async def append() -> int:
            store = await PostgresStore.open(pg_url, writer=True)
            try:
                await store.claim_writer()
                batch = [t for n in (1, 2, 3) for t in parse_line(tweet_line(n)).tweets]
                result = await asyncio.wait_for(store.append(batch, [], 100.0), UNIT)
                return len(result.stored)
            finally:
                await store.close()

        assert asyncio.run(append()) == 3  # while the build still waits
        assert _waiting_build(pg_url) and not migrated
    finally:
        writing.rollback()
        writing.close()
        build.join(4 * UNIT)
    assert migrated == [len(MIGRATIONS)]
    assert _index_valid(pg_url) is True
    assert _stored(pg_url) == 3


def _waiting_build(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%%' "
            "AND wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()
    return bool(row and row[0])


def test_an_index_a_failed_build_left_invalid_is_built_again(pg_url: str) -> None:
    asyncio.run(migrate(pg_url))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP INDEX tweets_received_at")
    # A build cut short (here by a time limit while it waits for a write transaction)
    # leaves its index behind, invalid: PostgreSQL does not drop it.
    writing = psycopg.connect(pg_url)
    writing.execute("LOCK TABLE tweets IN ROW EXCLUSIVE MODE")
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SET statement_timeout = '300ms'")
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(
                    "CREATE INDEX CONCURRENTLY tweets_received_at ON tweets (received_at, seq)"
                )
    finally:
        writing.rollback()
        writing.close()
    assert _index_valid(pg_url) is False
    assert asyncio.run(migrate(pg_url)) == len(MIGRATIONS)
    assert _index_valid(pg_url) is True
