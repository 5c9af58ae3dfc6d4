"""The archive with real relay processes: kill -9 during uploads, the S3 server down for a
while, and bad settings refused before anything runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from relay.core.archive import decode_object, parse_key
from tests.s3_server import S3Server
from tests.support import ROOT, UNIT, RelayProcess, wait_for

SAMPLE = 3000  # tweets in the bundled sample


def archived_seqs(s3: S3Server, prefix: str = "t") -> list[list[int]]:
    """The seqs of each object under ``prefix``, in listing order."""
    found = []
    for key in s3.keys(prefix + "/"):
        if parse_key(key) is not None:
            found.append([t.seq for t in decode_object(s3.get(key))])
    return found


def archive_env(s3: S3Server, **more: str) -> dict[str, str]:
    return {**s3.environ, "RELAY_ARCHIVE_URL": s3.url("t"), **more}


def test_kill_9_during_uploads_then_a_restart_archives_every_tweet_once(
    tmp_path: Path, s3_server: S3Server
) -> None:
    db = tmp_path / "relay.db"
    env = archive_env(
        s3_server, RELAY_ARCHIVE_OBJECT_TWEETS="100", RELAY_ARCHIVE_OBJECT_INTERVAL="0.2"
    )
    first = RelayProcess(
        tmp_path / "first.log", "--db", str(db), "--speed", "20", "--no-loop", env=env
    )
    try:
        wait_for(lambda: len(archived_seqs(s3_server)) >= 3, 20 * UNIT, "three objects")
    finally:
        first.proc.kill()  # SIGKILL: no drain, no last upload
        first.close()
    second = RelayProcess(
        tmp_path / "second.log", "--db", str(db), "--speed", "max", "--no-loop",
        "--exit-when-done", env=env,
    )  # fmt: skip
    assert second.proc.wait(30 * UNIT) == 0, second.log_path.read_text()[-2000:]
    second.close()
    objects = archived_seqs(s3_server)
    every = [seq for seqs in objects for seq in seqs]
    assert every == list(range(1, SAMPLE + 1))  # each committed tweet once, in order


def test_the_archive_catches_up_after_the_s3_server_was_down(
    tmp_path: Path, s3_server: S3Server
) -> None:
    db = tmp_path / "relay.db"
    env = archive_env(s3_server, RELAY_ARCHIVE_OBJECT_INTERVAL="0.2")
    relay = RelayProcess(tmp_path / "relay.log", "--db", str(db), "--speed", "10", env=env)
    try:
        wait_for(lambda: len(archived_seqs(s3_server)) >= 1, 20 * UNIT, "an object")
        s3_server.stop()
        ingested = relay.count()
        wait_for(lambda: relay.count() >= ingested + 50, 20 * UNIT, "ingest")  # it goes on
        wait_for(
            lambda: "waiting for the archive" in relay.log_path.read_text(), 10 * UNIT, "a warning"
        )
        s3_server.start()
        target = relay.count()
        wait_for(
            lambda: sum(len(s) for s in archived_seqs(s3_server)) >= target, 30 * UNIT, "catch-up"
        )
        # Every serving process reads the archive's range and lag from the store.
        wait_for(lambda: relay.get("/v1/info").get("archive") is not None, 20 * UNIT, "info")
        info = relay.get("/v1/info")
        archive: Any = info["archive"]
        assert archive["first_seq"] == 1 and archive["last_seq"] >= 1
        assert s3_server.bucket not in str(info)
        assert "lag_tweets" in relay.get("/v1/stats")["archive"]  # type: ignore[operator]
        assert relay.stop() == 0
    finally:
        relay.close()
    every = [seq for seqs in archived_seqs(s3_server) for seq in seqs]
    assert every == list(range(1, len(every) + 1))
    assert "answers again" in relay.log_path.read_text()


def refused(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "relay", "run", "--port", "0", "--db", str(tmp_path / "r.db")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )


def test_a_bad_url_or_a_missing_bucket_is_one_line_and_exit_2(
    tmp_path: Path, s3_server: S3Server
) -> None:
    bad = refused(tmp_path, {"RELAY_ARCHIVE_URL": "https://bucket/x"})
    assert bad.returncode == 2 and "unknown scheme" in bad.stderr
    missing = refused(tmp_path, {**s3_server.environ, "RELAY_ARCHIVE_URL": "s3://nope-nope/x"})
    assert missing.returncode == 2 and "no such bucket" in missing.stderr, missing.stderr
    for result in (bad, missing):
        assert "Traceback" not in result.stderr
