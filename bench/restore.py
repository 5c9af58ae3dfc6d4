"""The restore part of ``make bench`` (``--only restore``): ``relay restore`` from an
archive folder into a fresh SQLite store (and PostgreSQL with DATABASE_URL), beside a
plain bulk insert of the same archived rows.

The archive is written from a filled store with :mod:`relay.core.archive` (objects of
10,000 tweets, as the writer names them), to a ``file://`` folder: the figure is the
store's side of a restore (reading and decoding objects, rebuilding each tweet, the
inserts, indexes and receive order), not a network's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import orjson

from bench.ingest import fill
from bench.table import Row

PER_OBJECT = 10_000


@contextlib.contextmanager
def fresh_database(database_url: str, suffix: str) -> Iterator[str]:
    """The URL of a new, empty database beside ``database_url``'s (its name plus
    ``_suffix``, made anew), dropped when the block ends."""
    import psycopg
    from psycopg import sql

    parts = urllib.parse.urlsplit(database_url)
    name = f"{parts.path.lstrip('/') or 'postgres'}_{suffix}"
    fresh = urllib.parse.urlunsplit(parts._replace(path="/" + name))
    drop = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(drop)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield fresh
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(drop)


def restore(folder: Path, count: int, database_url: str) -> list[Row]:
    from relay.app.commands.restore import restore as relay_restore
    from relay.config import Settings

    part = folder / "restore"
    part.mkdir()
    archive = part / "archive"
    asyncio.run(write_archive(fill(part, count), archive))
    url = f"file://{archive}"
    started = time.perf_counter()
    done = asyncio.run(relay_restore(Settings.from_mapping({"db": str(part / "r.db")}), url))
    rate = done.tweets / (time.perf_counter() - started)
    plain = plain_insert(archive, part / "plain.db")
    postgres = "skipped: set DATABASE_URL (a fresh database)"
    if database_url:
        try:
            # The ingest part filled DATABASE_URL's database, and a restore goes only into
            # an empty store: a database of its own beside it, dropped after.
            with fresh_database(database_url, "restore") as fresh:
                settings = Settings.from_mapping({"database_url": fresh})
                began = time.perf_counter()
                pg = asyncio.run(relay_restore(settings, url))
                rate_pg = pg.tweets / (time.perf_counter() - began)
            postgres = f"PostgreSQL: {rate_pg:,.0f} tweets/s"
        except Exception as exc:  # no right to create a database, say: say so
            postgres = f"PostgreSQL failed: {type(exc).__name__}: {exc}"[:100]
    return [
        Row(
            "restore",
            f"relay restore of {done.tweets:,} archived tweets (file://, objects of "
            f"{PER_OBJECT:,}) into a fresh SQLite store, seqs and receive times kept",
            f"{rate:,.0f} tweets/s",
            f"plain bulk insert of the same rows: {plain:,.0f} tweets/s",
            "",
            f"relay/plain {rate / plain:.2f}x",
        ),
        Row("restore", "PostgreSQL store, same archive (DATABASE_URL)", postgres),
    ]


async def write_archive(db: Path, folder: Path) -> None:
    """The archive of the store at ``db``, as the archive writer lays it out."""
    from relay.archive.bucket import Bucket, parse_url
    from relay.core.archive import ArchivedTweet, encode_object, name_for
    from relay.store.sqlite.store import SQLiteStore

    store = await SQLiteStore.open(db, writer=False)
    bucket = Bucket(parse_url(f"file://{folder}"))
    try:
        head, after, start = await store.head(), 0, None
        while after < head:
            rows = await store.read_after("tweets", after, head, PER_OBJECT)
            tweets = [
                ArchivedTweet(store.epoch, r.seq, r.received, r.channels, r.body) for r in rows
            ]
            start = start if start is not None else tweets[0].received
            await bucket.put(name_for(start, tweets).key(""), encode_object(tweets))
            after = rows[-1].seq
    finally:
        await store.close()


def plain_insert(archive: Path, db: Path) -> float:
    """The reference: every archived line decoded (gzip, orjson) and inserted with its
    seq, id, receive time and object into a WAL table, one executemany an object."""
    started = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE tweets (seq INTEGER PRIMARY KEY, id TEXT UNIQUE, received_at TEXT, "
        "object TEXT)"
    )
    rows = 0
    for path in sorted(archive.rglob("*.jsonl.gz")):
        lines = [orjson.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]
        with conn:
            conn.executemany(
                "INSERT INTO tweets VALUES (?, ?, ?, ?)",
                [
                    (v["seq"], v["tweet"]["id"], v["received_at"], orjson.dumps(v["tweet"]))
                    for v in lines
                ],
            )
        rows += len(lines)
    conn.close()
    return rows / (time.perf_counter() - started)
