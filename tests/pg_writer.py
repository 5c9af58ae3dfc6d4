"""A writer process for the lease tests: ``python -m tests.pg_writer URL BASE TTL``.

Opens the PostgreSQL store as a writer, claims the lease (printing ``standby: ...``
while another holds it), then appends one tweet at a time (ids from ``BASE`` up),
printing ``stored SEQ ID`` after each commit, until killed or fenced (``fenced: ...``,
exit 3). Lines are flushed at once: the test reads them as they come.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from relay.core.tweets import parse_line
from relay.errors import WriterFenced
from relay.store.postgres.store import PostgresStore


def say(text: str) -> None:
    print(text, flush=True)


def tweet_line(number: int) -> bytes:
    return orjson.dumps(
        {
            "data": {"id": str(number), "text": f"tweet {number}", "author_id": "1"},
            "matching_rules": [{"id": "1", "tag": "cats"}],
        }
    )


async def main(url: str, base: int, ttl: float) -> int:
    store = await PostgresStore.open(url, writer=True, lease_ttl=ttl)
    await store.claim_writer(lambda line: say(line))
    say(f"claimed {store.holder}")
    number = base
    try:
        while True:
            number += 1
            result = await store.append(parse_line(tweet_line(number)).tweets, [], 1.0)
            for stored in result.stored:
                say(f"stored {stored.seq} {number}")
            await asyncio.sleep(0.02)
    except WriterFenced as exc:
        say(f"fenced: {exc}")
        return 3


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))
