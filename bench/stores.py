"""Ingest into each store on the same work: ``python -m bench.stores --database-url URL``.

A synthetic stream replayed at full speed through the embedded relay (parse, store,
publish through the bus) into a fresh SQLite file and into a fresh PostgreSQL database,
one after the other in the same run, so the two figures compare on one machine. The
PostgreSQL database must be empty or a relay's (the run adds the same tweet ids: a
second run stores only duplicates, so give a fresh database each time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from relay.app.launch import tune_gc
from relay.app.relay import Relay
from relay.config import Settings
from relay.sources.synth import write_stream
from relay.store.sqlite.store import SQLiteStore

console = Console()


async def ingest(settings: Settings, count: int) -> tuple[float, float]:
    """Tweets a second from start to the last one published; mean commit time in ms."""
    rate, commit, _ = await ingest_and_search(settings, count)
    return rate, commit


async def ingest_and_search(settings: Settings, count: int) -> tuple[float, float, float | None]:
    """:func:`ingest`, and the seconds from the last tweet published until full-text
    search holds it too (SQLite's writer indexes behind the commits; None elsewhere)."""
    tune_gc()  # what `relay run` does at start
    relay = Relay(settings)
    started = time.perf_counter()
    await relay.start()
    assert relay.ingest is not None
    await relay.ingest.finished.wait()
    elapsed = time.perf_counter() - started
    search_lag = await _search_lag(relay)
    stored = relay.metrics.stored._value.get()
    histogram = relay.metrics.commit_seconds.collect()[0].samples
    commits = next(s.value for s in histogram if s.name.endswith("_count"))
    total = next(s.value for s in histogram if s.name.endswith("_sum"))
    await relay.stop()
    assert stored == count, f"stored {stored} of {count}"
    return count / elapsed, 1000 * total / max(commits, 1), search_lag


async def _search_lag(relay: Relay, timeout: float = 10.0) -> float | None:
    """Seconds until the store's full-text index holds every committed tweet, watched
    from here (not asked for: a search in the writing process would index at once)."""
    store = relay.store
    if not isinstance(store, SQLiteStore):
        return None
    head = await store.head()
    started = time.perf_counter()
    while store.search_indexed < head:
        if time.perf_counter() - started > timeout:
            return float("inf")
        await asyncio.sleep(0.005)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=30_000)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    args = parser.parse_args()
    table = Table("store", "tweets/s", "mean commit (ms)")
    with tempfile.TemporaryDirectory() as folder:
        stream = Path(folder) / "stream.jsonl"
        write_stream(stream, args.tweets, seed=1)
        base = {"port": 0, "replay": str(stream), "speed": "max", "loop": False}
        sqlite = Settings.from_mapping({**base, "db": str(Path(folder) / "bench.db")})
        rate, commit = asyncio.run(ingest(sqlite, args.tweets))
        table.add_row("SQLite", f"{rate:,.0f}", f"{commit:.1f}")
        if args.database_url:
            postgres = Settings.from_mapping({**base, "database_url": args.database_url})
            rate, commit = asyncio.run(ingest(postgres, args.tweets))
            table.add_row("PostgreSQL", f"{rate:,.0f}", f"{commit:.1f}")
        else:
            table.add_row("PostgreSQL", "skipped: pass --database-url", "")
    console.print(f"ingest of {args.tweets:,} synthetic tweets at full speed, same run")
    console.print(table)


if __name__ == "__main__":
    main()
