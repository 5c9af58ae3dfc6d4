"""``relay`` as a user runs it: a subprocess, signals, kill -9, the command docs."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from relay.app.cli import build_parser
from relay.sources.synth import write_stream
from tests.support import ROOT, UNIT, RelayProcess, receive_tweets, subscribe, wait_for


def run_to_exit(*args: str) -> subprocess.CompletedProcess[str]:
    """``relay run ARGS`` expected to exit on its own; its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "relay", "run", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "stream.jsonl"
    write_stream(path, 3000, seed=5)
    return path


def test_sigterm_drains_closes_clients_with_1001_and_exits_0(
    tmp_path: Path, recording: Path, processes: list[RelayProcess]
) -> None:
    relay = RelayProcess(
        tmp_path / "r.log",
        "--db",
        str(tmp_path / "r.db"),
        "--replay",
        str(recording),
        "--speed",
        "50",
    )
    processes.append(relay)
    ws, _ = subscribe(relay.ws_url, "tweets")
    last = receive_tweets(ws, 5)[-1]["seq"]
    started = time.monotonic()
    relay.proc.send_signal(signal.SIGTERM)
    from websockets.exceptions import ConnectionClosed

    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frame = orjson.loads(ws.recv(timeout=2 * UNIT))
            if frame["type"] == "tweet":
                last = frame["seq"]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert orjson.loads(closed.value.rcvd.reason) == {"reason": "shutdown", "seq": last}
    assert relay.proc.wait(10) == 0
    assert time.monotonic() - started < 10


def test_kill_9_loses_nothing_committed_and_a_restart_continues_the_seq(
    tmp_path: Path, recording: Path, processes: list[RelayProcess]
) -> None:
    db = str(tmp_path / "k.db")
    first = RelayProcess(
        tmp_path / "1.log", "--db", db, "--replay", str(recording), "--speed", "100"
    )
    processes.append(first)
    epoch = first.get("/v1/info")["epoch"]
    ws, _ = subscribe(first.ws_url, "tweets")
    seen = receive_tweets(ws, 100)  # published, so committed (persist before publish)
    first.proc.kill()
    first.proc.wait()

    second = RelayProcess(
        tmp_path / "2.log", "--db", db, "--replay", str(recording), "--speed", "max"
    )
    processes.append(second)
    assert second.get("/v1/info")["epoch"] == epoch
    wait_for(lambda: second.count() == 3000, 6 * UNIT, "the replay to complete")
    ws, _ = subscribe(second.ws_url, "tweets", since={"epoch": epoch, "seq": 0})
    frames = receive_tweets(ws, 3000)
    assert [f["seq"] for f in frames] == list(range(1, 3001))
    by_seq = {f["seq"]: f for f in frames}
    assert all(by_seq[f["seq"]] == f for f in seen), "a tweet clients saw was lost or changed"
    ids = [f["tweet"]["id"] for f in frames]
    assert len(set(ids)) == 3000
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(10) == 0


def test_a_missing_replay_file_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    result = run_to_exit(
        "--port", "0", "--db", str(tmp_path / "x.db"), "--replay", str(tmp_path / "nope.jsonl")
    )
    assert result.returncode == 2
    assert "cannot read replay file" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_flag_values_are_reported_without_a_traceback(tmp_path: Path) -> None:
    result = run_to_exit("--speed", "fast", "--db", str(tmp_path / "x.db"))
    assert result.returncode == 2
    assert "speed" in result.stderr and "Traceback" not in result.stderr


def test_every_cli_command_and_flag_is_in_the_command_docs() -> None:
    readme = (ROOT / "docs" / "cli.md").read_text()

    def check(parser: argparse.ArgumentParser, prefix: str) -> int:
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert flag in readme, f"`{prefix} {flag}` is not in docs/cli.md"
        commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        checked = 0
        for command in commands:
            for name, sub in command.choices.items():
                assert f"{prefix} {name}" in readme, f"`{prefix} {name}` is not in docs/cli.md"
                checked += 1 + check(sub, f"{prefix} {name}")
        return checked

    assert check(build_parser(), "relay") >= 7  # run synth rules (list sync) record token
    assert "relay-demo" in readme


def test_a_source_that_fails_stops_the_relay_with_exit_1_and_says_why(tmp_path: Path) -> None:
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"this is not gzip data at all")
    result = run_to_exit("--port", "0", "--db", str(tmp_path / "x.db"), "--replay", str(broken))
    assert result.returncode == 1
    assert "ingest stopped" in result.stderr and "gzip" in result.stderr.lower()
