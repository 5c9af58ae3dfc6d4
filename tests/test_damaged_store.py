"""A damaged SQLite page never passes for the end of the data (issue 19 point 2).

The store is real: ``relay run`` fills it, ``relay backup`` copies it, and the test
writes bytes into one page of the copy, as a disk or a bad copy would: the stored seq
(rowid) of one row is overwritten, so ``PRAGMA quick_check`` reports "Rowid ... out of
order". On fcb6446 a resume over that row ended early without a word (SQLite's walk of
``seq > after AND seq <= until`` stops at the first row past ``until``, and the damaged
row is one), then went live at the head: tweets skipped for good.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from relay.core.query import parse_tweet_query
from relay.errors import StoreCorrupt, StoreError
from relay.sources.synth import write_stream
from relay.store.sqlite.store import SQLiteStore
from relay.testing import RelayServer
from tests.support import ROOT, UNIT, RelayProcess, counted, subscribe, wait_for

TWEETS = 1500
DAMAGED = 1300
"""The seq whose stored rowid the test overwrites (a page well inside the table)."""
WRONG = 9000
"""What it reads as afterwards: past every seq, so a bounded walk stops at it."""


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RELAY_DB")}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )


def _varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """SQLite's big-endian varint at ``at``: its value and where it ends."""
    value = 0
    for index in range(8):
        byte = data[at + index]
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, at + index + 1
    return (value << 8) | data[at + 8], at + 9


def _page_size(data: bytes | bytearray) -> int:
    size = int.from_bytes(data[16:18], "big")
    return 65536 if size == 1 else size


def _table_root(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        sql = "SELECT rootpage FROM sqlite_master WHERE name = 'tweets'"
        (root,) = conn.execute(sql).fetchone()
    conn.close()
    return int(root)


def _cells(data: bytes | bytearray, number: int) -> tuple[int, int, list[int]]:
    """A b-tree page's kind, its header's offset and where each of its cells starts."""
    page_size = _page_size(data)
    start = (number - 1) * page_size
    header = start + (100 if number == 1 else 0)
    kind = data[header]
    cells = int.from_bytes(data[header + 3 : header + 5], "big")
    pointers = header + (12 if kind == 0x05 else 8)
    offsets = [
        start + int.from_bytes(data[pointers + 2 * i : pointers + 2 * i + 2], "big")
        for i in range(cells)
    ]
    return kind, header, offsets


def leaf_pages(path: Path) -> list[int]:
    """The tweets table's leaf pages, in seq order (its b-tree walked from the root)."""
    data = path.read_bytes()
    leaves: list[int] = []

    def walk(number: int) -> None:
        kind, header, offsets = _cells(data, number)
        if kind == 0x0D:
            leaves.append(number)
            return
        assert kind == 0x05, f"page {number} is not a table page"
        for cell in offsets:
            walk(int.from_bytes(data[cell : cell + 4], "big"))
        walk(int.from_bytes(data[header + 8 : header + 12], "big"))

    walk(_table_root(path))
    return leaves


def overwrite_rowid(path: Path, seq: int, new: int) -> int:
    """Write ``new`` over the stored rowid of the tweets row ``seq``, in the file's bytes
    (a table b-tree walked from its root page); the page number changed."""
    data = bytearray(path.read_bytes())
    number = _table_root(path)
    while True:
        kind, header, offsets = _cells(data, number)
        if kind == 0x05:  # interior: (left child, largest rowid in it) cells, then the right
            child = int.from_bytes(data[header + 8 : header + 12], "big")
            for cell in offsets:
                key, _ = _varint(data, cell + 4)
                if seq <= key:
                    child = int.from_bytes(data[cell : cell + 4], "big")
                    break
            number = child
            continue
        assert kind == 0x0D, f"page {number} is not a table page"
        for cell in offsets:
            _, rowid_at = _varint(data, cell)  # past the payload size
            rowid, end = _varint(data, rowid_at)
            if rowid == seq:
                assert end - rowid_at == 2 and 128 <= new < 16384, "same varint length"
                data[rowid_at:end] = bytes([0x80 | (new >> 7), new & 0x7F])
                path.write_bytes(bytes(data))
                return number
        raise AssertionError(f"seq {seq} not found on its leaf page {number}")


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup of a store that ``relay run`` filled with TWEETS synthetic tweets."""
    folder = tmp_path_factory.mktemp("store")
    write_stream(folder / "day.jsonl", TWEETS, 11)
    filled = run_cli(
        *("run", "--port", "0", "--db", "live.db", "--replay", "day.jsonl"),
        *("--speed", "max", "--no-loop", "--exit-when-done"),
        cwd=folder,
    )
    assert filled.returncode == 0, filled.stderr
    copied = run_cli("backup", "copy.db", "--db", "live.db", cwd=folder)
    assert copied.returncode == 0, copied.stderr
    return folder / "copy.db"


@pytest.fixture
def damaged(healthy: Path, tmp_path: Path) -> Path:
    path = tmp_path / "damaged.db"
    shutil.copy(healthy, path)
    overwrite_rowid(path, DAMAGED, WRONG)
    with sqlite3.connect(path) as conn:
        problems = conn.execute("PRAGMA quick_check").fetchall()
        # What the start check reads is intact: the relay opens it.
        assert conn.execute("SELECT max(seq) FROM tweets").fetchone() == (TWEETS,)
    conn.close()
    assert f"Rowid {WRONG} out of order" in problems[0][0]
    return path


def resume_until_closed(ws: ClientConnection) -> tuple[list[int], list[dict[str, Any]], Any]:
    """Every frame up to the close: the tweets' seqs, the other frames, the close."""
    seqs: list[int] = []
    others: list[dict[str, Any]] = []
    try:
        while True:
            frame = orjson.loads(ws.recv(timeout=4 * UNIT))
            if frame["type"] == "tweet":
                seqs.append(frame["seq"])
            else:
                others.append(frame)
    except ConnectionClosed as closed:
        return seqs, others, closed.rcvd


def assert_told_and_closed(
    seqs: list[int], others: list[dict[str, Any]], close: Any, channel_seqs: list[int]
) -> None:
    """What the client got is a gap-free prefix of the channel, then one error frame
    saying so, then 1011 with its last seq: never a quiet end."""
    assert seqs == channel_seqs[: len(seqs)], "a gap or a seq out of order"
    assert not seqs or seqs[-1] < DAMAGED
    errors = [frame for frame in others if frame["type"] == "error"]
    assert [e["code"] for e in errors] == ["internal"], others
    assert "damaged" in errors[0]["message"]
    assert close is not None and close.code == 1011
    assert orjson.loads(close.reason)["seq"] == (seqs[-1] if seqs else 0)


@pytest.fixture
def on_damaged(
    damaged: Path,
    start_relay: Callable[..., RelayServer],
) -> RelayServer:
    """A relay (ingest running, nothing to ingest) on the damaged store."""
    return start_relay(store=damaged)


def test_a_resume_over_a_damaged_row_is_told_and_closed_and_the_relay_fails(
    on_damaged: RelayServer,
) -> None:
    # fcb6446: seqs 1-1299, then nothing (no error, no close, no log); /readyz 200.
    relay = on_damaged
    assert relay.get("/readyz")[0] == 200  # the start check cannot see this page
    epoch = relay.relay.store.epoch  # type: ignore[union-attr]
    ws, subscribed = subscribe(relay.ws_url, since={"epoch": epoch, "seq": 0})
    assert subscribed["recovered"] == 1000  # capped count: the count never reads rows
    seqs, others, close = resume_until_closed(ws)
    assert_told_and_closed(seqs, others, close, list(range(1, TWEETS + 1)))
    status, ready = relay.get("/readyz")
    assert status == 503 and ready["status"] == "failed"
    assert "damaged" in ready["error"] and "\n" not in ready["error"]
    assert counted(relay.relay.metrics.store_damaged) >= 1
    with urllib.request.urlopen(relay.url + "/metrics", timeout=UNIT) as response:
        assert b"relay_store_damaged_total 1.0" in response.read()


def test_a_rule_channel_over_a_damaged_row_is_told_and_closed(
    on_damaged: RelayServer, healthy: Path
) -> None:
    # fcb6446: the rule's catch-up joined each rule row to its tweet and dropped the
    # damaged one without a word.
    with sqlite3.connect(healthy) as conn:
        (rules,) = conn.execute("SELECT rules FROM tweets WHERE seq = ?", (DAMAGED,)).fetchone()
        tag = orjson.loads(rules)[0]
        sql = "SELECT seq FROM tweet_rules WHERE tag = ? ORDER BY seq"
        rule_seqs = [row[0] for row in conn.execute(sql, (tag,))]
    conn.close()
    relay = on_damaged
    epoch = relay.relay.store.epoch  # type: ignore[union-attr]
    # From just before the damaged row: one page, which holds it.
    since = max(s for s in rule_seqs if s < DAMAGED)
    ws, _ = subscribe(relay.ws_url, f"rule:{tag}", since={"epoch": epoch, "seq": since})
    seqs, others, close = resume_until_closed(ws)
    assert_told_and_closed(seqs, others, close, [s for s in rule_seqs if s > since])
    assert relay.get("/readyz")[0] == 503


def test_the_object_api_answers_503_in_one_line_on_a_damaged_row(
    on_damaged: RelayServer,
) -> None:
    # fcb6446: 500 {"message": "internal error"} and a traceback.
    relay = on_damaged
    status, body = relay.get(f"/v1/objects/tweets?since_seq={DAMAGED - 20}&sort=seq&limit=50")
    assert status == 503
    (error,) = body["errors"]
    assert error["reason"] == "unavailable" and "damaged" in error["message"]
    assert "\n" not in error["message"]
    # Pages that never touch the damaged row still answer.
    status, body = relay.get("/v1/objects/tweets?sort=seq&limit=10")
    assert status == 200 and [t["seq"] for t in body["results"]] == list(range(1, 11))
    wait_for(lambda: relay.get("/readyz")[0] == 503, UNIT, "/readyz 503")
    assert counted(relay.relay.metrics.store_damaged) == 1


def test_with_ingest_running_a_resume_never_jumps_and_the_relay_exits_1(
    damaged: Path, tmp_path: Path, processes: list[RelayProcess]
) -> None:
    # fcb6446: with the sample ingesting on top, a resume jumped from 1299 to the head,
    # skipping the 201 stored tweets after it and every tweet ingested meanwhile.
    relay = RelayProcess(tmp_path / "relay.log", "--db", str(damaged), "--speed", "20")
    processes.append(relay)
    wait_for(lambda: relay.count() > TWEETS, 8 * UNIT, "ingest to store on top")
    epoch = str(relay.get("/v1/info")["epoch"])
    ws, _ = subscribe(relay.ws_url, since={"epoch": epoch, "seq": 0})
    seqs, others, close = resume_until_closed(ws)
    assert_told_and_closed(seqs, others, close, list(range(1, 10**6)))
    assert relay.proc.wait(8 * UNIT) == 1
    relay.close()
    log = relay.log_path.read_text()
    assert "Traceback" not in log
    (why,) = [line for line in log.splitlines() if line.startswith("relay: ")]
    assert "damaged" in why and "relay check" in why
    # Nothing was numbered past a hole: the tweets stored on top follow the head.
    with sqlite3.connect(damaged) as conn:
        seqs_after = [r[0] for r in conn.execute("SELECT seq FROM tweets WHERE seq > ?", (TWEETS,))]
    conn.close()
    assert seqs_after == list(range(TWEETS + 1, TWEETS + 1 + len(seqs_after)))


def test_the_store_reads_raise_and_report_on_a_damaged_row(damaged: Path) -> None:
    async def check() -> list[StoreCorrupt]:
        store = await SQLiteStore.open(damaged, writer=False)
        found: list[StoreCorrupt] = []
        store.on_damage = found.append
        try:
            # Two rows short of the damaged one (the row past a range is read too):
            # fine, and complete up to until.
            page = await store.read_bodies("tweets", 0, DAMAGED - 2, 5000, list)
            assert page.complete and page.last == DAMAGED - 2
            for read in (
                store.read_bodies("tweets", DAMAGED - 5, TWEETS, 5000, list),
                store.read_after("tweets", DAMAGED - 5, TWEETS, 5000),
                store.query(parse_tweet_query({"since_seq": [str(DAMAGED - 5)], "sort": ["seq"]})),
            ):
                with pytest.raises(StoreCorrupt, match="damaged"):
                    await read
        finally:
            await store.close()
        return found

    assert len(asyncio.run(check())) == 3


def test_a_damaged_newest_seq_is_refused_at_start_and_never_numbered_after(
    healthy: Path, tmp_path: Path
) -> None:
    # fcb6446 started on it and numbered new tweets from 9001: a hole of 7,500 seqs.
    path = tmp_path / "tail.db"
    shutil.copy(healthy, path)
    overwrite_rowid(path, TWEETS, WRONG)
    before = path.read_bytes()
    result = run_cli("run", "--port", "0", "--db", str(path), "--speed", "max", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (why,) = [line for line in result.stderr.splitlines() if line.startswith("relay: ")]
    assert "cannot open database" in why and f"newest seq {WRONG}" in why
    assert path.read_bytes() == before


def test_relay_check_runs_a_full_integrity_check(damaged: Path, healthy: Path) -> None:
    bad = run_cli("check", "--db", str(damaged), cwd=damaged.parent)
    assert bad.returncode == 1, bad.stderr
    assert f"Rowid {WRONG} out of order" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr
    good = run_cli("check", "--db", str(healthy), cwd=healthy.parent)
    assert good.returncode == 0, good.stderr
    assert "ok" in good.stdout


NOISE = 800
"""Bytes of noise written over one page, as in the issue."""


async def read_everything(path: Path) -> tuple[list[int], list[int], StoreCorrupt | None]:
    """Every seq a catch-up and the object API read from the store at ``path``, page by
    page as the relay reads them, up to the end or the first :class:`StoreCorrupt`."""
    store = await SQLiteStore.open(path, writer=False)
    caught_up: list[int] = []
    listed: list[int] = []
    try:
        head = await store.head()
        last = 0
        while last < head:
            page = await store.read_bodies("tweets", last, head, 200, list, max_bytes=1 << 20)
            caught_up += [row[0] for row in page.built]
            last = head if page.complete else page.last
        while True:
            query = {"since_seq": [str(listed[-1] if listed else 0)], "sort": ["seq"]}
            bodies, _ = await store.query(parse_tweet_query({**query, "limit": ["100"]}))
            if not bodies:
                break
            listed += [int(orjson.loads(body)["id"]) for body in bodies]
            if len(bodies) < 100:
                break
    except StoreCorrupt as exc:
        return caught_up, listed, exc
    finally:
        await store.close()
    return caught_up, listed, None


def test_noise_over_a_page_near_the_end_never_passes_for_the_end_of_the_data(
    healthy: Path, tmp_path: Path
) -> None:
    """The issue's damage: 800 bytes of noise over one page about 50 pages from the end
    of a backup, on several pages and offsets. fcb6446 ended a resume early without a
    word (or with a hole) on most of those quick_check finds damaged.

    A store read either returns every tweet in order or raises :class:`StoreCorrupt`
    after a gap-free prefix; or the start refuses the file.
    """
    with sqlite3.connect(healthy) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM tweets ORDER BY seq")]
    conn.close()
    size = _page_size(healthy.read_bytes())
    pages = healthy.stat().st_size // size
    near_end = sorted(leaf_pages(healthy), key=lambda page: abs(pages - 50 - page))[:5]
    noise = random.Random(19)
    outcomes: dict[str, int] = {}
    for page in near_end:
        for offset in (400, 1000, 1600, 2200):
            path = tmp_path / f"noise-{page}-{offset}.db"
            data = bytearray(healthy.read_bytes())
            at = (page - 1) * size + offset
            data[at : at + NOISE] = noise.randbytes(NOISE)
            path.write_bytes(bytes(data))
            with sqlite3.connect(path) as conn:
                try:
                    found = conn.execute("PRAGMA quick_check").fetchone()[0]
                except sqlite3.DatabaseError as exc:
                    found = str(exc)
            conn.close()
            if found == "ok":
                continue  # the noise fell on free space in the page
            if "out of order" in found:
                outcomes["out of order"] = outcomes.get("out of order", 0) + 1
            try:
                caught_up, listed, corrupt = asyncio.run(read_everything(path))
            except StoreError as exc:
                assert "cannot open database" in str(exc)
                outcomes["refused at start"] = outcomes.get("refused at start", 0) + 1
                continue
            where = f"page {page} offset {offset} ({found[:80]})"
            assert caught_up == list(range(1, len(caught_up) + 1)), where
            # The object API lists by id: each a good row's, in seq order.
            assert [str(i) for i in listed] == ids[: len(listed)], where
            if corrupt is None:
                assert len(caught_up) == len(ids) == len(listed), where
                outcomes["read whole"] = outcomes.get("read whole", 0) + 1
            else:
                assert "damaged" in str(corrupt) and "\n" not in str(corrupt), where
                outcomes["told"] = outcomes.get("told", 0) + 1
    # The sweep holds the damage, and reads that found it.
    assert outcomes.get("out of order", 0) >= 1 and outcomes.get("told", 0) >= 3, outcomes
