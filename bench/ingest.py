"""The ingest part of ``make bench``, and filling a store for the catch-up part.

The relay's figure is the embedded relay in this process (bench/stores.py); beside it
the plain bulk insert reference on the same stream file.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from bench.table import Row
from relay.sources.synth import write_stream


def ingest(folder: Path, count: int, database_url: str) -> list[Row]:
    """3 part: a synthetic stream at max speed into a fresh store, and the plain reference."""
    import asyncio

    from bench.stores import ingest as relay_ingest_in_process
    from bench.stores import ingest_and_search
    from relay.config import Settings

    part = folder / "ingest"
    part.mkdir()
    stream = part / "stream.jsonl"
    write_stream(stream, count, seed=13)
    base = {"port": 0, "replay": str(stream), "speed": "max", "loop": False}
    sqlite = Settings.from_mapping({**base, "db": str(part / "relay.db")})
    rate, commit, search_lag = asyncio.run(ingest_and_search(sqlite, count))
    plain = plain_insert(stream, part / "plain.db")
    postgres = "skipped: set DATABASE_URL (a fresh database)"
    if database_url:
        try:
            settings = Settings.from_mapping({**base, "database_url": database_url})
            pg_rate, pg_commit = asyncio.run(relay_ingest_in_process(settings, count))
            postgres = f"PostgreSQL: {pg_rate:,.0f} tweets/s, mean commit {pg_commit:.1f} ms"
        except Exception as exc:  # a reused database stores only duplicates: say so
            postgres = f"PostgreSQL failed: {type(exc).__name__}: {exc}"[:100]
    return [
        Row(
            "ingest",
            f"relay synth, {count:,} tweets at max speed into a fresh SQLite "
            "store, first to last committed and published (in-process relay)",
            f"{rate:,.0f} tweets/s (mean commit {commit:.1f} ms; search caught up "
            f"{search_lag or 0:.2f} s after the last commit)",
            f"plain bulk insert: {plain:,.0f} tweets/s",
            "",
            f"target >= 50,000 tweets/s, search <= 1 s behind; relay/plain {rate / plain:.2f}x",
        ),
        Row("ingest", "PostgreSQL store, same stream (DATABASE_URL)", postgres),
    ]


def plain_insert(stream: Path, db: Path) -> float:
    """The reference: orjson, sqlite-utils insert_all of id, text, object into a WAL table
    with an FTS5 index on text, batches of 500; tweets a second."""
    import sqlite_utils

    started = time.perf_counter()
    database = sqlite_utils.Database(db)
    database.enable_wal()
    table = database["tweets"]
    table.create({"id": str, "text": str, "object": str}, pk="id")  # type: ignore[union-attr]
    table.enable_fts(["text"], fts_version="FTS5", create_triggers=True)  # type: ignore[union-attr]
    rows = []
    with stream.open("rb") as handle:
        for line in handle:
            data = orjson.loads(line).get("data")
            if isinstance(data, dict):
                rows.append(
                    {
                        "id": data["id"],
                        "text": data.get("text", ""),
                        "object": orjson.dumps(data).decode(),
                    }
                )
    table.insert_all(rows, batch_size=500)  # type: ignore[union-attr]
    database.conn.close()
    return len(rows) / (time.perf_counter() - started)


def fill(folder: Path, count: int) -> Path:
    """A store holding ``count`` synthetic tweets (the embedded relay at max speed)."""
    import asyncio

    from bench.stores import ingest as relay_ingest_in_process
    from relay.config import Settings

    stream, db = folder / "fill.jsonl", folder / "filled.db"
    write_stream(stream, count, seed=14)
    settings = Settings.from_mapping(
        {"port": 0, "replay": str(stream), "speed": "max", "loop": False, "db": str(db)}
    )
    asyncio.run(relay_ingest_in_process(settings, count))
    return db
