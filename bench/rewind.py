"""The rewind part of ``make bench``: how soon the first tweet of a rewind to a time comes,
in a store of a million tweets, beside a plain resume from the same seq.

The store is filled fast (``executemany``, the rows of :mod:`bench.migration`), its
tweets received 10 ms apart up to the moment it is filled, so ``-15m`` and ``-1h`` mean
what they say; ``relay serve`` reads it. Each trial is a new connection: the time from
the subscribe sent to the first tweet frame received, for a rewind (``since: {"time"}``)
and for a resume (``since: {"epoch", "seq"}``) from the seq before that first tweet.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import connect

from bench.migration import INSERT_SQLITE, SPACING, sqlite_rows
from bench.procs import info, relay_serve
from bench.table import Row
from relay.core.times import time_from_unix
from relay.store.sqlite.receive_order import record as record_receive_order
from relay.store.sqlite.schema import migrate

TRIALS = 5
TARGET_MS = 100.0


def fill(path: Path, count: int) -> float:
    """A store of the relay's schema holding ``count`` tweets received 10 ms apart, the
    last one now; seconds it took (the receive order recorded as a writer does)."""
    started = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        first = time.time() - (count - 1) * SPACING
        conn.executemany(INSERT_SQLITE, sqlite_rows(count, first))
        record_receive_order(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return time.perf_counter() - started


def first_tweet(port: int, subscribe: dict[str, Any]) -> tuple[float, int]:
    """Seconds from the subscribe sent to the first tweet frame received, and its seq."""
    # max_queue=None: the client keeps reading what the catch-up sends until the close
    # frame comes (with a bounded queue it stops reading, and its close waits 10 s).
    with connect(f"ws://127.0.0.1:{port}/v1/stream", max_size=None, max_queue=None) as ws:
        data = orjson.dumps(subscribe)
        started = time.perf_counter()
        ws.send(data.decode())
        while True:
            frame = orjson.loads(ws.recv(timeout=30))
            if frame.get("type") == "tweet":
                return time.perf_counter() - started, int(frame["seq"])
            if frame.get("type") == "error":
                raise RuntimeError(f"the relay refused {subscribe}: {frame}")


def _ms(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1000:.1f} ms (max {max(seconds) * 1000:.1f})"


def rewind(folder: Path, count: int) -> list[Row]:
    """6 part: rewinds to three moments of a store of ``count`` tweets, and resumes."""
    part = folder / "rewind"
    part.mkdir()
    db = part / "rewind.db"
    filled = fill(db, count)
    middle = time_from_unix(time.time() - count * SPACING / 2)
    moments = {"-15m": "-15m", "-1h": "-1h", "the middle": middle}
    serve = relay_serve(part, db, "")
    rewinds: dict[str, list[float]] = {}
    resumes: dict[str, list[float]] = {}
    try:
        epoch = info(serve.port).get("epoch")
        for name, moment in moments.items():
            since: dict[str, Any] = {"time": moment}
            for _ in range(TRIALS):
                took, seq = first_tweet(
                    serve.port, {"op": "subscribe", "channel": "tweets", "since": since}
                )
                rewinds.setdefault(name, []).append(took)
                position = {"epoch": epoch, "seq": seq - 1}
                took, got = first_tweet(
                    serve.port, {"op": "subscribe", "channel": "tweets", "since": position}
                )
                if got != seq:
                    raise RuntimeError(f"the resume from {seq - 1} began at {got}")
                resumes.setdefault(name, []).append(took)
    finally:
        serve.stop()
    worst = max(statistics.median(times) for times in rewinds.values()) * 1000
    where = f"store of {count:,} tweets received 10 ms apart (SQLite, filled in {filled:.0f} s)"
    return [
        Row(
            "rewind",
            f"rewind to a time in a {where}: subscribe sent -> first tweet frame, median of "
            f"{TRIALS} (max)",
            "; ".join(f"{name}: {_ms(times)}" for name, times in rewinds.items()),
            "",
            "",
            f"target <= {TARGET_MS:.0f} ms: {'met' if worst <= TARGET_MS else 'MISSED'}",
        ),
        Row(
            "rewind",
            "the peer figure: a plain resume (since epoch + seq) from the same seqs, same run",
            "; ".join(f"{name}: {_ms(times)}" for name, times in resumes.items()),
            "",
            "",
            "the time lookup's own cost is the difference",
        ),
    ]
