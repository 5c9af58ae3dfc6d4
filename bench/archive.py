"""The archive part of ``make bench``: tweets a second written to a loopback S3 server.

A store filled by the embedded relay at max speed (its ingest rate is the figure beside),
then the archive writer (relay/jobs/archive.py) copying all of it, objects of 10,000
tweets, to moto's S3 server in its own process on 127.0.0.1 (so moto's Python does not
share this process's interpreter). Encoding (JSON lines + gzip) and upload are timed
apart, to say which bounds the figure.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.table import Row

FIREHOSE = 5_700
TARGET = 3 * FIREHOSE
OBJECT_TWEETS = 10_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("moto's server did not start")


def archive(folder: Path, count: int) -> list[Row]:
    from bench.stores import ingest as relay_ingest_in_process
    from relay.config import Settings
    from relay.sources.synth import write_stream

    part = folder / "archive"
    part.mkdir()
    stream, db = part / "stream.jsonl", part / "relay.db"
    write_stream(stream, count, seed=15)
    settings = Settings.from_mapping(
        {"port": 0, "replay": str(stream), "speed": "max", "loop": False, "db": str(db)}
    )
    ingest_rate, _ = asyncio.run(relay_ingest_in_process(settings, count))
    port = _free_port()
    moto = _moto(port)
    try:
        rate, encode_share, size = asyncio.run(_archive_all(db, port, count))
    finally:
        moto.kill()
        moto.wait()
    verdict = "met" if rate >= TARGET else "MISSED"
    bound = (
        f"JSON lines + gzip {encode_share:.0%} of the time, store reads and upload to moto "
        f"{1 - encode_share:.0%}"
    )
    return [
        Row(
            "archive",
            f"archive writer: {count:,} stored tweets to a loopback S3 server (moto, own "
            f"process), objects of {OBJECT_TWEETS:,} tweets gzipped, beside the ingest rate "
            "of the same store",
            f"{rate:,.0f} tweets/s archived ({size / count:,.0f} bytes a tweet gzipped; "
            f"{bound}); ingest {ingest_rate:,.0f} tweets/s",
            "",
            "",
            f"target >= {TARGET:,} tweets/s (5,700 x 3): {verdict}",
        )
    ]


async def _archive_all(db: Path, port: int, count: int) -> tuple[float, float, int]:
    import boto3

    from relay.archive.bucket import Bucket, parse_url
    from relay.jobs import archive as job
    from relay.jobs.archive import Archiver
    from relay.obs.metrics import Metrics
    from relay.store.open import open_store

    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_REGION": "us-east-1",
    }
    boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    ).create_bucket(Bucket="bench")
    from relay.config import Settings

    store = await open_store(Settings.from_mapping({"db": str(db)}), writer=True)
    await store.claim_writer()
    bucket = Bucket(parse_url("s3://bench/tweets"), env)
    metrics = Metrics()
    writer = Archiver(store, bucket, metrics, object_tweets=OBJECT_TWEETS, object_interval=3600)
    encoding = 0.0
    encode = job.encode_object

    def timed(tweets: object) -> bytes:
        nonlocal encoding
        began = time.perf_counter()
        data = encode(tweets)  # type: ignore[arg-type]
        encoding += time.perf_counter() - began
        return data

    job.encode_object = timed  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        while await writer.step(final=True):
            pass
        elapsed = time.perf_counter() - started
    finally:
        job.encode_object = encode
        await store.close()
    archived = int(metrics.archive_tweets._value.get())
    assert archived == count, f"archived {archived} of {count}"
    size = int(metrics.archive_bytes._value.get())
    return count / elapsed, encoding / elapsed, size
