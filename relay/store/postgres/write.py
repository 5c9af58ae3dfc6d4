"""The PostgreSQL writer's appends: rows built in Python, sent in few round trips.

The fast path looks up which ids are already stored (the writer is the only one, so
nothing can slip in between), COPYs the new tweets and adds their rule rows with one
statement each. When a value cannot be stored, the careful path stores the batch a
tweet at a time, each in a savepoint, and lists what it had to leave out.

PostgreSQL's text cannot hold NUL (``\\u0000``): the indexed text columns keep the
text without it (searching and filtering never see it), while the body keeps the
tweet as given (JSON escapes it). A NUL in an id or a rule key, which would change
what the tweet is, makes the tweet unstorable instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import psycopg
import psycopg.errors

from relay.core.filters import fold
from relay.core.times import time_from_unix
from relay.core.tweets import Tweet, display_name_of, stored_body, username_of
from relay.core.user_rows import UserRows, stored_user
from relay.errors import StoreError
from relay.store.postgres.schema import TWEET_COLUMNS
from relay.store.types import AppendResult, Received, RestoreBatch, StoredTweet

Cursor = psycopg.AsyncCursor[Any]

INSERT_TWEET = f"INSERT INTO tweets ({TWEET_COLUMNS}) VALUES ({', '.join(['%s'] * 13)})"
COPY_TWEETS = f"COPY tweets ({TWEET_COLUMNS}) FROM STDIN"
INSERT_TWEET_RULES = (
    "INSERT INTO tweet_rules (tag, seq) SELECT * FROM unnest(%s::text[], %s::bigint[])"
)
INSERT_RULES = (
    "INSERT INTO rules (tag, first_seq) SELECT * FROM unnest(%s::text[], %s::bigint[]) "
    "ON CONFLICT (tag) DO NOTHING"
)
UPSERT_USER = (
    "INSERT INTO users (id, username, name, object, updated_at) VALUES (%s,%s,%s,%s,%s) "
    "ON CONFLICT (id) DO UPDATE SET username = excluded.username, "
    "name = excluded.name, object = excluded.object, updated_at = excluded.updated_at"
)


DATA_ERRORS: tuple[type[Exception], ...] = (
    psycopg.errors.DataError,  # class 22 from the server: a value out of range, bad encoding
    psycopg.DataError,  # what psycopg cannot send (NUL in text)
    OverflowError,
    ValueError,
    TypeError,
)
"""What a statement of a job raises when a value cannot be stored: about the data, not
the store. Anything else (disk full, lost connection, a constraint) is the store's."""


class Seqs(Protocol):
    next_seq: int
    """The seq the next stored tweet takes; the writer resets it when a commit fails."""


@dataclass(frozen=True, slots=True)
class Batch:
    """An append's tweets and users, each with its receive time as a float and as text."""

    tweets: Sequence[Tweet]
    users: Sequence[dict[str, Any]]
    received: Received
    tweet_times: Sequence[str]
    user_times: Sequence[str]

    @classmethod
    def of(
        cls, tweets: Sequence[Tweet], users: Sequence[dict[str, Any]], received: Received
    ) -> Batch:
        tweet_times = received.tweet_times()
        # Once into objects: a batch from the parser holds columns (TweetRows), which
        # would build each tweet again at every pass over it.
        tweets = list(tweets)
        return cls(tweets, users, received, tweet_times, received.user_times())


def _text(value: Any) -> str | None:
    """An indexed text value: None, or text without NUL; anything else is a data error."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value.replace("\x00", "") if "\x00" in value else value


def _key(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError("NUL in an id or rule key")
    return value


def _row(
    tweet: Tweet, seq: int, received: str, received_at: float = 0.0, body: bytes = b""
) -> tuple[tuple[Any, ...], StoredTweet, list[str]]:
    body = body or stored_body(tweet, seq=seq, received_at=received)
    keys = list(dict.fromkeys(_key(rule.tag or rule.id) for rule in tweet.rules))
    username = _text(tweet.author_username)
    text = _text(tweet.text) or ""
    row = (
        seq,
        _key(tweet.id),
        _text(tweet.author_id),
        username,
        fold(username),
        text,
        text.lower(),
        _text(tweet.lang),
        tweet.created_at or received,
        received,
        bool(tweet.has_media),
        keys,
        body.decode(),
    )
    return row, StoredTweet.written(seq, tweet, body, received_at), keys


async def _known_ids(cur: Cursor, ids: list[str]) -> set[str]:
    await cur.execute("SELECT id FROM tweets WHERE id = ANY(%s)", [ids])
    return {str(row[0]) for row in await cur.fetchall()}


async def append_fast(cur: Cursor, seqs: Seqs, batch: Batch) -> AppendResult:
    """Store the batch in a few statements; raises on the first value it cannot store."""
    ids = [_key(tweet.id) for tweet in batch.tweets]
    known = await _known_ids(cur, ids) if ids else set()
    rows: list[tuple[Any, ...]] = []
    stored: list[StoredTweet] = []
    tags: list[str] = []
    tag_seqs: list[int] = []
    duplicates = 0
    for tweet, text, received_at in zip(
        batch.tweets, batch.tweet_times, batch.received.tweets, strict=True
    ):
        if tweet.id in known:
            duplicates += 1
            continue
        known.add(tweet.id)
        row, new, keys = _row(tweet, seqs.next_seq, text, received_at)
        seqs.next_seq += 1
        rows.append(row)
        stored.append(new)
        tags.extend(keys)
        tag_seqs.extend([new.seq] * len(keys))
    if rows:
        async with cur.copy(COPY_TWEETS) as copy:
            for row in rows:
                await copy.write_row(row)
    if tags:
        await cur.execute(INSERT_TWEET_RULES, [tags, tag_seqs])
        await cur.execute(INSERT_RULES, [tags, tag_seqs])
    if isinstance(batch.users, UserRows):  # built by the parser: no object built again
        users = [
            (_key(uid), _text(username), _text(name), obj.decode(), text)
            for uid, username, name, obj, text in batch.users.rows
        ]
    else:
        users = [
            user_row
            for user, text in zip(batch.users, batch.user_times, strict=True)
            if (user_row := _user_row(user, text))
        ]
    if users:
        await cur.executemany(UPSERT_USER, users)
    return AppendResult(stored=stored, duplicates=duplicates)


async def append_careful(cur: Cursor, seqs: Seqs, batch: Batch) -> AppendResult:
    """Store the batch a tweet at a time, each in a savepoint, leaving out (and listing)
    the ones that fail on their data; then the users, each in a savepoint."""
    conn = cur.connection
    stored: list[StoredTweet] = []
    unstorable: list[tuple[str, str]] = []
    duplicates = 0
    for tweet, text, received_at in zip(
        batch.tweets, batch.tweet_times, batch.received.tweets, strict=True
    ):
        seq = seqs.next_seq
        try:
            async with conn.transaction():
                if await _known_ids(cur, [_key(tweet.id)]):
                    duplicates += 1
                    continue
                row, new, keys = _row(tweet, seq, text, received_at)
                await cur.execute(INSERT_TWEET, row)
                if keys:
                    await cur.execute(INSERT_TWEET_RULES, [keys, [seq] * len(keys)])
                    await cur.execute(INSERT_RULES, [keys, [seq] * len(keys)])
        except DATA_ERRORS as exc:
            unstorable.append((str(tweet.id), f"{type(exc).__name__}: {exc}"[:200]))
            continue
        seqs.next_seq = seq + 1
        stored.append(new)
    for user, text in zip(batch.users, batch.user_times, strict=True):
        try:
            async with conn.transaction():
                user_row = _user_row(user, text)
                if user_row:
                    await cur.execute(UPSERT_USER, user_row)
        except DATA_ERRORS:
            continue  # the user object is left out; its tweets are stored
    return AppendResult(stored=stored, duplicates=duplicates, unstorable=tuple(unstorable))


def _user_row(user: dict[str, Any], received: str) -> tuple[Any, ...] | None:
    user_id = user.get("id")
    if not isinstance(user_id, str):  # parse gives ids as text; anything else is no user
        return None
    obj = stored_user(user, received)
    return (
        _key(user_id),
        _text(username_of(user)),
        _text(display_name_of(user)),
        orjson.dumps(obj).decode(),
        received,
    )


async def restore_rows(cur: Cursor, seqs: Seqs, batch: RestoreBatch) -> int:
    """Insert a restore's tweets under their own seqs and receive times, and upsert its
    users, in the writer's transaction; how many. ``seqs`` moves past the last seq, so
    the writer records their receive order as after an append."""
    rows: list[tuple[Any, ...]] = []
    tags: list[str] = []
    tag_seqs: list[int] = []
    # An id the archive holds twice (under two epochs) is stored once, at its first seq.
    ids = [_key(restored.tweet.id) for restored in batch.tweets]
    known = await _known_ids(cur, ids) if ids else set()
    for restored in batch.tweets:
        if restored.seq < seqs.next_seq:
            raise StoreError(f"a restore's seq {restored.seq} is not past the store's head")
        if restored.tweet.id in known:
            continue
        known.add(restored.tweet.id)
        received = time_from_unix(restored.received_at)
        row, _, keys = _row(
            restored.tweet, restored.seq, received, restored.received_at, restored.body
        )
        rows.append(row)
        tags.extend(keys)
        tag_seqs.extend([restored.seq] * len(keys))
        seqs.next_seq = restored.seq + 1
    if rows:
        async with cur.copy(COPY_TWEETS) as copy:
            for row in rows:
                await copy.write_row(row)
    if tags:
        await cur.execute(INSERT_TWEET_RULES, [tags, tag_seqs])
        await cur.execute(INSERT_RULES, [tags, tag_seqs])
    if batch.tweets:
        received = time_from_unix(batch.tweets[-1].received_at)
        latest = {uid: user for user in batch.users if isinstance(uid := user.get("id"), str)}
        users = [found for user in latest.values() if (found := _user_row(user, received))]
        if users:
            await cur.executemany(UPSERT_USER, users)
    if batch.state:
        await cur.executemany(
            "INSERT INTO source_state (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            list(batch.state.items()),
        )
    if batch.epoch:
        await cur.execute("UPDATE meta SET value = %s WHERE key = 'epoch'", [batch.epoch])
    return len(rows)
