"""The archive writer on real stores (SQLite and PostgreSQL) and a real S3 server (moto on
loopback): objects cut by seq, a crash's repeated upload, retention held back, deletions
rewritten out of the bucket."""

from __future__ import annotations

import asyncio
from typing import Any

from relay.archive.bucket import Bucket, parse_url
from relay.core.archive import CURSOR_KEY, NEXT_KEY, decode_object, parse_key, parse_mark
from relay.jobs.archive import Archiver
from relay.jobs.retention import Retention, apply_retention
from relay.obs.metrics import Metrics
from tests.pg_server import StoreMaker
from tests.s3_server import S3Server
from tests.test_retention import T0, batch, seqs


def archiver(store: Any, bucket: Bucket, tweets: int = 10, interval: float = 3600) -> Archiver:
    return Archiver(store, bucket, Metrics(), object_tweets=tweets, object_interval=interval)


async def archived(bucket: Bucket) -> list[tuple[str, list[int]]]:
    found = []
    for key in await bucket.keys():
        if parse_key(key) is not None:
            data = await bucket.get(key)
            assert data is not None
            found.append((key, [t.seq for t in decode_object(data)]))
    return found


def test_objects_are_cut_by_count_and_the_rest_on_a_clean_stop(
    make_store: StoreMaker, s3_server: S3Server
) -> None:
    async def scenario() -> None:
        store = await make_store()
        bucket = Bucket(parse_url(s3_server.url("t")), s3_server.environ)
        try:
            await store.append(*batch(1, 25, "a1", ("cats",)), T0)
            writer = archiver(store, bucket)
            assert await writer.step() and await writer.step()
            assert not await writer.step()  # 5 left: not a full object, not due yet
            assert await writer.flush(10.0)
            objects = await archived(bucket)
            assert [s for _, s in objects] == [
                list(range(1, 11)),
                list(range(11, 21)),
                list(range(21, 26)),
            ]
            name = parse_key(objects[0][0])
            assert name is not None and name.epoch == store.epoch and name.epoch_start == T0
            mark = parse_mark(await store.get_state(CURSOR_KEY))
            assert mark is not None and mark.seq == 25
        finally:
            await store.close()

    asyncio.run(scenario())


def test_an_upload_repeated_after_a_crash_writes_the_same_key_and_bytes(
    make_store: StoreMaker, s3_server: S3Server
) -> None:
    async def scenario() -> None:
        store = await make_store()
        bucket = Bucket(parse_url(s3_server.url("t")), s3_server.environ)
        try:
            await store.append(*batch(1, 10, "a1", ("cats",)), T0)
            assert await archiver(store, bucket).step()
            ((key, _),) = await archived(bucket)
            first = await bucket.get(key)
            # As if killed after the upload but before the cursor moved: the range is
            # recorded, the cursor still before it.
            recorded = await store.get_state(NEXT_KEY)
            await store.set_state(CURSOR_KEY, "")
            await store.append(*batch(11, 10, "a1", ("cats",)), T0 + 1)
            assert await archiver(store, bucket).step()
            assert await store.get_state(NEXT_KEY) == recorded
            assert [k for k, _ in await archived(bucket)] == [key]
            assert await bucket.get(key) == first
        finally:
            await store.close()

    asyncio.run(scenario())


def test_retention_never_deletes_a_tweet_not_yet_archived(
    make_store: StoreMaker, s3_server: S3Server
) -> None:
    async def scenario() -> None:
        store = await make_store()
        bucket = Bucket(parse_url(s3_server.url("t")), s3_server.environ)
        metrics = Metrics()
        retention = Retention(max_tweets=5, max_age=50, batch=100, archived=True)
        try:
            await store.append(*batch(1, 30, "a1", ("cats",)), T0)
            assert await apply_retention(store, retention, T0 + 100, metrics) == 0
            assert metrics.retention_waiting._value.get() == 30
            assert await archiver(store, bucket).step()  # seqs 1-10
            assert await apply_retention(store, retention, T0 + 100, metrics) == 10
            assert (await seqs(store))[0] == 11
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_deleted_tweet_is_rewritten_out_of_its_object(
    make_store: StoreMaker, s3_server: S3Server
) -> None:
    async def scenario() -> None:
        store = await make_store()
        bucket = Bucket(parse_url(s3_server.url("t")), s3_server.environ)
        try:
            tweets, users = batch(1, 20, "a1", ("cats",))
            await store.append(tweets, users, T0)
            writer = archiver(store, bucket)
            await writer.flush(10.0)
            await make_store.admin().queue_deletions([tweets[2].id, tweets[15].id])
            assert len(await store.apply_deletions(100)) == 2
            assert await writer.apply_deletions() == 2  # both objects, one PUT each
            objects = await archived(bucket)
            assert [s for _, s in objects] == [
                [s for s in range(1, 11) if s != 3],
                [s for s in range(11, 21) if s != 16],
            ]
            assert await writer.apply_deletions() == 0  # its cursor moved past them
        finally:
            await store.close()

    asyncio.run(scenario())
