"""An archive endpoint that does not answer is waited for, as the database is: at the
start of ``relay run --replay s3://...`` and ``relay restore s3://...`` (one line when
the wait starts, one when it ends; ``relay restore --wait`` bounds it) and while an
object is fetched mid-replay. moto's real S3 server is stopped, then started again on
the same port with every object kept."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.sources.archive import ArchiveSource
from relay.store.sqlite.store import SQLiteStore
from tests.s3_server import S3Server
from tests.support import ROOT, UNIT, wait_for
from tests.test_archive_restore import PER_OBJECT, TWEETS, archive, fill

pytest.importorskip("obstore")


def write_archive(s3: S3Server, tmp_path: Path) -> None:
    async def write() -> None:
        store = await SQLiteStore.open(tmp_path / "a.db")
        await fill(store)
        await archive(store, s3.url("tweets"), s3.environ)
        await store.close()

    asyncio.run(write())


def start_relay(log: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    with log.open("w") as out:  # the child keeps its own copy of the file
        return subprocess.Popen(
            [sys.executable, "-m", "relay", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **env},
            stdout=subprocess.DEVNULL,
            stderr=out,
            text=True,
        )


def head_of(db: Path) -> int:
    async def read() -> int:
        store = await SQLiteStore.open(db)
        try:
            return await store.head()
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.mark.parametrize("command", ["replay", "restore"])
def test_an_archive_endpoint_down_at_the_start_is_waited_for(
    command: str, s3_server: S3Server, tmp_path: Path
) -> None:
    write_archive(s3_server, tmp_path)
    db, log = tmp_path / "b.db", tmp_path / "relay.log"
    url = s3_server.url("tweets")
    args = (
        ["run", "--replay", url, "--speed", "max", "--exit-when-done", "--port", "0"]
        if command == "replay"
        else ["restore", url, "--wait", "5m"]
    )
    s3_server.stop()
    relay = start_relay(log, *args, "--db", str(db), env=s3_server.environ)
    try:
        wait_for(lambda: "waiting for the archive" in log.read_text(), 30 * UNIT, "the wait")
        assert relay.poll() is None, log.read_text()
        s3_server.start()
        assert relay.wait(60 * UNIT) == 0, log.read_text()[-2000:]
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
    text = log.read_text()
    assert text.count("waiting for the archive") == 1, text  # one line, not one a try
    assert "answers again" in text and "Traceback" not in text
    assert head_of(db) == TWEETS


def test_relay_restore_gives_up_after_its_wait_with_one_line(
    s3_server: S3Server, tmp_path: Path
) -> None:
    write_archive(s3_server, tmp_path)
    s3_server.stop()
    log = tmp_path / "restore.log"
    relay = start_relay(
        log, "restore", s3_server.url("tweets"), "--wait", "2s", "--db", str(tmp_path / "b.db"),
        env=s3_server.environ,
    )  # fmt: skip
    assert relay.wait(60 * UNIT) == 2, log.read_text()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert "gave up after waiting 2 s" in lines[-1], lines
    assert "Traceback" not in log.read_text()


def test_an_object_fetch_failing_mid_replay_is_retried_until_the_endpoint_answers(
    s3_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_archive(s3_server, tmp_path)
    down: list[bool] = []

    async def sleep(seconds: float) -> None:
        # The replay's pacing and its retries share this: the first pause (the first
        # object being given out, the listing done) takes the endpoint away; once the
        # wait has been logged, the next pause brings it back.
        if not down:
            s3_server.stop()
            down.append(True)
        elif down[-1] and "waiting for the archive" in caplog.text:
            s3_server.start()
            down.append(False)

    async def replay() -> list[bytes]:
        source = ArchiveSource(
            s3_server.url("tweets"), speed=1000.0, sleep=sleep, environ=s3_server.environ
        )
        return [line.data async for line in source.lines()]

    with caplog.at_level(logging.INFO, logger="relay.sources.archive"):
        bodies = asyncio.run(asyncio.wait_for(replay(), 60 * UNIT))
    assert len(bodies) == TWEETS > PER_OBJECT * 2  # the objects after the first came too
    assert caplog.text.count("waiting for the archive") == 1
    assert "answers again" in caplog.text


def test_a_relay_whose_archive_is_down_at_the_start_waits_then_archives(
    s3_server: S3Server, tmp_path: Path
) -> None:
    from relay.core.archive import decode_object, parse_key

    s3_server.stop()
    log = tmp_path / "relay.log"
    env = {
        **s3_server.environ,
        "RELAY_ARCHIVE_URL": s3_server.url("t"),
        "RELAY_ARCHIVE_OBJECT_INTERVAL": "0.2",
    }
    relay = start_relay(
        log, "run", "--port", "0", "--db", str(tmp_path / "r.db"), "--speed", "max",
        "--no-loop", "--exit-when-done", env=env,
    )  # fmt: skip
    try:
        wait_for(lambda: "waiting for the archive" in log.read_text(), 30 * UNIT, "the wait")
        assert relay.poll() is None, log.read_text()
        s3_server.start()
        assert relay.wait(60 * UNIT) == 0, log.read_text()[-2000:]
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()
    seqs = [
        t.seq
        for key in s3_server.keys("t/")
        if parse_key(key) is not None
        for t in decode_object(s3_server.get(key))
    ]
    assert seqs == list(range(1, head_of(tmp_path / "r.db") + 1)) and seqs
    assert log.read_text().count("waiting for the archive") == 1
