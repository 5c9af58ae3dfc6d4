"""The default store: one SQLite file in WAL mode, through sqlite-utils.

SQLite stays off the event loop. All writes go through one writer thread fed by
a queue; it takes every job waiting and commits them in one transaction (group
commit), so a burst of small batches costs one fsync-free WAL commit, not many.
Reads run on a small thread pool, each thread with its own read-only connection;
WAL lets them read while the writer writes.

Because the writer thread is the only writer, it knows the next ``seq`` and
stores each tweet's served object complete with its seq: reads hand the stored
bytes straight to clients without decoding them. One process owns a database
file; scale-out uses PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlite_utils

from relay.errors import StoreError
from relay.query import TweetQuery
from relay.store import AppendResult, StoredTweet
from relay.tweets import ALL_CHANNEL, RULE_PREFIX, Tweet, stored_object, time_from_unix

log = logging.getLogger(__name__)
T = TypeVar("T")

TWEET_COLUMNS = (
    "seq, id, author_id, author_username, text, lang, created_at, received_at, has_media, "
    "rules, object"
)


def _migration_1(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        """CREATE TABLE tweets (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            author_id TEXT,
            author_username TEXT,
            text TEXT NOT NULL,
            lang TEXT,
            created_at TEXT NOT NULL,
            received_at TEXT NOT NULL,
            has_media INTEGER NOT NULL,
            rules TEXT NOT NULL,
            object TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX tweets_created_at ON tweets (created_at)")
    db.execute("CREATE INDEX tweets_lang ON tweets (lang, seq)")
    db.execute("CREATE INDEX tweets_author ON tweets (author_username, seq)")
    db.execute(
        "CREATE TABLE tweet_rules (tag TEXT NOT NULL, seq INTEGER NOT NULL, "
        "PRIMARY KEY (tag, seq)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE users (id TEXT PRIMARY KEY, username TEXT, name TEXT, "
        "object TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    db.execute("CREATE TABLE source_state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    # One row per rule key ever seen: /v1/info lists channels without scanning tweet_rules.
    db.execute("CREATE TABLE rules (tag TEXT PRIMARY KEY, first_seq INTEGER NOT NULL)")
    db.table("tweets").enable_fts(["text"], fts_version="FTS5", create_triggers=True)
    db.execute("INSERT INTO meta (key, value) VALUES ('epoch', ?)", [secrets.token_hex(8)])


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migration_1]
"""Schema changes in order; ``PRAGMA user_version`` records how many have run."""


def migrate(conn: sqlite3.Connection) -> None:
    db = sqlite_utils.Database(conn)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this relay ({len(MIGRATIONS)})"
        )
    for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
        with conn:
            migration(db)
            conn.execute(f"PRAGMA user_version = {number:d}")
        log.info("store migrated to schema version %d", number)


@dataclass
class _Job:
    run: Callable[[sqlite3.Connection], Any]
    future: Future[Any] = field(default_factory=Future)


_STOP = object()


class SQLiteStore:
    """A :class:`relay.store.Store` on one SQLite file."""

    def __init__(self, path: str | Path, *, readers: int = 3) -> None:
        self.path = str(path)
        self.epoch = ""
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="store-read")
        self._writer: threading.Thread | None = None
        self._next_seq = 1
        self.commits = 0

    @classmethod
    async def open(cls, path: str | Path) -> SQLiteStore:
        store = cls(path)
        await asyncio.get_running_loop().run_in_executor(None, store._open_sync)
        return store

    def _open_sync(self) -> None:
        if self.path != ":memory:" and not Path(self.path).parent.exists():
            raise StoreError(f"database folder does not exist: {Path(self.path).parent}")
        try:
            conn = self._connect()
            conn.execute("PRAGMA journal_mode = WAL")
            migrate(conn)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self.epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tweets'").fetchone()
        self._next_seq = (row[0] if row else 0) + 1
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="store-writer", daemon=True
        )
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 5000")
        # NORMAL in WAL mode survives a crash of the process (kill -9); only an OS
        # crash can lose the last commits, and the source redelivers those.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    # -- writing -------------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        while True:
            jobs = [self._jobs.get()]
            while True:  # group commit: take whatever else is already waiting
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stop = any(job is _STOP for job in jobs)
            jobs = [job for job in jobs if job is not _STOP]
            if jobs:
                self._commit(conn, jobs)
            if stop:
                conn.close()
                return

    def _commit(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        next_seq = self._next_seq
        results: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in jobs:
                results.append(job.run(conn))
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._next_seq = next_seq
            log.exception("store commit failed")
            for job in jobs:
                job.future.set_exception(StoreError(f"commit failed: {exc}"))
            return
        for job, result in zip(jobs, results, strict=True):
            job.future.set_result(result)

    async def _write(self, run: Callable[[sqlite3.Connection], T]) -> T:
        if self._writer is None or not self._writer.is_alive():
            raise StoreError("store is closed")
        job = _Job(run)
        self._jobs.put(job)
        result: T = await asyncio.wrap_future(job.future)
        return result

    async def append(
        self, tweets: Sequence[Tweet], users: Sequence[dict[str, Any]], received_at: float
    ) -> AppendResult:
        received = time_from_unix(received_at)
        return await self._write(lambda conn: self._append_sync(conn, tweets, users, received))

    def _append_sync(
        self,
        conn: sqlite3.Connection,
        tweets: Sequence[Tweet],
        users: Sequence[dict[str, Any]],
        received: str,
    ) -> AppendResult:
        stored: list[StoredTweet] = []
        duplicates = 0
        for tweet in tweets:
            seq = self._next_seq
            body = orjson.dumps(stored_object(tweet.object, seq=seq, received_at=received))
            keys = [rule.tag or rule.id for rule in tweet.rules]
            cursor = conn.execute(
                f"INSERT INTO tweets ({TWEET_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (id) DO NOTHING",
                (
                    seq,
                    tweet.id,
                    tweet.author_id,
                    (tweet.author or {}).get("username"),
                    tweet.text,
                    tweet.lang,
                    tweet.created_at or received,
                    received,
                    int(tweet.has_media),
                    orjson.dumps(keys).decode(),
                    body.decode(),
                ),
            )
            if cursor.rowcount == 0:
                duplicates += 1
                continue
            self._next_seq = seq + 1
            pairs = [(key, seq) for key in dict.fromkeys(keys)]
            conn.executemany("INSERT OR IGNORE INTO tweet_rules (tag, seq) VALUES (?, ?)", pairs)
            conn.executemany("INSERT OR IGNORE INTO rules (tag, first_seq) VALUES (?, ?)", pairs)
            stored.append(
                StoredTweet(
                    seq=seq,
                    channels=tweet.channels,
                    body=body,
                    lang=tweet.lang,
                    author=(tweet.author or {}).get("username"),
                    has_media=tweet.has_media,
                    text=tweet.text,
                )
            )
        for user in users:
            self._upsert_user(conn, user, received)
        return AppendResult(stored=stored, duplicates=duplicates)

    @staticmethod
    def _upsert_user(conn: sqlite3.Connection, user: dict[str, Any], received: str) -> None:
        obj = dict(user)
        obj["objectType"] = "objects.users"
        obj["createdAt"] = user.get("created_at") or received
        obj["updatedAt"] = received
        conn.execute(
            "INSERT INTO users (id, username, name, object, updated_at) VALUES (?,?,?,?,?) "
            "ON CONFLICT (id) DO UPDATE SET username = excluded.username, "
            "name = excluded.name, object = excluded.object, updated_at = excluded.updated_at",
            (
                str(user["id"]),
                user.get("username"),
                user.get("name"),
                orjson.dumps(obj).decode(),
                received,
            ),
        )

    async def set_state(self, key: str, value: str) -> None:
        await self._write(
            lambda conn: conn.execute(
                "INSERT INTO source_state (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        )

    # -- reading -------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, lambda: run(self._reader()))

    async def head(self) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT max(seq) FROM tweets").fetchone()
            return int(row[0] or 0)

        return await self._read(run)

    async def read_after(
        self, channel: str, after: int, until: int, limit: int, *, max_bytes: int | None = None
    ) -> list[StoredTweet]:
        columns = "seq, rules, object, lang, author_username, has_media, text"
        sql, params = _channel_range(channel, columns, after, until)

        def run(conn: sqlite3.Connection) -> list[StoredTweet]:
            page: list[StoredTweet] = []
            size = 0
            # Rows come one at a time from the cursor: a byte budget stops the read early.
            for seq, rules, body, lang, author, has_media, text in conn.execute(
                sql + " ORDER BY seq LIMIT ?", (*params, limit)
            ):
                page.append(
                    StoredTweet(
                        seq=seq,
                        channels=(ALL_CHANNEL, *(RULE_PREFIX + key for key in orjson.loads(rules))),
                        body=body.encode(),
                        lang=lang,
                        author=author,
                        has_media=bool(has_media),
                        text=text,
                    )
                )
                size += len(body)
                if max_bytes is not None and size >= max_bytes:
                    break
            return page

        return await self._read(run)

    async def count_after(
        self, channel: str, after: int, until: int, *, cap: int | None = None
    ) -> int:
        inner, inner_params = _channel_count(channel, after, until)
        # Counting stops after cap + 1 rows: a subscribe from seq 0 never scans the store.
        limit = -1 if cap is None else cap + 1
        sql, params = f"SELECT count(*) FROM ({inner} LIMIT ?)", (*inner_params, limit)
        return await self._read(lambda conn: int(conn.execute(sql, params).fetchone()[0]))

    async def query(self, query: TweetQuery) -> tuple[list[bytes], int]:
        def run(conn: sqlite3.Connection) -> tuple[list[bytes], int]:
            count_sql, count_params = query.count_sql()
            total = int(conn.execute(count_sql, count_params).fetchone()[0])
            if query.count_only:
                return [], total
            sql, params = query.select_sql()
            rows = conn.execute(sql, params).fetchall()
            return [row[1].encode() for row in rows], total

        return await self._read(run)

    async def tweet(self, tweet_id: str) -> bytes | None:
        return await self._one("SELECT object FROM tweets WHERE id = ?", tweet_id)

    async def user(self, user_id: str) -> bytes | None:
        return await self._one("SELECT object FROM users WHERE id = ?", user_id)

    async def _one(self, sql: str, value: str) -> bytes | None:
        def run(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(sql, (value,)).fetchone()
            return row[0].encode() if row else None

        return await self._read(run)

    async def rule_keys(self) -> list[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT tag FROM rules ORDER BY tag").fetchall()
            return [row[0] for row in rows]

        return await self._read(run)

    async def highest_tweet_id(self, rule_key: str | None = None) -> str | None:
        # Ids are decimal strings of growing length: compare by length, then text.
        sql = "SELECT id FROM tweets"
        params: tuple[str, ...] = ()
        if rule_key is not None:
            sql += " WHERE seq IN (SELECT seq FROM tweet_rules WHERE tag = ?)"
            params = (rule_key,)
        sql += " ORDER BY length(id) DESC, id DESC LIMIT 1"

        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(sql, params).fetchone()
            return row[0] if row else None

        return await self._read(run)

    async def get_state(self, key: str) -> str | None:
        return await self._one_text("SELECT value FROM source_state WHERE key = ?", key)

    async def _one_text(self, sql: str, value: str) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(sql, (value,)).fetchone()
            return str(row[0]) if row else None

        return await self._read(run)

    async def close(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._jobs.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._writer.join)
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()


def _channel_range(
    channel: str, columns: str, after: int, until: int
) -> tuple[str, tuple[Any, ...]]:
    """SQL for the tweets of one channel in a seq range; the key is always bound.

    A rule channel walks its ``(tag, seq)`` index in seq order and joins each row,
    so ``ORDER BY seq LIMIT n`` reads n rows, never the whole range first.
    """
    if channel == ALL_CHANNEL:
        return f"SELECT {columns} FROM tweets WHERE seq > ? AND seq <= ?", (after, until)
    key = channel.removeprefix(RULE_PREFIX)
    return (
        f"SELECT {columns} FROM tweet_rules CROSS JOIN tweets USING (seq) "
        "WHERE tweet_rules.tag = ? AND tweet_rules.seq > ? AND tweet_rules.seq <= ?",
        (key, after, until),
    )


def _channel_count(channel: str, after: int, until: int) -> tuple[str, tuple[Any, ...]]:
    """Rows of one channel in a seq range, from the primary key or the rule index alone."""
    if channel == ALL_CHANNEL:
        return "SELECT 1 FROM tweets WHERE seq > ? AND seq <= ?", (after, until)
    key = channel.removeprefix(RULE_PREFIX)
    return (
        "SELECT 1 FROM tweet_rules WHERE tag = ? AND seq > ? AND seq <= ?",
        (key, after, until),
    )
