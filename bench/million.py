"""The million part of ``make bench`` (``--only million``): a test's relay replaying a
recording of ``--million`` lines (1,000,000) at ``speed="max"``, beside the relay as
``relay run --replay FILE --speed max`` builds it, on the same file in the same run.

Each runs in a process of its own (``python -m bench.million relay-server|relay-run
STREAM DB``), so the peak resident memory reported is that run's alone: the relay's
process (its own peak, ``VmHWM``, and of it the heap, ``RssAnon``: the peak also counts
the pages of the SQLite file the store maps), and apart its parser process.
The time is from constructing the relay to every tweet stored and published
(:meth:`RelayServer.wait_replayed`, the ``finished`` event).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.table import Row

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 30.0
TARGET_MB = 500.0


def million(folder: Path, count: int) -> list[Row]:
    from relay.sources.synth import generate

    part = folder / "million"
    part.mkdir()
    stream = part / "stream.jsonl"
    with stream.open("wb") as out:  # line by line: a million lines are about 2 GB
        for line in generate(count, 15):
            out.write(line + b"\n")
    size = stream.stat().st_size / 1e6
    server = _measure("relay-server", stream, part / "server.db", count)
    peer = _measure("relay-run", stream, part / "run.db", count)
    return [
        Row(
            "million",
            f"RelayServer(recording, speed='max'): {count:,} lines ({size:,.0f} MB) stored and "
            "published, in-process as a test runs it",
            _figure(server, count),
            f"relay run --replay --speed max (in-process, same file): {_figure(peer, count)}",
            "",
            f"target < {TARGET_SECONDS:.0f} s and < {TARGET_MB:.0f} MB; "
            f"server/run {server['seconds'] / peer['seconds']:.2f}x time",
        )
    ]


def _figure(run: dict[str, float], count: int) -> str:
    return (
        f"{run['seconds']:.1f} s ({count / run['seconds']:,.0f} tweets/s), peak RSS "
        f"{run['rss_mb']:.0f} MB (heap {run['anon_mb']:.0f} MB; the rest the store's "
        f"mapped pages), parser process {run['parser_rss_mb']:.0f} MB"
    )


def _measure(kind: str, stream: Path, db: Path, count: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.million", kind, str(stream), str(db)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed: {proc.stderr.strip()[-300:]}")
    result: dict[str, float] = json.loads(proc.stdout.splitlines()[-1])
    if result["stored"] != count:
        raise RuntimeError(f"{kind} stored {result['stored']:,.0f} of {count:,}")
    return result


def _relay_server(stream: Path, db: Path) -> int:
    from relay.testing import RelayServer

    with RelayServer(stream, speed="max", store=db) as server:
        summary = server.wait_replayed(timeout=1800)
        if server.head != summary.stored:
            raise RuntimeError(f"published {server.head} of {summary.stored}")
    return summary.stored


def _relay_run(stream: Path, db: Path) -> int:
    from relay.app.launch import tune_gc
    from relay.app.relay import Relay
    from relay.config import Settings

    async def run() -> int:
        tune_gc()  # as `relay run` does at start
        settings = {"port": 0, "replay": str(stream), "speed": "max", "loop": False}
        relay = Relay(Settings.from_mapping({**settings, "db": str(db)}))
        await relay.start()
        assert relay.ingest is not None and relay.hub is not None
        await relay.ingest.finished.wait()
        head = relay.hub.head
        await relay.stop()
        return head

    return asyncio.run(run())


class PeakAnon:
    """The highest anonymous resident memory of this process (``RssAnon``: the heap, not
    the store's memory-mapped file pages that the peak counts too), sampled."""

    def __init__(self, every: float = 0.1) -> None:
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(every,), daemon=True)
        self._thread.start()

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            self.read()

    def read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.mb = max(self.mb, int(line.split()[1]) / 1024)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self.read()
        return self.mb


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (``VmHWM``). Not
    ``ru_maxrss``: Linux carries the parent's peak into a process it starts (``exec`` keeps
    the high-water mark of the forked copy), so each run reported the whole bench's peak
    (882-889 MB in full runs, the parent having filled a million-tweet store before)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB


def main(kind: str, stream: str, db: str) -> None:
    started = time.perf_counter()
    anon = PeakAnon()
    run = _relay_server if kind == "relay-server" else _relay_run
    stored = run(Path(stream), Path(db))
    seconds = time.perf_counter() - started
    anon_mb = anon.stop()
    own = peak_rss_mb()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "seconds": seconds,
                "stored": stored,
                "rss_mb": own,
                "anon_mb": anon_mb,
                "parser_rss_mb": children,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
