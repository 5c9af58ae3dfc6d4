"""The ingest part of ``make bench``, and filling a store for the catch-up part.

The relay's figure is the embedded relay in this process (bench/stores.py); beside it
the plain bulk insert reference on the same stream file.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import orjson

from bench.table import Row
from relay.sources.synth import write_stream


def ingest(folder: Path, count: int, database_url: str) -> list[Row]:
    """3 part: a synthetic stream at max speed into a fresh store, and the plain references
    (a generic table, and the relay's own tables and indexes), alternated with the relay."""
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
    cpu = Cpu()
    rate, commit, search_lag = asyncio.run(ingest_and_search(sqlite, count))
    relay_cpu = cpu.per(count)
    plain = plain_insert(stream, part / "plain.db")
    cpu = Cpu()
    own = own_tables_insert(stream, part / "own.db")
    own_cpu = cpu.per(count)
    postgres = "skipped: set DATABASE_URL (a fresh database)"
    if database_url:
        try:
            settings = Settings.from_mapping({**base, "database_url": database_url})
            pg_rate, pg_commit = asyncio.run(relay_ingest_in_process(settings, count))
            copy_rate = plain_copy(database_url)
            postgres = (
                f"PostgreSQL: {pg_rate:,.0f} tweets/s, mean commit {pg_commit:.1f} ms; a plain "
                f"COPY of the same rows into a copy of its tweets table and indexes: "
                f"{copy_rate:,.0f} rows/s (relay/COPY {pg_rate / copy_rate:.2f}x)"
            )
        except Exception as exc:  # a reused database stores only duplicates: say so
            postgres = f"PostgreSQL failed: {type(exc).__name__}: {exc}"[:100]
    return [
        Row(
            "ingest",
            f"relay synth, {count:,} tweets at max speed into a fresh SQLite "
            "store, first to last committed and published (in-process relay)",
            f"{rate:,.0f} tweets/s, {relay_cpu:.0f} µs of CPU a tweet (parser process "
            f"included; mean commit {commit:.1f} ms; search caught up "
            f"{search_lag or 0:.2f} s after the last commit)",
            f"plain bulk insert: {plain:,.0f} tweets/s; into the relay's own tables and "
            f"indexes: {own:,.0f} tweets/s, {own_cpu:.0f} µs of CPU a tweet",
            "",
            f"target >= 50,000 tweets/s, search <= 1 s behind; relay/plain {rate / plain:.2f}x, "
            f"relay/own tables {rate / own:.2f}x",
        ),
        Row("ingest", "PostgreSQL store, same stream (DATABASE_URL)", postgres),
    ]


class Cpu:
    """CPU of this process and of its children that ended (a relay's parser process)
    from now on, a tweet."""

    def __init__(self) -> None:
        self.started = self._now()

    @staticmethod
    def _now() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def per(self, count: int) -> float:
        """Microseconds of CPU a tweet since this was made."""
        return 1e6 * (self._now() - self.started) / max(count, 1)


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


def own_tables_insert(stream: Path, db: Path, batch: int = 500) -> float:
    """The floor under the relay's store: the same rows into the relay's own tables and
    indexes (its schema, its migrations, its page size and writer settings), as plainly as
    it goes. orjson reads each line, the row takes the fields as they are and the object
    as orjson encodes ``data`` (no expansion, no checks), users are upserted, a batch of
    500 a transaction, one thread; then the full-text index in one statement, as the
    relay's writer fills it. Tweets a second, first line to indexed."""
    from relay.store.sqlite.conn import connect
    from relay.store.sqlite.schema import migrate
    from relay.store.sqlite.search import index_committed
    from relay.store.sqlite.write import INSERT_TWEET, INSERT_TWEET_RULE, UPSERT_USER
    from relay.store.sqlite.writer import WRITER_CACHE_KIB

    started = time.perf_counter()
    conn = connect(str(db))
    migrate(conn)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB:d}")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # as the relay's writer: no copy in a commit
    received = "2026-01-01T00:00:00.000Z"
    seq = 0
    tweets: list[tuple[Any, ...]] = []
    rules: list[tuple[str, int]] = []
    users: list[tuple[Any, ...]] = []

    def flush() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_TWEET, tweets)
        conn.executemany(INSERT_TWEET_RULE, rules)
        conn.executemany(UPSERT_USER, users)
        conn.execute("COMMIT")
        tweets.clear()
        rules.clear()
        users.clear()

    with stream.open("rb") as handle:
        for line in handle:
            payload = orjson.loads(line)
            data = payload.get("data")
            if not isinstance(data, dict):
                continue
            seq += 1
            keys = [rule.get("tag") or rule["id"] for rule in payload.get("matching_rules", [])]
            author = data.get("author_id")
            names = {u["id"]: u for u in payload.get("includes", {}).get("users", [])}
            tweets.append(
                (
                    seq,
                    data["id"],
                    author,
                    names.get(author, {}).get("username"),
                    data["text"],
                    data.get("lang"),
                    data.get("created_at") or received,
                    received,
                    int("attachments" in data),
                    orjson.dumps(keys).decode(),
                    orjson.dumps(data),
                )
            )
            rules.extend((key, seq) for key in dict.fromkeys(keys))
            users.extend(
                (u["id"], u.get("username"), u.get("name"), orjson.dumps(u).decode(), received)
                for u in names.values()
            )
            if len(tweets) == batch:
                flush()
    if tweets:
        flush()
    index_committed(conn, 0, seq)
    conn.close()
    return seq / (time.perf_counter() - started)


def plain_copy(database_url: str) -> float:
    """The floor under the PostgreSQL store: the rows the relay just stored in ``tweets``,
    read back, then COPYed in one statement into an empty table made ``LIKE tweets
    INCLUDING ALL`` (the same columns and indexes, the full-text one too) in a schema of
    its own; rows a second for the COPY alone. The schema is dropped after."""
    import io

    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = io.BytesIO()
        with conn.cursor().copy("COPY (SELECT * FROM tweets ORDER BY seq) TO STDOUT") as out:
            for data in out:
                rows.write(data)
        count = conn.execute("SELECT count(*) FROM tweets").fetchone()[0]  # type: ignore[index]
        conn.execute("DROP SCHEMA IF EXISTS bench_copy CASCADE")
        conn.execute("CREATE SCHEMA bench_copy")
        conn.execute("CREATE TABLE bench_copy.tweets (LIKE public.tweets INCLUDING ALL)")
        started = time.perf_counter()
        with conn.transaction(), conn.cursor().copy("COPY bench_copy.tweets FROM STDIN") as copy:
            copy.write(rows.getvalue())
        elapsed = time.perf_counter() - started
        conn.execute("DROP SCHEMA bench_copy CASCADE")
    return int(count) / elapsed


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
