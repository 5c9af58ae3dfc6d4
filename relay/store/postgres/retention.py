"""Deleting the oldest tweets of the PostgreSQL store (see relay.store.sqlite.retention).

Runs as one job of the writer (inside its lease-checked transaction): a fenced writer
can no more delete than append. The full-text index is an index on ``tweets``, so it
follows the rows by itself.
"""

from __future__ import annotations

from datetime import UTC, datetime

from relay.store.postgres.write import Cursor
from relay.store.types import Trimmed


async def trim_oldest(
    cur: Cursor, *, through_seq: int, received_before: float | None, limit: int
) -> Trimmed:
    await cur.execute("SELECT coalesce(max(seq), 0) FROM tweets")
    head = int((await cur.fetchone() or (0,))[0])
    before = datetime.fromtimestamp(received_before, UTC) if received_before is not None else None
    await cur.execute(
        "SELECT seq, received_at FROM tweets WHERE seq < %s ORDER BY seq LIMIT %s", (head, limit)
    )
    last = 0
    for seq, received in await cur.fetchall():
        if seq > through_seq and (before is None or received >= before):
            break
        last = int(seq)
    if last:
        await cur.execute("SELECT tag FROM rules")
        for (tag,) in await cur.fetchall():
            await cur.execute("DELETE FROM tweet_rules WHERE tag = %s AND seq <= %s", (tag, last))
        await cur.execute("DELETE FROM tweets WHERE seq <= %s RETURNING author_id", (last,))
        deleted = await cur.fetchall()
        authors = sorted({row[0] for row in deleted if row[0] is not None})
        await cur.execute(
            "DELETE FROM users WHERE id = ANY(%s) "
            "AND NOT EXISTS (SELECT 1 FROM tweets WHERE tweets.author_id = users.id)",
            (authors,),
        )
    await cur.execute("SELECT coalesce(min(seq), 0) FROM tweets")
    oldest = int((await cur.fetchone() or (0,))[0])
    return Trimmed(len(deleted) if last else 0, oldest)
