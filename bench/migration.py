"""How long the release phase's migrations take on a big store, for both stores.

Builds a store of N synthetic tweets (default 1,000,000) at the schema version before
the last index migrations, then times the migration that adds an index
(``tweets_author_id``) and the one that (re)builds full-text search: on PostgreSQL
migration 3, the GIN index on ``to_tsvector('simple', text)``; on SQLite an FTS5
``rebuild`` (what a migration changing the tokenizer runs). Rows are made fast:
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
from pathlib import Path

import psycopg
import sqlite_utils

from relay.store.postgres.admin import migrate
from relay.store.sqlite import schema as sqlite_schema

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
    return times


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
    conn.executemany(
        f"INSERT INTO tweets ({sqlite_schema.TWEET_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            (
                i,
                str(1_500_000_000_000_000_000 + i),
                str(i % 50000),
                f"user{i % 50000}",
                f"tweet {i} about {i * 2654435761 % 2**32:x} and cats",
                ("en", "ja", "es", "fr")[i % 4],
                "2026-01-01T00:00:00.000Z",
                "2026-01-01T00:00:00.000Z",
                int(i % 7 == 0),
                '["cats"]',
                f'{{"id":"{i}","objectType":"objects.tweets","pad":"{"x" * 400}"}}',
            )
            for i in range(1, count + 1)
        ),
    )
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
    conn.close()
    return times


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
    print(f"migrations on a store of {args.tweets:,} tweets (seconds)")
    print(f"{'store':<12}{'fill':>10}{'add index':>12}{'build search':>15}")
    for store, times in results.items():
        print(
            f"{store:<12}{times['fill']:>10.1f}{times['add index']:>12.1f}"
            f"{times['build search']:>15.1f}"
        )


if __name__ == "__main__":
    main()
