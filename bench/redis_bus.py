"""The Redis bus: tweets a second through one publisher and one follower, and Redis memory.

Starts its own ``redis-server`` (no persistence, a free port) unless ``--url`` is given,
publishes ``--tweets`` tweets of about ``--size`` bytes through :class:`RedisBus` with one
follower reading, then reports the rate and what the stream costs in Redis memory
(``INFO memory`` and ``MEMORY USAGE`` of the stream) at ``--maxlen``. That memory sets the
default ``maxlen`` for small add-ons. Run with ``python -m bench.redis_bus``.

A follower more than ``maxlen`` entries behind finds what it has not read trimmed
(``follower_got`` below ``tweets``): serving processes then read the store.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import socket
import string
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import redis

from relay.bus.redis import RedisBus
from relay.store import StoredTweet


def make_tweets(count: int, size: int, seed: int = 1) -> list[StoredTweet]:
    rng = random.Random(seed)
    letters = string.ascii_letters + "     "
    out = []
    for seq in range(1, count + 1):
        text = "".join(rng.choices(letters, k=200))
        filler = "".join(rng.choices(letters, k=max(0, size - 350)))
        body = orjson.dumps(
            {"id": str(1_800_000_000_000_000_000 + seq), "text": text, "author_id": "12345",
             "lang": "en", "created_at": "2026-11-23T17:00:00.000Z", "entities": filler}
        )  # fmt: skip
        out.append(
            StoredTweet(seq, ("all", "rule:news"), body, "en", "someone", seq % 5 == 0, text)
        )
    return out


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("needs redis-server (apt-get install redis-server) or --url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", folder, "--logfile", f"{folder}/redis.log"]
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        try:
            client = redis.Redis.from_url(url)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            client.close()
            yield url
        finally:
            proc.kill()
            proc.wait()


async def run(url: str, count: int, size: int, maxlen: int) -> dict[str, Any]:
    tweets = make_tweets(count, size)
    client = redis.Redis.from_url(url)
    client.flushall()
    before = int(client.info("memory")["used_memory"])
    epoch = f"bench{time.time_ns()}"
    publisher = RedisBus(url, epoch=epoch, maxlen=maxlen, queue_limit=count)
    follower = RedisBus(url, epoch=epoch, maxlen=maxlen)
    await publisher.start()
    received = 0
    published_at = 0.0

    async def follow() -> None:
        # A follower that falls more than maxlen behind finds its next entries trimmed:
        # it reads on from the oldest kept (a real one fills the jump from the store).
        nonlocal received
        async for batch in follower.follow(0):
            received += sum(isinstance(item, StoredTweet) for item in batch)
            if any(isinstance(item, StoredTweet) and item.seq == count for item in batch):
                return

    async def sent() -> None:
        nonlocal published_at
        value = publisher.metrics.bus_published.labels("tweet")
        while value._value.get() < count:
            await asyncio.sleep(0.005)
        published_at = time.perf_counter()

    sender = asyncio.create_task(sent())

    reader = asyncio.create_task(follow())
    started = time.perf_counter()
    for first in range(0, count, 100):  # committed batches of 100
        publisher.publish(tweets[first : first + 100])
        await asyncio.sleep(0)
    await reader
    elapsed = time.perf_counter() - started
    await sender
    await publisher.close()
    await follower.close()
    key = f"relay:tweets:{epoch}"
    used = int(client.info("memory")["used_memory"]) - before
    stream = int(client.memory_usage(key, samples=0) or 0)
    length = int(client.xlen(key))
    client.close()
    body = sum(len(t.body) for t in tweets) / count
    return {
        "tweets": count,
        "body_bytes": round(body),
        "published_per_s": round(count / (published_at - started)),
        "end_to_end_per_s": round(count / elapsed),
        "follower_got": received,
        "maxlen": maxlen,
        "xlen": length,
        "stream_bytes": stream,
        "used_memory_delta": used,
        "bytes_per_entry": round(stream / max(1, length)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_bus", description=__doc__)
    parser.add_argument("--url", help="a Redis to use (it is FLUSHALLed); default: start one")
    parser.add_argument("--tweets", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1500, help="body bytes, about")
    parser.add_argument("--maxlen", type=int, default=5000)
    args = parser.parse_args(argv)
    if args.url:
        result = asyncio.run(run(args.url, args.tweets, args.size, args.maxlen))
    else:
        with redis_server() as url:
            result = asyncio.run(run(url, args.tweets, args.size, args.maxlen))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
