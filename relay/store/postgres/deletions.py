"""The PostgreSQL side of :mod:`relay.jobs.deletions`: queue, apply, read the record."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX
from relay.errors import StoreError
from relay.store.postgres.conn import connect, describe
from relay.store.postgres.write import Cursor
from relay.store.types import Deleted


async def queue_deletions(url: str, ids: Sequence[str]) -> int:
    conn = await connect(url, wait=False)
    try:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO deletions (tweet_id) VALUES (%s)", [(i,) for i in ids]
            )
        await conn.commit()
        return len(ids)
    except psycopg.Error as exc:
        raise StoreError(f"cannot queue deletions in {describe(url)}: {exc}") from None
    finally:
        await conn.close()


async def apply_pending(cur: Cursor, limit: int) -> list[Deleted]:
    """Apply up to ``limit`` queued requests inside the writer's transaction."""
    await cur.execute(
        "SELECT n, tweet_id FROM deletions WHERE applied_n IS NULL ORDER BY n LIMIT %s", (limit,)
    )
    pending = await cur.fetchall()
    await cur.execute("SELECT coalesce(max(applied_n), 0) FROM deletions")
    number = int((await cur.fetchone() or (0,))[0])
    applied: list[Deleted] = []
    for n, tweet_id in pending:
        await cur.execute(
            "DELETE FROM tweets WHERE id = %s RETURNING seq, rules, author_id", (tweet_id,)
        )
        row = await cur.fetchone()
        seq, channels = 0, ()
        if row is not None:
            seq, rules, author = int(row[0]), list(dict.fromkeys(row[1])), row[2]
            channels = (ALL_CHANNEL, *(RULE_PREFIX + key for key in rules))
            for key in rules:
                await cur.execute("DELETE FROM tweet_rules WHERE tag = %s AND seq = %s", (key, seq))
            if author is not None:
                await cur.execute(
                    "DELETE FROM users WHERE id = %s AND NOT EXISTS "
                    "(SELECT 1 FROM tweets WHERE author_id = %s)",
                    (author, author),
                )
        number += 1
        await cur.execute(
            "UPDATE deletions SET applied_n = %s, applied_at = now(), seq = %s, channels = %s "
            "WHERE n = %s",
            (number, seq, list(channels), n),
        )
        applied.append(Deleted(number, tweet_id, seq, channels))
    return applied


async def deletions_after(cur: Cursor, after: int, limit: int) -> list[Deleted]:
    await cur.execute(
        "SELECT applied_n, tweet_id, seq, channels FROM deletions WHERE applied_n > %s "
        "ORDER BY applied_n LIMIT %s",
        (after, limit),
    )
    return [
        Deleted(int(number), tweet_id, int(seq), tuple(channels or ()))
        for number, tweet_id, seq, channels in await cur.fetchall()
    ]


async def last_deletion(cur: Cursor) -> int:
    await cur.execute("SELECT coalesce(max(applied_n), 0) FROM deletions")
    return int((await cur.fetchone() or (0,))[0])
