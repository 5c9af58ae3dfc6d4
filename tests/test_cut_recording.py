"""Reading a recording: a cut ``.gz`` recording gives every whole line before the cut,
which is stored and published, then the relay stops with one line (issue 19 point 3);
lines read in lists are the lines read one at a time."""

from __future__ import annotations

import asyncio
import gzip
import os
import sqlite3
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from relay.core.rule_set import RuleSet
from relay.errors import SourceError
from relay.sources import RawLine
from relay.sources.replay import ReplaySource
from relay.sources.synth import write_stream
from relay.testing import RelayServer
from tests.support import ROOT, UNIT, subscribe, wait_for


def cut_recording(path: Path, lines: int, keep: Callable[[int], int], seed: int = 5) -> list[str]:
    """Write a gzip recording of ``lines`` synthetic tweets cut to ``keep(size)`` bytes;
    the ids of the whole lines before the cut, found by decompressing it independently."""
    whole = path.with_name("whole.jsonl.gz")
    write_stream(whole, lines, seed)
    data = whole.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    readable = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(path.read_bytes())
    complete = readable.split(b"\n")[:-1]  # the piece after the last newline is cut
    assert 0 < len(complete) < lines
    return [orjson.loads(line)["data"]["id"] for line in complete]


async def read_lines(source: ReplaySource, batched: bool) -> AsyncIterator[RawLine]:
    """The source's lines, as ``lines()`` gives them or flattened from ``batches()``."""
    if not batched:
        async for line in source.lines():
            yield line
        return
    async for group in source.batches():
        assert group, "an empty list"
        for line in group:
            yield line


@pytest.mark.parametrize("batched", [False, True], ids=["lines", "batches"])
def test_a_cut_gzip_gives_every_whole_line_before_the_cut_then_one_error(
    tmp_path: Path, batched: bool
) -> None:
    # fcb6446 lost the last lines before the cut: the large read that met the cut threw
    # away everything it had decompressed.
    path = tmp_path / "cut.jsonl.gz"
    ids = cut_recording(path, 1499, lambda size: size - 100)

    async def read() -> tuple[list[str], SourceError]:
        got: list[str] = []
        with pytest.raises(SourceError) as raised:
            async for line in read_lines(ReplaySource(path, speed=0, clock=lambda: 0.0), batched):
                got.append(orjson.loads(line.data)["data"]["id"])
        return got, raised.value

    got, error = asyncio.run(read())
    assert got == ids
    message = str(error)
    assert "\n" not in message
    assert f"past line {len(ids):,}" in message and "cut" in message and str(path) in message


def test_a_recording_read_in_lists_gives_the_lines_times_and_rules_of_one_at_a_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "stream.jsonl"
    write_stream(path, 3000, seed=3)  # about 6 MB: several reads of the file
    lines = path.read_bytes().split(b"\n")
    lines[10] = orjson.dumps({"data": {"id": "1", "text": "no recorded time"}})
    lines[20] = b""  # a keep-alive
    lines[30] = lines[30] + b"\r"  # CRLF
    path.write_bytes(b"\n".join(lines))  # and no newline after the last line

    async def read(batched: bool) -> tuple[list[tuple[bytes, float]], RuleSet, int]:
        ticks = iter(range(10**6))
        source = ReplaySource(path, speed=0, clock=lambda: float(next(ticks)))
        got = [(line.data, line.received_at) async for line in read_lines(source, batched)]
        return got, source.rule_set, source.passes

    one_at_a_time, in_lists = asyncio.run(read(False)), asyncio.run(read(True))
    assert in_lists == one_at_a_time
    got, rule_set, passes = in_lists
    assert len(got) == len([line for line in lines if line]) + 1 and passes == 1
    assert got[10] == (lines[10], 0.0)  # no recorded time: the clock's first reading
    assert rule_set.closed and rule_set.keys


def test_a_gzip_of_several_members_with_padding_reads_whole(tmp_path: Path) -> None:
    # What gzip.open reads, the replay reads too: concatenated members, zero padding.
    lines = [orjson.dumps({"n": n}) for n in range(3000)]
    body = b"\n".join(lines) + b"\n"
    path = tmp_path / "members.jsonl.gz"
    path.write_bytes(gzip.compress(body[:10_000]) + gzip.compress(body[10_000:]) + bytes(64))

    async def read() -> list[bytes]:
        return [line.data async for line in ReplaySource(path, speed=0, clock=lambda: 0.0).lines()]

    assert asyncio.run(read()) == lines


def test_a_cut_recording_is_stored_and_published_whole_before_the_relay_stops(
    tmp_path: Path,
    start_relay: Callable[..., RelayServer],
) -> None:
    # fcb6446 stored 0 of these lines: the source's error failed ingest at once and
    # the lines still queued for the store were dropped.
    path = tmp_path / "cut.jsonl.gz"
    ids = cut_recording(path, 1499, lambda size: size - 100)
    relay = start_relay(replay=path)
    wait_for(relay.relay.failed.is_set, 8 * UNIT, "the relay to fail on the cut")
    ws, subscribed = subscribe(relay.ws_url, since={"epoch": relay.relay.store.epoch, "seq": 0})
    assert subscribed["recovered"] == min(len(ids), 1000)
    status, ready = relay.get("/readyz")
    assert status == 503 and ready["status"] == "failed" and "cut" in ready["error"]
    summary = relay.relay.summary
    assert summary is not None and summary.lines == len(ids) and summary.stored == len(ids)
    assert str(summary).startswith(f"replay cut short: {len(ids)} lines")
    got: list[str] = []
    while len(got) < len(ids):
        frame = orjson.loads(ws.recv(timeout=UNIT))
        if frame["type"] == "tweet":
            got.append(frame["tweet"]["id"])
    assert got == ids
    ws.close()


def test_a_cut_gzip_run_stores_every_readable_line_says_so_and_exits_1(tmp_path: Path) -> None:
    # fcb6446 stored 2,000 of the 5,390 readable lines of this file, and said no count.
    path = tmp_path / "day.jsonl.gz"
    ids = cut_recording(path, 6000, lambda size: size * 9 // 10)
    db = tmp_path / "cut.db"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay",
            "run",
            *("--port", "0", "--db", str(db)),
            *("--replay", str(path), "--speed", "max", "--no-loop"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (why,) = [line for line in result.stderr.splitlines() if line.startswith("relay: ")]
    assert "ingest stopped" in why and f"past line {len(ids):,}" in why and "cut" in why
    (summary,) = [line for line in result.stderr.splitlines() if "replay cut short" in line]
    assert f"{len(ids)} lines, {len(ids)} stored" in summary and "before the cut" in summary
    with sqlite3.connect(db) as conn:
        stored = [row[0] for row in conn.execute("SELECT id FROM tweets ORDER BY seq")]
    assert stored == ids
