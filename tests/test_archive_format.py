"""The archive's format (relay.core.archive) and its bucket (relay.archive.bucket) on a
real S3-compatible server (moto on loopback) and a real folder."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import pytest

from relay.archive.bucket import Bucket, parse_url
from relay.core.archive import (
    ArchivedTweet,
    ObjectName,
    compact_time,
    decode_object,
    encode_line,
    encode_object,
    name_for,
    parse_key,
)
from relay.errors import ArchiveDamaged, ArchiveUnreachable, ConfigError
from tests.s3_server import S3Server

T0 = 1_700_000_000.123  # 2023-11-14T22:13:20.123Z


def tweet(seq: int, received: float = T0, epoch: str = "ab12cd34ef56ab78") -> ArchivedTweet:
    body = b'{"id":"%d","text":"caf\xc3\xa9 %d"}' % (1000 + seq, seq)
    return ArchivedTweet(epoch, seq, received, ("all", "rule:cats"), body)


def test_a_key_names_epoch_start_epoch_seq_range_and_time_range() -> None:
    name = ObjectName(T0, "ab12cd34ef56ab78", 1, 500, T0 + 1, T0 + 2.5)
    assert name.key("tweets/") == (
        "tweets/20231114T221320.123Z-ab12cd34ef56ab78/"
        "00000000000000000001-00000000000000000500"
        "_20231114T221321.123Z_20231114T221322.623Z.jsonl.gz"
    )
    assert name.key("") == name.key("tweets").removeprefix("tweets/")
    assert parse_key(name.key("deep/prefix")) == name


def test_keys_sort_in_order_across_epochs_and_within_one() -> None:
    names = [
        ObjectName(T0, "ffff", 1, 9, T0, T0 + 1),
        ObjectName(T0, "ffff", 10, 100, T0 + 1, T0 + 2),
        ObjectName(T0 + 50, "0000", 1, 5, T0 + 50, T0 + 51),  # a later epoch, lower id
    ]
    keys = [name.key("p") for name in names]
    assert sorted(reversed(keys)) == keys


def test_a_stray_key_is_not_an_object() -> None:
    assert parse_key("tweets/.relay-write-check") is None
    assert parse_key("tweets/x/1-2_a_b.jsonl.gz") is None
    # file:// (obstore's local store) writes "<key>#<n>" and renames it to the key: a
    # kill -9 mid-write leaves that file, which no reader takes for an object.
    whole = ObjectName(T0, "ab12cd34ef56ab78", 1, 500, T0 + 1, T0 + 2.5).key("tweets")
    assert parse_key(whole + "#1") is None
    assert compact_time(0) == "19700101T000000.000Z"


def test_a_line_embeds_the_stored_body_as_it_is() -> None:
    assert encode_line(tweet(7)) == (
        b'{"epoch":"ab12cd34ef56ab78","seq":7,"received_at":"2023-11-14T22:13:20.123Z",'
        b'"channels":["all","rule:cats"],"tweet":{"id":"1007","text":"caf\xc3\xa9 7"}}\n'
    )


def test_an_object_is_the_same_bytes_every_time_and_reads_back() -> None:
    tweets = [tweet(seq, T0 + seq) for seq in range(1, 4)]
    data = encode_object(tweets)
    assert data == encode_object(tweets)
    assert data[4:8] == b"\0\0\0\0"  # gzip's mtime field: no timestamp
    assert list(decode_object(data)) == tweets
    assert name_for(T0, tweets) == ObjectName(T0, tweets[0].epoch, 1, 3, T0 + 1, T0 + 3)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"not gzip", "not a gzip file"),
        (gzip.compress(b"[1]\n"), "line 1: not a JSON object"),
        (gzip.compress(b'{"epoch":"e","seq":0}\n'), "line 1: no seq"),
        (gzip.compress(encode_line(tweet(1)) + b"{\n"), "line 2: not JSON"),
    ],
)
def test_an_object_the_archive_did_not_write_is_named_with_its_line(data: bytes, says: str) -> None:
    with pytest.raises(ArchiveDamaged, match=says):
        list(decode_object(data, where="k.jsonl.gz"))


@pytest.mark.parametrize(
    ("text", "scheme", "bucket", "prefix"),
    [
        ("s3://bucket", "s3", "bucket", ""),
        ("s3://bucket/", "s3", "bucket", ""),
        ("s3://bucket/tweets/2026/", "s3", "bucket", "tweets/2026"),
        ("file:///var/archive", "file", "", ""),
    ],
)
def test_an_archive_url_is_s3_or_a_folder(text: str, scheme: str, bucket: str, prefix: str) -> None:
    url = parse_url(text)
    assert (url.scheme, url.bucket, url.prefix) == (scheme, bucket, prefix)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("https://bucket/x", "unknown scheme"),
        ("bucket/prefix", "unknown scheme"),
        ("s3:///prefix", "names no bucket"),
        ("s3://bucket/a//b", "empty or dot segment"),
        ("s3://bucket/a/../b", "empty or dot segment"),
        ("file://host/path", "a file URL has no host"),
        ("file:relative", "must be absolute"),
        ("s3://bucket/x?versionId=1", "no query"),
    ],
)
def test_any_other_url_is_one_clear_line(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as raised:
        parse_url(text)
    assert "\n" not in str(raised.value)


def test_a_bucket_puts_lists_gets_and_deletes_on_s3(s3_server: S3Server) -> None:
    bucket = Bucket(parse_url(s3_server.url("tweets")), s3_server.environ)

    async def go() -> None:
        await bucket.check_writable()
        await bucket.put("e/2.jsonl.gz", b"two")
        await bucket.put("e/1.jsonl.gz", b"one")
        assert await bucket.keys() == ["e/1.jsonl.gz", "e/2.jsonl.gz"]
        assert await bucket.get("e/1.jsonl.gz") == b"one"
        assert await bucket.get("e/3.jsonl.gz") is None
        await bucket.delete("e/2.jsonl.gz")
        assert await bucket.keys("e") == ["e/1.jsonl.gz"]

    asyncio.run(go())
    assert s3_server.keys() == ["tweets/e/1.jsonl.gz"]  # the write check left nothing


def test_a_bucket_works_the_same_on_a_folder(tmp_path: Path) -> None:
    bucket = Bucket(parse_url(f"file://{tmp_path}/archive"))

    async def go() -> None:
        await bucket.check_writable()
        await bucket.put("e/1.jsonl.gz", b"one")
        await bucket.put("e/1.jsonl.gz", b"one again")
        assert await bucket.keys() == ["e/1.jsonl.gz"]
        assert await bucket.get("e/1.jsonl.gz") == b"one again"

    asyncio.run(go())
    assert sorted(p.name for p in (tmp_path / "archive" / "e").iterdir()) == ["1.jsonl.gz"]


def test_a_missing_bucket_is_one_line(s3_server: S3Server) -> None:
    bucket = Bucket(parse_url("s3://no-such-bucket/x"), s3_server.environ)
    with pytest.raises(ConfigError, match="no such bucket") as raised:
        asyncio.run(bucket.check_writable())
    assert "\n" not in str(raised.value)


def test_an_endpoint_that_does_not_answer_is_unreachable(s3_server: S3Server) -> None:
    environ = s3_server.environ
    s3_server.stop()
    bucket = Bucket(parse_url(s3_server.url()), environ)
    with pytest.raises(ArchiveUnreachable, match="no answer"):
        asyncio.run(bucket.check_writable())
    s3_server.start()  # back on the same port, the bucket still there
    asyncio.run(bucket.check_writable())


def test_a_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="archive folder"):
        Bucket(parse_url(f"file://{tmp_path}/file/archive"))


def test_the_start_waits_for_an_endpoint_that_does_not_answer(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    from relay.archive.bucket import wait_until_writable

    caplog.set_level("INFO", logger="relay.archive")
    environ = s3_server.environ
    s3_server.stop()
    bucket = Bucket(parse_url(s3_server.url()), environ)
    tries = 0

    async def sleep(seconds: float) -> None:
        nonlocal tries
        tries += 1
        if tries == 2:  # back after two failed tries
            await asyncio.to_thread(s3_server.start)

    asyncio.run(wait_until_writable(bucket, sleep))
    assert tries == 2
    assert "waiting for the archive" in caplog.text and "answers again" in caplog.text
