"""The process roles on one machine: one writer per SQLite file, ingest and serve apart.

Real subprocesses of the CLI on free ports, a real SQLite file; the multi-machine
setups (PostgreSQL, Redis) are in tests/test_scale_out.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from relay.sources.synth import write_stream
from tests.support import (
    ROOT,
    UNIT,
    RelayProcess,
    receive_tweets,
    subscribe,
    wait_for,
)


def relay_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=4 * UNIT,
    )


def test_a_second_writer_on_one_sqlite_file_refuses_and_the_first_runs_on(tmp_path, processes):
    db = tmp_path / "relay.db"
    first = RelayProcess(tmp_path / "first.log", "--db", str(db), "--speed", "50")
    processes.append(first)
    wait_for(lambda: first.count() > 0, 4 * UNIT, "the first relay to store tweets")
    for command in (["run", "--port", "0"], ["ingest"]):
        second = relay_cli(*command, "--db", str(db))
        assert second.returncode == 2, second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if str(db) in line and "already written by" in line]
        assert len(errors) == 1, second.stderr
        assert f"process {first.proc.pid}" in errors[0]
        assert "Traceback" not in second.stderr
    # The release phase beside the running writer: the schema is current, nothing to do.
    migrate = relay_cli("migrate", "--db", str(db))
    assert migrate.returncode == 0, migrate.stderr
    assert "schema version" in migrate.stdout
    before = first.count()
    wait_for(lambda: first.count() > before, 4 * UNIT, "the first relay to go on storing")
    assert first.get("/readyz")["status"] == "ready"
    assert first.stop() == 0
    log = (tmp_path / "first.log").read_text()
    assert "UNIQUE constraint" not in log and "ingest stopped" not in log


def test_ingest_and_serve_share_one_sqlite_file(tmp_path: Path, processes) -> None:
    db = tmp_path / "relay.db"
    stream = tmp_path / "stream.jsonl"
    write_stream(stream, 300, 3)
    env = {"RELAY_BUS_CHECK_INTERVAL": "0.2"}
    # serve first: it waits for the store (503 and why) until ingest has made it
    serve = RelayProcess(tmp_path / "serve.log", "--db", str(db), command="serve", env=env)
    processes.append(serve)
    assert "waiting" in str(serve_readiness(serve))
    ingest = RelayProcess(
        tmp_path / "ingest.log",
        "--db",
        str(db),
        "--replay",
        str(stream),
        "--speed",
        "100",
        "--no-loop",
        command="ingest",
        env=env,
    )
    processes.append(ingest)
    wait_for(lambda: serve_readiness(serve) == {"status": "ready"}, 4 * UNIT, "serve ready")
    epoch = serve.get("/v1/info")["epoch"]
    ws, _ = subscribe(serve.ws_url, since={"epoch": epoch, "seq": 0})
    frames = receive_tweets(ws, 300, timeout=8 * UNIT)
    seqs = [frame["seq"] for frame in frames]
    assert seqs == list(range(1, 301))
    ws.close()
    assert ingest.stop() == 0
    assert serve.stop() == 0


def serve_readiness(serve: RelayProcess) -> dict[str, object]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(serve.url + "/readyz", timeout=UNIT) as response:
            result: dict[str, object] = orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        result = orjson.loads(error.read())
    return result
