"""How long the release phase's migrations take on a big store, for both stores.

Builds a store of N synthetic tweets (default 1,000,000) at the schema version before
the last index migrations, then times the migration that adds an index
(``tweets_author_id``) and the one that (re)builds full-text search: on PostgreSQL
migration 3, the GIN index on ``to_tsvector('simple', text)``; on SQLite an FTS5
``rebuild`` (what a migration changing the tokenizer runs). Then, the store brought up
to the version before it, the rewind's migration (the record of receive order and the
index on ``received_at``; on PostgreSQL the index alone too, built online), and the
look-up of the first seq received at a moment in the middle of the store, with the
record and without it (the scan of the index from the moment on). Rows are made fast:
``generate_series`` on PostgreSQL, ``executemany`` on SQLite.

Run with ``python -m bench.migration [--tweets N] [--url postgresql://...] [--only pg]``;
without ``--url`` (or ``DATABASE_URL``) a throwaway PostgreSQL server is started in a
temporary folder (Debian's binaries), as the tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import sqlite_utils

from relay.core.times import time_from_unix
from relay.store.postgres.admin import migrate
from relay.store.postgres.receive_order import seq_at as pg_seq_at
from relay.store.postgres.schema import build_online_indexes
from relay.store.sqlite import schema as sqlite_schema
from relay.store.sqlite.receive_order import seq_at as sqlite_seq_at
from relay.store.sqlite.search import register as register_search

FILL_PG = """
INSERT INTO tweets (seq, id, author_id, author_username, author_fold, text, text_fold, lang,
                    created_at, received_at, has_media, rules, object)
SELECT i, (1500000000000000000 + i)::text, (i %% 50000)::text, 'user' || (i %% 50000),
       'user' || (i %% 50000), t, lower(t), (ARRAY['en','ja','es','fr'])[1 + i %% 4],
       timestamptz '2026-01-01' + i * interval '1 second',
       timestamptz '2026-01-01' + i * interval '1 second', i %% 7 = 0,
       ARRAY['cats'], json_build_object('id', (1500000000000000000 + i)::text, 'text', t,
         'seq', i, 'author_id', (i %% 50000)::text, 'objectType', 'objects.tweets',
         'createdAt', '2026-01-01T00:00:00.000Z', 'pad', repeat('x', 400))
FROM (SELECT i, 'tweet ' || i || ' about ' || md5(i::text) || ' and '
             || (ARRAY['cats','dogs','python','asyncio','relay','gatos'])[1 + i %% 6] AS t
      FROM generate_series(1, %s) AS i) AS rows
"""


INSERT_SQLITE = f"INSERT INTO tweets ({sqlite_schema.TWEET_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
REWIND_VERSION_SQLITE = 7
"""The migration that adds the rewind's index and record (SQLite's numbering)."""
REWIND_VERSION_PG = 6
"""The same on PostgreSQL, whose index is then built online."""
PG_START = 1_767_225_600.0
"""2026-01-01T00:00:00Z: FILL_PG's first receive time."""
FILL_START = 1_767_225_600.0
"""2026-01-01T00:00:00Z: the receive time of the first tweet of a filled store."""
SPACING = 0.01
"""Seconds between the receive times of two filled tweets (FILL_PG's are a second apart)."""


def sqlite_rows(count: int, start: float, spacing: float = SPACING) -> Iterator[tuple[Any, ...]]:
    """The rows of ``count`` synthetic tweets for SQLite's ``tweets`` table, received
    ``spacing`` seconds apart from ``start`` on, about 600 bytes of object each."""
    for i in range(1, count + 1):
        received = time_from_unix(start + (i - 1) * spacing)
        yield (
            i,
            str(1_500_000_000_000_000_000 + i),
            str(i % 50000),
            f"user{i % 50000}",
            f"tweet {i} about {i * 2654435761 % 2**32:x} and cats",
            ("en", "ja", "es", "fr")[i % 4],
            "2026-01-01T00:00:00.000Z",
            received,
            int(i % 7 == 0),
            '["cats"]',
            f'{{"id":"{i}","objectType":"objects.tweets","seq":{i},"pad":"{"x" * 400}"}}',
        )


async def bench_postgres(url: str, count: int) -> dict[str, float]:
    times: dict[str, float] = {}
    await migrate(url, target=1)
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        conn.execute(FILL_PG.encode(), [count])
        conn.execute("INSERT INTO tweet_rules SELECT 'cats', seq FROM tweets")
        conn.execute("VACUUM ANALYZE tweets")
        times["fill"] = time.perf_counter() - start
    for version, name in ((2, "add index"), (3, "build search")):
        start = time.perf_counter()
        await migrate(url, target=version)
        times[name] = time.perf_counter() - start
    await migrate(url, target=REWIND_VERSION_PG - 1)
    # The rewind's migration: the record of receive order (a read of every tweet, in the
    # migrations' transaction), then its index built online.
    start = time.perf_counter()
    await migrate(url, target=REWIND_VERSION_PG)
    times["rewind index"] = time.perf_counter() - start
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await conn.execute("DROP INDEX tweets_received_at")
        start = time.perf_counter()
        await build_online_indexes(conn, REWIND_VERSION_PG)
        times["online index"] = time.perf_counter() - start
        moment = PG_START + count // 2  # FILL_PG's tweets are a second apart
        times["lookup"] = await _timed_pg(conn, pg_seq_at(moment))
        await conn.execute("UPDATE receive_order SET checked = 0")  # no record: the scan
        times["lookup scan"] = await _timed_pg(conn, pg_seq_at(moment))
    finally:
        await conn.close()
    return times


async def _timed_pg(conn: psycopg.AsyncConnection[Any], read: Any) -> float:
    """Milliseconds of the fastest of five runs of ``read`` (a warm cache)."""
    best = float("inf")
    for _ in range(5):
        async with conn.cursor() as cur:
            start = time.perf_counter()
            await read(cur)
            best = min(best, time.perf_counter() - start)
    return best * 1000


def bench_sqlite(path: Path, count: int) -> dict[str, float]:
    times: dict[str, float] = {}
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    sqlite_schema.MIGRATIONS[0](db)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("PRAGMA journal_mode = WAL")
    # The search index is left empty here and rebuilt below (the timed part).
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    start = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany(INSERT_SQLITE, sqlite_rows(count, FILL_START))
    conn.execute("COMMIT")
    times["fill"] = time.perf_counter() - start
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    sqlite_schema.MIGRATIONS[1](db)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("COMMIT")
    times["add index"] = time.perf_counter() - start
    start = time.perf_counter()
    conn.execute("INSERT INTO tweets_fts (tweets_fts) VALUES ('rebuild')")
    times["build search"] = time.perf_counter() - start
    register_search(conn)  # what the migrations between need
    for number in range(3, REWIND_VERSION_SQLITE):  # an upgrade: the migrations between
        _migrate_to(conn, db, number)
    start = time.perf_counter()
    _migrate_to(conn, db, REWIND_VERSION_SQLITE)
    times["rewind index"] = time.perf_counter() - start
    moment = FILL_START + count // 2 * SPACING
    times["lookup"] = _timed_sqlite(conn, moment)
    conn.execute("UPDATE receive_order SET checked = 0")  # no record: the scan
    times["lookup scan"] = _timed_sqlite(conn, moment)
    conn.close()
    return times


def _migrate_to(conn: sqlite3.Connection, db: sqlite_utils.Database, number: int) -> None:
    conn.execute("BEGIN IMMEDIATE")
    sqlite_schema.MIGRATIONS[number - 1](db)
    conn.execute(f"PRAGMA user_version = {number:d}")
    conn.execute("COMMIT")


def _timed_sqlite(conn: sqlite3.Connection, moment: float) -> float:
    """Milliseconds of the fastest of five lookups of the seq received at ``moment``."""
    read = sqlite_seq_at(moment)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        read(conn)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tweets", type=int, default=1_000_000)
    parser.add_argument("--url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--only", choices=("pg", "sqlite"))
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as folder:
        if args.only != "sqlite":
            server = None
            url = args.url
            if url is None:
                from tests.pg_server import PostgresServer, find_bin_dir

                bin_dir = find_bin_dir()
                if bin_dir is None:
                    raise SystemExit("needs PostgreSQL: apt-get install postgresql, or --url")
                # Its own folder: the server's user may not enter this one (as root).
                server = PostgresServer(bin_dir, Path(tempfile.mkdtemp(prefix="relay-pg-")))
                server.init()
                server.start()
                url = server.create_database("bench")
            try:
                results["postgresql"] = asyncio.run(bench_postgres(url, args.tweets))
            finally:
                if server is not None:
                    server.stop()
                    shutil.rmtree(server.root, ignore_errors=True)
        if args.only != "pg":
            results["sqlite"] = bench_sqlite(Path(folder) / "bench.db", args.tweets)
    print(f"migrations on a store of {args.tweets:,} tweets (seconds; lookups in ms)")
    print(
        f"{'store':<12}{'fill':>10}{'add index':>12}{'build search':>15}{'rewind index':>15}"
        f"{'of it online':>15}{'lookup':>10}{'lookup scan':>14}"
    )
    for store, times in results.items():
        online = f"{times['online index']:.1f}" if "online index" in times else "-"
        print(
            f"{store:<12}{times['fill']:>10.1f}{times['add index']:>12.1f}"
            f"{times['build search']:>15.1f}{times['rewind index']:>15.1f}{online:>15}"
            f"{times['lookup']:>10.2f}{times['lookup scan']:>14.1f}"
        )


if __name__ == "__main__":
    main()
