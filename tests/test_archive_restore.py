"""An archive read back: ``relay run --replay URL`` into a fresh store (same ids, same
served objects, same order; ``--since``/``--until``; deletions hold) and ``relay
restore URL`` into an empty store on both stores (seqs and receive times kept, the
cursor set, a new epoch; a store that holds tweets refused; bad URLs one line, exit 2).

The archives are written from a real store with :mod:`relay.core.archive`, as the
archive writer writes them, to a folder (``file://``) and to moto's S3 server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.app.commands.restore import restore
from relay.archive.bucket import Bucket, parse_url
from relay.config import Settings
from relay.core.archive import (
    CURSOR_KEY,
    ArchivedTweet,
    decode_object,
    encode_object,
    name_for,
)
from relay.core.stored import parse_stored
from relay.core.tweets import parse_line
from relay.errors import StoreNotEmpty
from relay.sources.archive import ArchiveSource
from relay.store.sqlite.store import SQLiteStore
from relay.testing import RelayServer
from tests.pg_server import StoreMaker
from tests.s3_server import S3Server
from tests.support import ROOT, stream_line

pytest.importorskip("obstore")

TWEETS = 9
PER_OBJECT = 4


async def fill(store: Any) -> None:
    """Nine tweets in three appends (three receive times), one of them then deleted."""
    for start, received in ((1, 1_700_000_000.001), (4, 1_700_000_060.25), (7, 1_700_000_120.5)):
        parsed = [
            parse_line(stream_line(i, f"tweet {i}", author=f"u{i % 2}"))
            for i in range(start, start + 3)
        ]
        tweets = [t for p in parsed for t in p.tweets]
        users = [u for p in parsed for u in p.users]
        await store.append(tweets, users, received)


async def archive(store: Any, url: str, environ: dict[str, str] | None = None) -> list[bytes]:
    """Write what ``store`` holds to the archive at ``url``; the stored bodies, in order."""
    head = await store.head()
    rows = await store.read_after("tweets", 0, head, 1000)
    tweets = [ArchivedTweet(store.epoch, r.seq, r.received, r.channels, r.body) for r in rows]
    bucket = Bucket(parse_url(url), environ)
    start = tweets[0].received
    for first in range(0, len(tweets), PER_OBJECT):
        part = tweets[first : first + PER_OBJECT]
        await bucket.put(name_for(start, part).key(""), encode_object(part))
    return [r.body for r in rows]


def without_seq(body: bytes) -> dict[str, Any]:
    value = orjson.loads(body)
    value.pop("seq")
    return dict(value)


def test_a_stored_object_parses_into_the_tweet_that_stores_the_same_bytes() -> None:
    async def run(tmp: Path) -> None:
        store = await SQLiteStore.open(tmp / "a.db")
        await fill(store)
        rows = await store.read_after("tweets", 0, 99, 99)
        await store.close()
        again = await SQLiteStore.open(tmp / "b.db")
        for row in rows:
            parsed = parse_stored(row.body)
            await again.append(list(parsed.tweets), list(parsed.users), row.received)
        copies = await again.read_after("tweets", 0, 99, 99)
        await again.close()
        assert [c.body for c in copies] == [r.body for r in rows]

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp)))


def test_restore_keeps_seqs_receive_times_and_bodies_sets_the_cursor_and_a_new_epoch(
    make_store: StoreMaker, tmp_path: Path
) -> None:
    url = f"file://{tmp_path / 'archive'}"

    async def run() -> None:
        source = await make_store("a")
        await fill(source)
        await make_store.admin("a").queue_deletions(["5"])
        assert [d.tweet_id for d in await source.apply_deletions(10)] == ["5"]
        bodies = await archive(source, url)
        originals = await source.read_after("tweets", 0, 99, 99)
        await source.close()

        done = await restore(make_store.settings("b"), url)
        assert (done.tweets, done.head) == (TWEETS - 1, TWEETS)
        target = await make_store("b")
        restored = await target.read_after("tweets", 0, 99, 99)
        assert [r.body for r in restored] == bodies  # byte for byte, seqs included
        assert [(r.seq, r.received) for r in restored] == [(r.seq, r.received) for r in originals]
        assert await target.tweet("5") is None
        assert await target.current_epoch() == done.epoch != source.epoch
        cursor = orjson.loads(await target.get_state(CURSOR_KEY) or "{}")
        assert cursor["epoch"] == done.epoch and cursor["seq"] == TWEETS
        user = await target.user("u1")
        assert user is not None and orjson.loads(user)["username"] == "user_u1"
        later = await target.append(parse_line(stream_line(100)).tweets, [], 1_700_000_200.0)
        assert [t.seq for t in later.stored] == [TWEETS + 1]
        await target.close()

        with pytest.raises(StoreNotEmpty, match="already holds tweets"):
            await restore(make_store.settings("b"), url)

    asyncio.run(run())


def _replayed(relay: RelayServer) -> list[bytes]:
    relay.wait_replayed()
    store = relay.relay.store if relay.relay is not None else None
    assert store is not None
    return [r.body for r in relay.call(store.read_after("tweets", 0, 999, 999))]


@pytest.mark.parametrize("where", ["file", "s3"])
def test_a_replay_of_an_archive_gives_the_same_ids_and_objects_in_order(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ: dict[str, str] | None = None
    if where == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        url, environ = server.url("tweets"), server.environ
        for key, value in environ.items():
            monkeypatch.setenv(key, value)
    else:
        url = f"file://{tmp_path / 'archive'}"

    async def write() -> list[bytes]:
        store = await SQLiteStore.open(tmp_path / "a.db")
        await fill(store)
        try:
            return await archive(store, url, environ)
        finally:
            await store.close()

    bodies = asyncio.run(write())
    with RelayServer(url, store=tmp_path / "b.db") as relay:
        replayed = _replayed(relay)
    assert [without_seq(b) for b in replayed] == [without_seq(b) for b in bodies]
    assert replayed == bodies  # nothing stored before: the same seqs too

    with RelayServer(url, store=tmp_path / "c.db", replay_since="3", replay_until="6") as relay:
        assert [orjson.loads(b)["id"] for b in _replayed(relay)] == ["3", "4", "5", "6"]
    since = "2023-11-14T22:14:20.250Z"  # the second append's receive time
    with RelayServer(url, store=tmp_path / "d.db", replay_since=since) as relay:
        assert [orjson.loads(b)["id"] for b in _replayed(relay)] == [str(i) for i in range(4, 10)]


def test_a_tweet_the_new_store_has_deleted_never_comes_back_through_a_replay(
    tmp_path: Path,
) -> None:
    url = f"file://{tmp_path / 'archive'}"

    async def prepare() -> None:
        store = await SQLiteStore.open(tmp_path / "a.db")
        await fill(store)
        await archive(store, url)
        await store.close()
        fresh = await SQLiteStore.open(tmp_path / "b.db")
        await fresh.close()
        from relay.store.sqlite.admin import SQLiteAdmin

        await SQLiteAdmin(str(tmp_path / "b.db")).queue_deletions(["2", "7"])
        fresh = await SQLiteStore.open(tmp_path / "b.db")
        await fresh.apply_deletions(10)
        await fresh.close()

    asyncio.run(prepare())
    with RelayServer(url, store=tmp_path / "b.db", epoch=None) as relay:
        ids = [orjson.loads(b)["id"] for b in _replayed(relay)]
    assert ids == ["1", "3", "4", "5", "6", "8", "9"]


def test_a_deletion_still_queued_in_the_new_store_holds_through_a_replay(
    tmp_path: Path,
) -> None:
    """``relay delete`` on the new store before the replay starts: the request is only
    queued (no writer ran yet), and the tweet still never comes back."""
    url = f"file://{tmp_path / 'archive'}"

    async def prepare() -> None:
        from relay.store.sqlite.admin import SQLiteAdmin

        store = await SQLiteStore.open(tmp_path / "a.db")
        await fill(store)
        await archive(store, url)
        await store.close()
        await (await SQLiteStore.open(tmp_path / "b.db")).close()
        await SQLiteAdmin(str(tmp_path / "b.db")).queue_deletions(["4", "8"])

    asyncio.run(prepare())
    with RelayServer(url, store=tmp_path / "b.db", epoch=None) as relay:
        ids = [orjson.loads(b)["id"] for b in _replayed(relay)]
    assert ids == ["1", "2", "3", "5", "6", "7", "9"]


def test_a_restore_leaves_out_what_the_new_store_records_or_queues_as_deleted(
    make_store: StoreMaker, tmp_path: Path
) -> None:
    url = f"file://{tmp_path / 'archive'}"

    async def run() -> None:
        source = await make_store("a")
        await fill(source)
        await archive(source, url)
        await source.close()
        target = await make_store("b")
        await make_store.admin("b").queue_deletions(["2"])
        await target.apply_deletions(10)  # recorded (found nowhere: the store is empty)
        await target.close()
        await make_store.admin("b").queue_deletions(["7", "9"])  # queued only

        done = await restore(make_store.settings("b"), url)
        assert done.tweets == TWEETS - 3
        target = await make_store("b")
        ids = [orjson.loads(r.body)["id"] for r in await target.read_after("tweets", 0, 99, 99)]
        assert ids == ["1", "3", "4", "5", "6", "8"]
        assert await target.tweet("7") is None
        await target.close()

    asyncio.run(run())


def _relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_relay_restore_from_s3_says_how_it_went_in_plain_lines(
    s3_server: S3Server, tmp_path: Path
) -> None:
    async def write() -> None:
        store = await SQLiteStore.open(tmp_path / "a.db")
        await fill(store)
        await archive(store, s3_server.url("tweets"), s3_server.environ)
        await store.close()

    asyncio.run(write())
    done = _relay(
        "restore", s3_server.url("tweets"), "--db", str(tmp_path / "b.db"), env=s3_server.environ
    )
    assert done.returncode == 0, done.stderr
    assert "restored 9 tweets up to seq 9" in done.stderr
    again = _relay(
        "restore", s3_server.url("tweets"), "--db", str(tmp_path / "b.db"), env=s3_server.environ
    )
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "already holds tweets" in again.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://example.org/x", "unknown scheme"),
        ("s3://", "names no bucket"),
        ("file://relative/path", "a file URL has no host"),
    ],
)
def test_a_bad_archive_url_is_one_line_and_exit_2(url: str, says: str, tmp_path: Path) -> None:
    for args in (
        ["restore", url, "--db", str(tmp_path / "r.db")],
        ["run", "--replay", url, "--db", str(tmp_path / "p.db"), "--port", "0"],
    ):
        done = _relay(*args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr


def test_a_missing_bucket_or_an_empty_archive_is_one_line_and_exit_2(
    s3_server: S3Server, tmp_path: Path
) -> None:
    for url, says in (
        ("s3://no-such-bucket-here/x", "no such bucket"),
        (s3_server.url("none"), "no archived objects"),
    ):
        for args in (
            ["restore", url, "--db", str(tmp_path / "r.db")],
            ["run", "--replay", url, "--db", str(tmp_path / "p.db"), "--port", "0"],
        ):
            done = _relay(*args, env=s3_server.environ)
            assert done.returncode == 2, done.stderr
            assert done.stderr.count("\n") == 1 and says in done.stderr, done.stderr


def test_objects_decode_back_to_their_bodies(tmp_path: Path) -> None:
    async def run() -> None:
        store = await SQLiteStore.open(tmp_path / "a.db")
        await fill(store)
        bodies = await archive(store, f"file://{tmp_path / 'archive'}")
        await store.close()
        read = [
            t.body
            for path in sorted((tmp_path / "archive").rglob("*.jsonl.gz"))
            for t in decode_object(path.read_bytes())
        ]
        assert read == bodies

    asyncio.run(run())


def test_archived_while_ingesting_then_replayed_and_restored_with_the_deleted_tweet_gone(
    make_store: StoreMaker, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive writer (relay.jobs.archive) runs beside appends, a deletion is
    rewritten out of its object; a replay and a restore both leave that tweet out, and
    the writer of the restored store goes on after the cursor, in a new epoch's folder."""
    from relay.jobs.archive import Archiver
    from relay.obs.metrics import Metrics

    for key, value in s3_server.environ.items():
        monkeypatch.setenv(key, value)
    url = s3_server.url("live")

    async def ingest_and_archive() -> list[bytes]:
        store = await make_store("a")
        bucket = Bucket(parse_url(url))
        writer = Archiver(store, bucket, Metrics(), object_tweets=7, object_interval=3600)
        try:
            for n in range(10):  # appends and uploads interleaved, as in a running relay
                parsed = [parse_line(stream_line(n * 5 + i, author=f"u{i}")) for i in range(1, 6)]
                tweets = [t for p in parsed for t in p.tweets]
                await store.append(tweets, [u for p in parsed for u in p.users], 1.7e9 + n)
                await writer.step()
            assert await writer.flush(10.0)
            await make_store.admin("a").queue_deletions(["12"])
            assert len(await store.apply_deletions(10)) == 1
            assert await writer.apply_deletions() == 1
            rows = await store.read_after("tweets", 0, 999, 999)
            return [r.body for r in rows]
        finally:
            await store.close()

    bodies = asyncio.run(ingest_and_archive())
    assert len(bodies) == 49 and not any(orjson.loads(b)["id"] == "12" for b in bodies)

    with RelayServer(url, store=tmp_path / "replayed.db") as relay:
        replayed = _replayed(relay)
    assert [without_seq(b) for b in replayed] == [without_seq(b) for b in bodies]

    async def restore_and_go_on() -> None:
        done = await restore(make_store.settings("b"), url)
        assert done.tweets == 49 and done.head == 50
        store = await make_store("b")
        try:
            assert [r.body for r in await store.read_after("tweets", 0, 999, 999)] == bodies
            await store.append(parse_line(stream_line(999)).tweets, [], 1.7e9 + 60)
            writer = Archiver(
                store, Bucket(parse_url(url)), Metrics(), object_tweets=7, object_interval=3600
            )
            assert await writer.flush(10.0)
            keys = await Bucket(parse_url(url)).keys()
            new = [k for k in keys if done.epoch in k]
            assert len(new) == 1 and "00000000000000000051-00000000000000000051" in new[0]
        finally:
            await store.close()

    asyncio.run(restore_and_go_on())


def test_a_restore_stores_an_archived_object_as_it_is_only_when_it_says_its_own_seq(
    tmp_path: Path,
) -> None:
    """Objects whose tweet names another seq than its line (a bucket written by others)
    are built again by the store, with the line's seq; the others go in as they are."""
    url = f"file://{tmp_path / 'archive'}"

    async def run() -> None:
        store = await SQLiteStore.open(tmp_path / "a.db")
        await fill(store)
        rows = await store.read_after("tweets", 0, 99, 99)
        await store.close()
        lines = []
        for r in rows:
            body = orjson.loads(r.body)
            if r.seq == 2:
                body["seq"] = 200
            lines.append(ArchivedTweet("e", r.seq, r.received, r.channels, orjson.dumps(body)))
        await Bucket(parse_url(url)).put(
            name_for(lines[0].received, lines).key(""), encode_object(lines)
        )
        await restore(Settings.from_mapping({"db": str(tmp_path / "b.db")}), url)
        target = await SQLiteStore.open(tmp_path / "b.db")
        restored = await target.read_after("tweets", 0, 99, 99)
        await target.close()
        assert [orjson.loads(r.body)["seq"] for r in restored] == list(range(1, TWEETS + 1))
        assert [r.body for r in restored if r.seq != 2] == [r.body for r in rows if r.seq != 2]

    asyncio.run(run())


def test_read_ahead_makes_the_next_item_while_the_caller_works_on_one() -> None:
    from relay.app.commands.restore import read_ahead

    made: list[int] = []

    async def items() -> AsyncIterator[int]:
        for item in (1, 2, 3):
            made.append(item)
            yield item

    async def run() -> list[int]:
        got = []
        async for item in read_ahead(items()):
            await asyncio.sleep(0)  # the caller's work (a store's insert) lets it run
            assert made == list(range(1, min(item + 1, 3) + 1))  # one ahead, never more
            got.append(item)
        return got

    assert asyncio.run(run()) == [1, 2, 3]


def test_a_deletion_made_while_a_replay_runs_holds_for_the_objects_still_to_read(
    tmp_path: Path,
) -> None:
    # The replay reads the new store's deletion record again before each object, so a
    # `relay delete` that lands mid-replay keeps out what it names from there on.
    url = f"file://{tmp_path / 'archive'}"
    record: set[str] = set()
    asks = 0

    async def deleted() -> set[str]:
        nonlocal asks
        asks += 1
        return set(record)

    async def replay() -> list[str]:
        store = await SQLiteStore.open(tmp_path / "a.db")
        await fill(store)
        await archive(store, url)  # objects of 4: seqs 1-4, 5-8, 9
        await store.close()
        source = ArchiveSource(url, deleted=deleted)
        ids = []
        async for line in source.lines():
            ids.append(orjson.loads(line.data)["id"])
            if ids[-1] == "1":
                record.update({"3", "6"})  # deleted while the first object is read
        return ids

    ids = asyncio.run(replay())
    assert "6" not in ids  # in an object read after the deletion
    assert "3" in ids  # in the object already being given out: stored, then deleted there
    assert ids == ["1", "2", "3", "4", "5", "7", "8", "9"]
    assert asks == 3  # once for each object


FINALIZATION_PROBE = """
import atexit, sys
from relay.app.cli import run

atexit.register(lambda: sys.stderr.write("exit handlers ran\\n"))
sys.argv = ["relay", *sys.argv[1:]]
run()
"""
FINALIZING = "# clear sys.audit hooks"
"""What ``python -v`` writes from inside the interpreter's finalization."""


def test_a_command_that_loaded_the_object_store_client_ends_before_finalization(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """obstore's Tokio threads may abort the process while the interpreter finalizes,
    after the command said its line (seen as SIGABRT instead of exit 2 under load): the
    command runs its exit handlers, flushes, and ends without finalizing. Without the
    client loaded, the process ends the ordinary way."""
    import os

    def probe(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-v", "-c", FINALIZATION_PROBE, *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env={**os.environ, "COLUMNS": "200", **s3_server.environ},
        )

    early = probe("run", "--replay", s3_server.url("none"), "--db", str(tmp_path / "p.db"))
    assert early.returncode == 2
    said = early.stderr.split("exit handlers ran\n")
    assert len(said) == 2 and "no archived objects" in said[0], early.stderr[-2000:]
    assert FINALIZING not in said[1], early.stderr[-2000:]

    plain = probe("check", "--db", str(tmp_path / "none.db"))
    assert plain.returncode == 2
    said = plain.stderr.split("exit handlers ran\n")
    assert len(said) == 2 and FINALIZING in said[1], plain.stderr[-2000:]
