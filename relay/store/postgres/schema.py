"""The PostgreSQL store's schema: versioned migrations, and the check that a database is
a relay's.

The ``meta`` row ``schema_version`` records how many migrations have run. Migrating
takes a transaction-level advisory lock first, so two ``relay migrate`` at once (two
release phases, a release phase and a starting worker) run one after the other: the
second finds the work done. All pending migrations run in one transaction: a failed
release leaves the schema as it was. Migrating refuses a schema newer than this relay
and, before writing anything, a database holding other tables and no relay schema.
Indexes on large tables are built after that transaction, without blocking writes
(:data:`ONLINE_INDEXES`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from relay.core.segment import postgres_function
from relay.errors import StoreError
from relay.store.postgres.receive_order import RECORD as RECORD_RECEIVE_ORDER

INDEX_FORM = "relay_index_form"
"""The SQL function giving a text's indexed form (:func:`relay.core.segment.index_form`)."""

log = logging.getLogger(__name__)

LOCK_KEY = 0x72656C6179  # "relay": the advisory lock every migration holds
TWEET_COLUMNS = (
    "seq, id, author_id, author_username, author_fold, text, text_fold, lang, created_at, "
    "received_at, has_media, rules, object"
)

_MIGRATION_1 = [
    "CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE tweets (
        seq bigint PRIMARY KEY,
        id text NOT NULL UNIQUE,
        author_id text,
        author_username text,
        author_fold text NOT NULL,
        text text NOT NULL,
        text_fold text NOT NULL,
        lang text,
        created_at timestamptz NOT NULL,
        received_at timestamptz NOT NULL,
        has_media boolean NOT NULL,
        rules text[] NOT NULL,
        object json NOT NULL)""",
    # The body is json, not jsonb: kept byte for byte as the writer encoded it (seq
    # included), handed to clients without decoding.
    "CREATE INDEX tweets_created_at ON tweets (created_at)",
    "CREATE INDEX tweets_lang ON tweets (lang, seq)",
    "CREATE INDEX tweets_author ON tweets (author_username, seq)",
    "CREATE TABLE tweet_rules (tag text NOT NULL, seq bigint NOT NULL, PRIMARY KEY (tag, seq))",
    """CREATE TABLE users (id text PRIMARY KEY, username text, name text,
        object json NOT NULL, updated_at timestamptz NOT NULL)""",
    "CREATE TABLE source_state (key text PRIMARY KEY, value text NOT NULL)",
    "CREATE TABLE rules (tag text PRIMARY KEY, first_seq bigint NOT NULL)",
    # The writer lease (see relay.store.postgres.store): one row, never deleted.
    """CREATE TABLE writer_lease (
        name text PRIMARY KEY,
        holder text NOT NULL,
        generation bigint NOT NULL,
        expires_at timestamptz NOT NULL)""",
    "INSERT INTO writer_lease VALUES ('writer', '', 0, '-infinity')",
    "INSERT INTO meta VALUES "
    "('epoch', substr(md5(random()::text || clock_timestamp()::text), 1, 16))",
]

_MIGRATION_2 = [
    # A user object is served only when one of its tweets is readable: find them fast.
    "CREATE INDEX tweets_author_id ON tweets (author_id, seq)",
]

_MIGRATION_3 = [
    # Full-text search; queries spell the expression as postgres_query.SEARCH_VECTOR.
    "CREATE INDEX tweets_search ON tweets USING gin "
    "(to_tsvector('simple'::regconfig, regexp_replace(text, '[[:punct:]]+', ' ', 'g')))",
]

_MIGRATION_4 = [
    # Deletion requests (relay delete) and the record of what they removed.
    """CREATE TABLE deletions (
        n bigserial PRIMARY KEY,
        tweet_id text NOT NULL,
        requested_at timestamptz NOT NULL DEFAULT now(),
        applied_n bigint UNIQUE,
        applied_at timestamptz,
        seq bigint,
        channels text[])""",
    "CREATE INDEX deletions_pending ON deletions (n) WHERE applied_n IS NULL",
]

_MIGRATION_5 = [
    # Search in every script: the index holds each text's index form (runs of scripts
    # without spaces cut into bigrams, relay.core.segment), computed by an SQL function built
    # from the same ranges as the Python one; the index is built again over every row.
    postgres_function(INDEX_FORM),
    "DROP INDEX tweets_search",
    "CREATE INDEX tweets_search ON tweets USING gin "
    "(to_tsvector('simple'::regconfig, "
    f"regexp_replace({INDEX_FORM}(text), '[[:punct:]]+', ' ', 'g')))",
]

_MIGRATION_6 = [
    # Rewind by time (relay.store.postgres.receive_order): the record of receive order
    # the writer keeps, here filled for the tweets already stored (a read of them: writes
    # go on). Its index is built online, after the transaction: ONLINE_INDEXES.
    """CREATE TABLE receive_order (
        checked bigint NOT NULL,
        received_max timestamptz,
        late_through bigint NOT NULL)""",
    "INSERT INTO receive_order VALUES (0, NULL, 0)",
    RECORD_RECEIVE_ORDER,
]

MIGRATIONS: list[list[str]] = [
    _MIGRATION_1,
    _MIGRATION_2,
    _MIGRATION_3,
    _MIGRATION_4,
    _MIGRATION_5,
    _MIGRATION_6,
]
"""Schema changes in order; the ``schema_version`` row records how many have run."""


@dataclass(frozen=True, slots=True)
class OnlineIndex:
    """An index built with ``CREATE INDEX CONCURRENTLY``: the writer goes on writing while
    it builds. That cannot run inside a transaction, so it is no part of a migration's:
    once the schema is at version ``since``, every migrate (``relay migrate``, a writer's
    start) makes sure it is there and valid, and builds it when it is missing or when a
    build that failed left it invalid."""

    name: str
    since: int
    on: str
    """Table and columns: ``tweets (received_at, seq)``."""


ONLINE_INDEXES = (
    # The first tweet received at or after a moment, in one lookup (a rewind). Measured on
    # a million tweets (python -m bench.migration): about 0.8 s, writes going on.
    OnlineIndex("tweets_received_at", 6, "tweets (received_at, seq)"),
)

SCHEMA: dict[str, set[str]] = {
    "meta": {"key", "value"},
    "tweets": {column.strip() for column in TWEET_COLUMNS.split(",")},
    "tweet_rules": {"tag", "seq"},
    "users": {"id", "username", "name", "object", "updated_at"},
    "source_state": {"key", "value"},
    "rules": {"tag", "first_seq"},
    "writer_lease": {"name", "holder", "generation", "expires_at"},
    "deletions": {"n", "tweet_id", "requested_at", "applied_n", "applied_at", "seq", "channels"},
    "receive_order": {"checked", "received_max", "late_through"},
}
"""The tables and columns the relay reads and writes: checked after migrating."""


async def schema_version(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """The relay schema version of the connected database: None when it has none and
    other tables (not a relay's), 0 when it is empty."""
    cur = await conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() ORDER BY table_name"
    )
    tables = [str(row[0]) for row in await cur.fetchall()]
    if not tables:
        return 0
    if "meta" not in tables:
        raise StoreError(
            "not a tweet-relay database (it has tables "
            f"{', '.join(tables[:5])[:200]} and no relay schema version)"
        )
    cur = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    row = await cur.fetchone()
    if row is None or not str(row[0]).isdigit():
        raise StoreError("not a tweet-relay database (its meta table has no schema_version)")
    return int(row[0])


def check_version(version: int) -> None:
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this relay ({len(MIGRATIONS)})"
        )


async def migrate_connection(
    conn: psycopg.AsyncConnection[Any], *, target: int | None = None
) -> int:
    """Bring the schema up to date (or to version ``target``) in one transaction under
    the migration lock; return the version. ``conn`` must have no transaction open."""
    goal = len(MIGRATIONS) if target is None else target
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        await conn.execute("SET LOCAL synchronous_commit = on")  # the epoch must survive
        version = await schema_version(conn)
        assert version is not None
        check_version(version)
        for number, statements in enumerate(MIGRATIONS[version:goal], start=version + 1):
            for statement in statements:
                await conn.execute(statement.encode())
            log.info("store migrated to schema version %d", number)
        if version < goal:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [str(goal)],
            )
        if goal == len(MIGRATIONS):
            await check_tables(conn)
    await build_online_indexes(conn, max(goal, version))
    return max(goal, version)


async def build_online_indexes(conn: psycopg.AsyncConnection[Any], version: int) -> list[str]:
    """Build each index of :data:`ONLINE_INDEXES` that the schema ``version`` has and the
    database lacks or holds invalid; the names built. ``conn`` is in autocommit.

    Holds no lock while it builds: ``CREATE INDEX CONCURRENTLY`` waits for every
    transaction older than it, and a migrator waiting for the migration lock would be one
    (a deadlock). Two processes may so build at once: the second finds the index there,
    or fails on it and leaves it to the first; an invalid index that no process is
    building is what a failed build left, dropped and built again."""
    built: list[str] = []
    for index in ONLINE_INDEXES:
        if version < index.since:
            continue
        state = await _index_state(conn, index.name)
        if state in ("valid", "building"):
            continue
        try:
            if state == "failed":
                log.warning(
                    "index %s was left invalid by a failed build: building it again", index.name
                )
                await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index.name}".encode())
            started = time.monotonic()
            await conn.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index.name} ON {index.on}".encode()
            )
        except (
            pg_errors.DuplicateTable,
            pg_errors.UniqueViolation,
            pg_errors.DeadlockDetected,
        ) as exc:
            log.info(
                "index %s is being built by another process (%s)",
                index.name,
                str(exc).strip()[:120],
            )
            continue
        log.info(
            "built index %s in %.1f s (writes went on)", index.name, time.monotonic() - started
        )
        built.append(index.name)
    return built


async def _index_state(conn: psycopg.AsyncConnection[Any], name: str) -> str:
    """``missing``, ``valid``, ``building`` (invalid, a build in progress) or ``failed``."""
    cur = await conn.execute(
        "SELECT i.indisvalid, EXISTS (SELECT 1 FROM pg_stat_progress_create_index p "
        "WHERE p.index_relid = c.oid) FROM pg_class AS c JOIN pg_index AS i ON "
        "i.indexrelid = c.oid WHERE c.relname = %s "
        "AND c.relnamespace = current_schema()::regnamespace",
        [name],
    )
    row = await cur.fetchone()
    if row is None:
        return "missing"
    valid, building = row
    return "valid" if valid else "building" if building else "failed"


async def check_tables(conn: psycopg.AsyncConnection[Any]) -> None:
    """Refuse a database that lacks a table or column the relay uses."""
    cur = await conn.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema()"
    )
    found: dict[str, set[str]] = {}
    for table, column in await cur.fetchall():
        found.setdefault(str(table), set()).add(str(column))
    for table, columns in SCHEMA.items():
        have = found.get(table, set())
        if not columns <= have:
            missing = "it is missing" if not have else "it lacks columns of"
            raise StoreError(f"not a tweet-relay database ({missing} the table {table})")
