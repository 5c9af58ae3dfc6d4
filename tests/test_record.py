"""``relay record``: a live session written as received, then replayed into the same store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from relay.sources import RawLine
from relay.sources.record import stamp
from relay.sources.replay import _recorded_at
from relay.testing import RelayServer
from tests.fake_x import TOKEN, FakeX, ids_of, x_lines
from tests.support import ROOT, UNIT, counted

BROKEN = b'{"data": {"id": "17", "text": "cut off'


def script(lines: list[bytes]) -> list[tuple[Any, ...]]:
    """The stream the session sees: tweets, keep-alives, a broken line, a line in pieces."""
    split = lines[5]
    return [
        ("lines", lines[:5]),
        ("keepalive",),
        ("lines", [BROKEN]),
        ("raw", split[:40]),
        ("raw", split[40:] + b"\r\n"),
        ("keepalive",),
        ("lines", lines[6:]),
    ]


def unstamped(line: bytes) -> bytes:
    head, sep, _ = line.rpartition(b',"__relay":')
    return head + b"}" if sep else line


def comparable(tweets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored objects without the fields that say when this store received them.

    ``createdAt`` falls back to the receive time for a tweet sent without ``created_at``.
    """
    out = []
    for tweet in tweets:
        drop = {"received_at", "updatedAt"} | ({"createdAt"} if not tweet["created_at"] else set())
        out.append({k: v for k, v in tweet.items() if k not in drop})
    return out


def test_a_recording_holds_exactly_the_lines_received_and_replays_into_an_identical_store(
    tmp_path: Path,
    fake: FakeX,
    rules_file: Path,
    x_relay: Callable[..., RelayServer],
    start_relay: Callable[..., RelayServer],
) -> None:
    lines = x_lines(30, seed=13)
    fake.scripts.append(script(lines))
    out = tmp_path / "session.jsonl"
    command = ["record", str(out), "--source", "x-stream", "--max-tweets", "30"]
    result = subprocess.run(
        [sys.executable, "-m", "relay", *command, "--db", str(tmp_path / "record.db")],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "X_BEARER_TOKEN": TOKEN,
            "X_API_BASE_URL": fake.url,
            "RELAY_RULES": str(rules_file),
        },
        capture_output=True,
        text=True,
        timeout=6 * UNIT,
    )
    assert result.returncode == 0, result.stderr
    assert "30 tweets" in result.stderr
    recorded = out.read_bytes().splitlines()
    # Every payload line exactly as sent (the split one whole again), keep-alives left out.
    assert [unstamped(line) for line in recorded] == [*lines[:5], BROKEN, *lines[5:]]
    stamped = [orjson.loads(line)["__relay"]["received_at"] for line in recorded if line != BROKEN]
    assert stamped == sorted(stamped) and all(isinstance(t, float) for t in stamped)

    # The same session live, and the recording replayed: the stores match.
    fake.scripts.append(script(lines))
    live = x_relay(db=str(tmp_path / "live.db"))
    live.wait_seq(30)
    replayed = start_relay(store=tmp_path / "replayed.db", replay=out)
    replayed.wait_seq(30)
    assert comparable(replayed.all_tweets()) == comparable(live.all_tweets())
    assert len(live.all_tweets()) == 30
    assert counted(replayed.relay.metrics.malformed) == 1


def test_stamp_keeps_the_payload_bytes_and_replay_reads_the_time_back() -> None:
    line = b'{"data":{"id":"1","text":"hi \\u00e9"} ,"x":[1, 2]}'
    stamped = stamp(RawLine(line, 1700000000.25))
    assert unstamped(stamped).replace(b" ,", b",") == line.replace(b" ,", b",")
    assert stamped.startswith(line[:-1])
    assert _recorded_at(stamped) == 1700000000.25
    assert stamp(RawLine(BROKEN, 1.0)) == BROKEN  # not an object: written unchanged


def test_off_a_terminal_it_draws_no_spinner_and_ends_with_one_summary_line(
    tmp_path: Path,
) -> None:
    from relay.sources.synth import write_stream

    stream = tmp_path / "stream.jsonl"
    write_stream(stream, 20, seed=3)
    out = tmp_path / "session.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "relay", "record", str(out), "--replay", str(stream),
         "--speed", "max", "--max-tweets", "5", "--db", str(tmp_path / "record.db")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RELAY_LOG_LEVEL": "warning"},
        capture_output=True,
        text=True,
        timeout=6 * UNIT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"recorded {out}: 5 tweets in 5 lines\n"
    assert len(out.read_bytes().splitlines()) == 5


def _record(out: Path, fake: FakeX, rules_file: Path, cwd: Path, *flags: str) -> str:
    """``relay record`` of the fake X stream to ``out``, run in ``cwd``; its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "relay", "record", str(out), "--source", "x-stream", *flags],
        cwd=cwd,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "X_BEARER_TOKEN": TOKEN,
            "X_API_BASE_URL": fake.url,
            "RELAY_RULES": str(rules_file),
        },
        capture_output=True,
        text=True,
        timeout=6 * UNIT,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def test_with_db_a_recording_resumes_after_that_store_and_only_reads_it(
    tmp_path: Path, fake: FakeX, rules_file: Path, x_relay: Callable[..., RelayServer]
) -> None:
    lines = x_lines(30, seed=17)
    stored = tmp_path / "stored.db"
    # A relay writes the store meanwhile (it holds the writer's lock): read only, the
    # recorder opens it all the same.
    fake.scripts.append([("lines", lines[:20]), ("hold",)])
    writer = x_relay(store=stored)
    writer.wait_seq(20)
    fake.requests.clear()
    fake.scripts.append([("lines", lines[20:])])
    flags = ("--db", str(stored), "--max-tweets", "10")
    stderr = _record(tmp_path / "out.jsonl", fake, rules_file, tmp_path, *flags)
    assert "10 tweets" in stderr
    searches = [p for _, path, p in fake.requests if path == "/2/tweets/search/recent"]
    assert searches and searches[0]["since_id"] == [max(ids_of(lines[:20]), key=int)]
    assert len(writer.stored_ids()) == 20


def test_without_db_a_recording_opens_no_store_and_starts_from_now(
    tmp_path: Path, fake: FakeX, rules_file: Path
) -> None:
    fake.scripts.append([("lines", x_lines(5, seed=19))])
    stderr = _record(tmp_path / "out.jsonl", fake, rules_file, tmp_path, "--max-tweets", "5")
    assert "5 tweets" in stderr
    assert not (tmp_path / "relay.db").exists()  # the default store is not made
    assert not [path for _, path, _ in fake.requests if path == "/2/tweets/search/recent"]
