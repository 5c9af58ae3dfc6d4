"""``make bench``: the relay against peers on the same frames, in one table.

Every server is a subprocess on 127.0.0.1 with a fresh store; the WebSocket clients run
in two separate load-generator processes (bench/loadgen.py); server CPU comes from the
server process's own /proc counters. Parts (``--only NAME``):

- ``fanout``: a burst of tweets to many subscribers of ``tweets`` (relay serve, fed by
  relay ingest through Redis), against a python-websockets ``broadcast()`` peer and
  Node's ``ws`` sending the very same frame bytes;
- ``latency``: tweets at a steady rate to N subscribers plus one client that never
  reads; every frame checked, p50/p99 of line received -> frame at the client;
- ``ingest``: a synthetic stream at max speed into a fresh SQLite store, beside a plain
  bulk insert of the same stream (and PostgreSQL with DATABASE_URL);
- ``catchup``: one client resuming from seq 0 over a filled store;
- ``idle``: resident memory per idle subscriber;
- ``rewind``: the first tweet of a rewind to a time in a store of a million tweets,
  beside a resume from the same seq;
- ``archive``: the archive writer's tweets a second to a loopback S3 server (moto),
  beside the ingest rate of the same store;
- ``restore``: ``relay restore`` from an archive folder into a fresh store (tweets/s),
  beside a plain bulk insert of the same archived rows;
- ``million``: a test's ``RelayServer`` replaying a recording of a million lines at
  ``speed="max"`` (wall time, peak memory), beside ``relay run --replay --speed max``.

Run with ``python -m bench [--quick] [--only PART] [--idle 10000] [--subscribers 500]``.
See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import archive as bench_archive
from bench import catchup as bench_catchup
from bench import fanout, live, procs
from bench import idle as bench_idle
from bench import ingest as bench_ingest
from bench import million as bench_million
from bench import restore as bench_restore
from bench import rewind as bench_rewind
from bench.loadgen import raise_open_files
from bench.procs import Redis
from bench.table import Row

WINDOW_MS = 10.0
"""The coalescing window the latency part sets beside none (the relay's default)."""
PARTS = (
    "fanout",
    "latency",
    "ingest",
    "catchup",
    "idle",
    "rewind",
    "archive",
    "restore",
    "million",
)
console = Console(width=320)  # wide enough that no cell wraps: one row, one line


def machine() -> str:
    node = shutil.which("node")
    node_version = (
        subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if node
        else "none"
    )
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores "
        f"({cpu or platform.machine()}), "
        f"load {load:.1f} at start; Python {platform.python_version()}, websockets "
        f"{version('websockets')}, orjson {version('orjson')}, sqlite-utils "
        f"{version('sqlite-utils')}, SQLite {__import__('sqlite3').sqlite_version}; node "
        f"{node_version}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (the smoke test)")
    parser.add_argument("--only", choices=PARTS, action="append", help="run this part (repeatable)")
    parser.add_argument("--subscribers", type=int, help="fan-out subscribers (1000)")
    parser.add_argument("--burst", type=int, help="fan-out burst tweets (1000)")
    parser.add_argument("--latency-subscribers", type=int, help="latency subscribers (500)")
    parser.add_argument(
        "--window", type=float, default=WINDOW_MS, help=f"latency: coalesce_ms ({WINDOW_MS:g})"
    )
    parser.add_argument("--rate", type=float, default=250.0, help="latency tweets/s (250)")
    parser.add_argument(
        "--chunk",
        type=int,
        default=5,
        help="latency: lines recorded at one time (5)",
    )
    parser.add_argument("--tweets", type=int, help="latency run tweets (2500)")
    parser.add_argument("--ingest", type=int, help="ingest tweets (30000)")
    parser.add_argument("--catchup", type=int, help="catch-up stored tweets (100000)")
    parser.add_argument("--idle", type=int, help="idle connections (2000; 10000 for the target)")
    parser.add_argument("--rewind", type=int, help="rewind store tweets (1000000)")
    parser.add_argument("--archive", type=int, help="archived tweets (50000)")
    parser.add_argument("--restore", type=int, help="restored archive tweets (100000)")
    parser.add_argument("--million", type=int, help="RelayServer recording lines (1000000)")
    parser.add_argument("--no-node", action="store_true", help="skip the Node ws peer")
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL", ""), help="PostgreSQL store"
    )
    args = parser.parse_args()
    quick = args.quick
    subscribers = args.subscribers or (50 if quick else 1000)
    burst = args.burst or (100 if quick else 1000)
    lat_subs = args.latency_subscribers or (20 if quick else 500)
    lat_tweets = args.tweets or (100 if quick else 2500)
    ingest = args.ingest or (1000 if quick else 30_000)
    catchup = args.catchup or (2000 if quick else 100_000)
    idle = args.idle or (100 if quick else 2000)
    rewound = args.rewind or (20_000 if quick else 1_000_000)
    archived = args.archive or (5000 if quick else 50_000)
    restored = args.restore or (5_000 if quick else 100_000)
    million = args.million or (3_000 if quick else 1_000_000)
    chosen = args.only or list(PARTS)
    raise_open_files()
    if args.no_node:
        procs.NODE_ENABLED[0] = False
    started = time.perf_counter()
    header = machine()
    console.print(f"tweet-relay benchmarks: {header}", highlight=False)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        folder = Path(tmp)
        redis = Redis(folder, wanted={"fanout", "latency"} & set(chosen))
        bus = (
            f"Redis bus ({redis.url})" if redis.url else "no redis-server: store polled every 50 ms"
        )
        runs: dict[str, Callable[[], list[Row]]] = {
            "fanout": lambda: fanout.fan_out(folder, redis.url, subscribers, burst),
            "latency": lambda: live.latency(
                folder, redis.url, lat_subs, lat_tweets, args.rate, args.window, max(1, args.chunk)
            ),
            "ingest": lambda: bench_ingest.ingest(folder, ingest, args.database_url),
            "catchup": lambda: bench_catchup.catch_up(folder, catchup, args.database_url),
            "idle": lambda: bench_idle.idle(folder, idle),
            "rewind": lambda: bench_rewind.rewind(folder, rewound),
            "archive": lambda: bench_archive.archive(folder, archived),
            "restore": lambda: bench_restore.restore(folder, restored, args.database_url),
            "million": lambda: bench_million.million(folder, million),
        }
        try:
            for name in chosen:
                began = time.perf_counter()
                try:
                    rows += runs[name]()
                except Exception as exc:  # one part failing still prints the others
                    traceback.print_exc(file=sys.stderr)
                    rows.append(Row(name, "failed", f"{type(exc).__name__}: {exc}"[:150]))
                console.print(f"  {name}: {time.perf_counter() - began:.0f} s", highlight=False)
        finally:
            redis.stop()
    table = Table(
        title=f"tweet-relay vs peers, same run, same frames ({bus.split(' (')[0]})", show_lines=True
    )
    table.add_column("part")
    table.add_column("figure and conditions", no_wrap=True)  # one line: greppable
    table.add_column("relay", max_width=34)
    table.add_column("python-websockets peer", max_width=30)
    table.add_column("Node ws peer", max_width=30)
    table.add_column("target / note", max_width=34)
    for row in rows:
        table.add_row(row.part, row.figure, row.relay, row.python_peer, row.node_peer, row.note)
    console.print(table)
    console.print(
        f"machine: {header}; relay serve fed by relay ingest through the {bus}; clients in 2 "
        f"load-generator processes; server CPU = utime+stime from /proc/PID/stat. "
        f"Run took {time.perf_counter() - started:.0f} s.",
        highlight=False,
    )
    failed = any(row.figure == "failed" for row in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
