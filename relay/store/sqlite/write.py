"""The SQLite store's rows of one append: tweets with their seqs, rule rows, users.

Run by the store's writer thread inside its transaction. The writer is the only
writer, so it keeps the next seq in a :class:`Seq` and builds each stored object
complete with it; a rolled-back transaction puts the counter back.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.core.times import time_from_unix
from relay.core.tweet_rows import TweetRows
from relay.core.tweets import (
    Tweet,
    appended_body,
    stored_body,
    stored_object,
)
from relay.core.user_rows import UserRows, user_row
from relay.errors import StoreError
from relay.store.sqlite.schema import TWEET_COLUMNS
from relay.store.types import AppendResult, Received, RestoreBatch, StoredTweet

log = logging.getLogger(__name__)

DATA_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
    OverflowError,
    ValueError,
    TypeError,
)
"""What a statement of a job raises when a value cannot be bound or encoded: about
the data, not the store. Any other error (disk full, I/O, corruption) is the store's.
A constraint failure is not listed: with the types checked at parse, it would be a
fault of the store's own state (a seq taken twice), and leaving out every tweet it
hits would lose them quietly; it stops ingest instead."""


def tweet_row(
    seq: int, tweet: Tweet, received: str, keys: list[str], body: bytes
) -> tuple[Any, ...]:
    """The values of one ``tweets`` row, in the order of ``TWEET_COLUMNS``."""
    return (
        seq,
        tweet.id,
        tweet.author_id,
        tweet.author_username,
        tweet.text,
        tweet.lang,
        tweet.created_at or received,
        received,
        int(tweet.has_media),
        orjson.dumps(keys).decode(),
        body,  # bytes: INSERT_TWEET stores them as TEXT without decoding them here
    )


@dataclass
class Seq:
    """The next seq the writer gives."""

    next: int = 1


def append_rows(
    conn: sqlite3.Connection,
    seq_counter: Seq,
    tweets: Sequence[Tweet],
    users: Sequence[dict[str, Any]],
    received: Received,
    *,
    careful: bool = False,
) -> AppendResult:
    """Insert the tweets and upsert the users, in the writer's transaction, each with
    its own receive time.

    ``careful`` puts each tweet and user in a savepoint and leaves out the
    ones that fail on their data: the slow path, taken only after the fast
    one failed.
    """
    tweet_times = received.tweet_times()
    user_times = received.user_times()
    if not careful:
        return _append_batch(conn, seq_counter, tweets, users, received, tweet_times, user_times)
    stored: list[StoredTweet] = []
    unstorable: list[tuple[str, str]] = []
    duplicates = 0
    for tweet, text, received_at in zip(tweets, tweet_times, received.tweets, strict=True):
        seq = seq_counter.next
        conn.execute("SAVEPOINT tweet")
        try:
            new = insert_tweet(conn, seq_counter, tweet, text, received_at)
        except DATA_ERRORS as exc:
            conn.execute("ROLLBACK TO tweet")
            seq_counter.next = seq
            unstorable.append((tweet.id, f"{type(exc).__name__}: {exc}"[:200]))
            continue
        finally:
            conn.execute("RELEASE tweet")
        if new is None:
            duplicates += 1
        else:
            stored.append(new)
    for user, text in zip(users, user_times, strict=True):
        conn.execute("SAVEPOINT user")
        try:
            upsert_user(conn, user, text)
        except DATA_ERRORS as exc:
            conn.execute("ROLLBACK TO user")
            log.debug("left out user %.40r: %s", user.get("id"), exc)
        finally:
            conn.execute("RELEASE user")
    return AppendResult(stored=stored, duplicates=duplicates, unstorable=tuple(unstorable))


# The object is bound as bytes and stored as TEXT (schema version 6): SQLite takes the
# UTF-8 bytes as they are (no decoding in Python), and its JSON functions and datasette
# read the column as JSON, where a BLOB showed as <Binary> and json_extract refused it.
INSERT_TWEET = f"INSERT INTO tweets ({TWEET_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,CAST(? AS TEXT))"
INSERT_TWEET_RULE = "INSERT OR IGNORE INTO tweet_rules (tag, seq) VALUES (?, ?)"
INSERT_RULE = "INSERT OR IGNORE INTO rules (tag, first_seq) VALUES (?, ?)"
UPSERT_USER = (
    "INSERT INTO users (id, username, name, object, updated_at) "
    "VALUES (?,?,?,CAST(? AS TEXT),?) "
    "ON CONFLICT (id) DO UPDATE SET username = excluded.username, "
    "name = excluded.name, object = excluded.object, updated_at = excluded.updated_at"
)


def _append_batch(
    conn: sqlite3.Connection,
    seq_counter: Seq,
    tweets: Sequence[Tweet],
    users: Sequence[dict[str, Any]],
    received: Received,
    tweet_times: Sequence[str],
    user_times: Sequence[str],
) -> AppendResult:
    """The fast path: one statement per table for the whole batch, its rows zipped from
    the batch's columns (:class:`~relay.core.tweet_rows.TweetRows`, as the parser hands
    them over: no object a tweet).

    Which ids are new is settled first (one lookup, then the batch's own repeats), so
    seqs stay dense and the insert never meets a conflict: being the only writer, a
    conflict there would be the store's own fault, and it fails the commit.
    """
    columns = TweetRows.of(tweets)
    known = {
        row[0]
        for row in conn.execute(
            "SELECT id FROM tweets WHERE id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(columns.ids),),
        )
    }
    seq = seq_counter.next
    rows: list[tuple[Any, ...]] = []
    rule_rows: list[tuple[str, int]] = []
    stored: list[StoredTweet] = []
    for (
        tweet_id,
        text,
        author_id,
        username,
        lang,
        created,
        media,
        rules,
        encoded,
        decoded,
        received_text,
        received_at,
    ) in zip(
        columns.ids,
        columns.texts,
        columns.author_ids,
        columns.usernames,
        columns.langs,
        columns.created,
        columns.media,
        columns.rules,
        columns.encoded,
        columns.objects,
        tweet_times,
        received.tweets,
        strict=True,
    ):
        if tweet_id in known:
            continue
        known.add(tweet_id)  # a repeat later in the same batch is a duplicate too
        body = (
            appended_body(encoded, created, seq, received_text)
            if decoded is None
            else orjson.dumps(stored_object(decoded, seq=seq, received_at=received_text))
        )
        rows.append(
            (
                seq,
                tweet_id,
                author_id,
                username,
                text,
                lang,
                created or received_text,
                received_text,
                int(media),
                rules.keys_json,
                body,
            )
        )
        rule_rows.extend([(key, seq) for key in rules.unique])
        stored.append(
            StoredTweet(seq, rules.channels, body, lang, username, media, text, received_at)
        )
        seq += 1
    conn.executemany(INSERT_TWEET, rows)
    conn.executemany(INSERT_TWEET_RULE, rule_rows)
    # A rule's first seq is the first of its rows: one row per rule key, not per tweet.
    firsts: dict[str, int] = {}
    for key, first in rule_rows:
        firsts.setdefault(key, first)
    conn.executemany(INSERT_RULE, firsts.items())
    if isinstance(users, UserRows):  # built by the parser, one per id already
        conn.executemany(UPSERT_USER, users.rows)
    else:
        # An author of many tweets of the batch comes once per tweet: the last one
        # stands, with its time, in the place of the first (where a batch of one line
        # at a time would have inserted it).
        latest = {
            uid: (user, text)
            for user, text in zip(users, user_times, strict=True)
            if isinstance(uid := user.get("id"), str)
        }
        conn.executemany(
            UPSERT_USER,
            [row for user, text in latest.values() if (row := user_row(user, text))],
        )
    seq_counter.next = seq
    return AppendResult(stored=stored, duplicates=len(columns) - len(stored))


def insert_tweet(
    conn: sqlite3.Connection,
    seq_counter: Seq,
    tweet: Tweet,
    received: str,
    received_at: float = 0.0,
) -> StoredTweet | None:
    """Store one tweet with the next seq; None when its id is already stored."""
    seq = seq_counter.next
    body = stored_body(tweet, seq=seq, received_at=received)
    keys = [rule.tag or rule.id for rule in tweet.rules]
    cursor = conn.execute(
        INSERT_TWEET + " ON CONFLICT (id) DO NOTHING",
        tweet_row(seq, tweet, received, keys, body),
    )
    if cursor.rowcount == 0:
        return None
    seq_counter.next = seq + 1
    pairs = [(key, seq) for key in dict.fromkeys(keys)]
    conn.executemany(INSERT_TWEET_RULE, pairs)
    conn.executemany(INSERT_RULE, pairs)
    return StoredTweet.written(seq, tweet, body, received_at)


def upsert_user(conn: sqlite3.Connection, user: dict[str, Any], received: str) -> None:
    row = user_row(user, received)
    if row is not None:
        conn.execute(UPSERT_USER, row)


def restore_rows(conn: sqlite3.Connection, seq_counter: Seq, batch: RestoreBatch) -> int:
    """Insert a restore's tweets under their own seqs and receive times, and upsert its
    users, in the writer's transaction; how many. The counter moves past the last seq, so
    the writer records their receive order and indexes them as after an append."""
    rows: list[tuple[Any, ...]] = []
    rule_rows: list[tuple[str, int]] = []
    # An id the archive holds twice (under two epochs) is stored once, at its first seq.
    ids = [restored.tweet.id for restored in batch.tweets]
    known = {
        row[0]
        for row in conn.execute(
            "SELECT id FROM tweets WHERE id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(ids),),
        )
    }
    for restored in batch.tweets:
        if restored.seq < seq_counter.next:
            raise StoreError(f"a restore's seq {restored.seq} is not past the store's head")
        if restored.tweet.id in known:
            continue
        known.add(restored.tweet.id)
        tweet, received = restored.tweet, time_from_unix(restored.received_at)
        body = restored.body or stored_body(tweet, seq=restored.seq, received_at=received)
        keys = [rule.tag or rule.id for rule in tweet.rules]
        rows.append(tweet_row(restored.seq, tweet, received, keys, body))
        rule_rows.extend((key, restored.seq) for key in dict.fromkeys(keys))
        seq_counter.next = restored.seq + 1
    conn.executemany(INSERT_TWEET, rows)
    conn.executemany(INSERT_TWEET_RULE, rule_rows)
    conn.executemany(INSERT_RULE, rule_rows)  # OR IGNORE: the first seq of each key stays
    if batch.tweets:
        received = time_from_unix(batch.tweets[-1].received_at)
        latest = {uid: user for user in batch.users if isinstance(uid := user.get("id"), str)}
        conn.executemany(
            UPSERT_USER, [row for user in latest.values() if (row := user_row(user, received))]
        )
    conn.executemany(
        "INSERT INTO source_state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        list(batch.state.items()),
    )
    if batch.epoch:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (batch.epoch,))
    return len(rows)
