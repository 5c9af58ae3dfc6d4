"""`relay backup` and `relay migrate --new-epoch`: copies a running store, restores safely."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from relay.store.sqlite.store import SQLiteStore
from relay.testing import RelayServer
from tests.support import ROOT, UNIT, stream_line


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RELAY_DB")}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def open_store(path: Path) -> tuple[str, int, list[int]]:
    async def read() -> tuple[str, int, list[int]]:
        store = await SQLiteStore.open(path)
        try:
            rows = await store.read_after("tweets", 0, 10**9, 10**6)
            return store.epoch, await store.head(), [row.seq for row in rows]
        finally:
            await store.close()

    return asyncio.run(read())


def test_a_backup_while_the_relay_writes_is_consistent_and_has_a_new_epoch(
    tmp_path: Path,
    pushed: RelayServer,
) -> None:
    relay = pushed
    relay.push(*(stream_line(i, f"before the backup {i}") for i in range(1, 301)))
    relay.wait_seq(300)
    # Writes go on during the copy; the copy is one commit's snapshot, whatever it is.
    relay.push(*(stream_line(i, f"during {i}") for i in range(301, 2001)))
    result = cli("backup", str(tmp_path / "copy.db"), "--db", relay.relay.settings.db, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    relay.wait_seq(2000)
    relay.stop()

    epoch, head, seqs = open_store(tmp_path / "copy.db")
    assert 300 <= head <= 2000
    assert seqs == list(range(1, head + 1))  # dense: no commit split by the copy
    assert epoch != relay.relay.store.epoch  # restored, it makes clients reset
    assert f"{head} tweets up to seq {head}" in result.stderr and epoch in result.stderr
    assert not (tmp_path / "copy.db.part").exists()


def test_a_backup_of_no_store_or_onto_itself_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = cli("backup", "out.db", "--db", "nope.db", cwd=tmp_path)
    assert missing.returncode == 2 and "no database at nope.db" in missing.stderr
    sqlite3.connect(tmp_path / "plain.db").execute("CREATE TABLE x (y)").connection.close()
    foreign = cli("backup", "out.db", "--db", "plain.db", cwd=tmp_path)
    assert foreign.returncode == 2 and "not a tweet-relay database" in foreign.stderr
    assert "Traceback" not in missing.stderr + foreign.stderr
    assert not (tmp_path / "out.db").exists()


def test_migrate_new_epoch_renames_a_restored_store_and_refuses_beside_a_writer(
    tmp_path: Path,
    start_relay: Callable[..., RelayServer],
) -> None:
    db = tmp_path / "relay.db"
    relay = start_relay(store=db)
    busy = cli("migrate", "--new-epoch", "--db", str(db), cwd=tmp_path)
    assert busy.returncode == 2 and "Traceback" not in busy.stderr
    assert relay.relay.store is not None
    before = relay.relay.store.epoch
    relay.stop()

    done = cli("migrate", "--new-epoch", "--db", str(db), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    epoch, _, _ = open_store(db)
    assert epoch != before and f"new epoch {epoch}" in done.stdout


def test_postgres_new_epoch(pg_url: str) -> None:
    from relay.store.postgres.admin import migrate, set_new_epoch

    async def scenario() -> tuple[str, str]:
        await migrate(pg_url)
        first = await set_new_epoch(pg_url)
        return first, await set_new_epoch(pg_url)

    first, second = asyncio.run(asyncio.wait_for(scenario(), 8 * UNIT))
    assert first != second and len(first) == 16
