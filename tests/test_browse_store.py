"""The SQLite store can be browsed: objects are JSON text (issue 19 point 16).

On fcb6446 each tweet's object was a BLOB: datasette showed ``<Binary>``, and SQLite's
JSON functions refused it ("JSON cannot hold BLOB values"), so the documented facets and
queries could not work. The store is real (``relay run`` fills it) and so is datasette,
run in process through its own ASGI client with the metadata file the docs give.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlite_utils

from relay.sources.synth import write_stream
from relay.store.sqlite.schema import MIGRATIONS, TWEET_COLUMNS
from relay.store.sqlite.search import register
from relay.store.sqlite.store import SQLiteStore
from tests.support import ROOT, UNIT

TWEETS = 300
METADATA = ROOT / "docs" / "datasette-metadata.json"


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``relay.db`` (datasette names the database after the file: ``relay``), filled by
    ``relay run`` with TWEETS synthetic tweets."""
    folder = tmp_path_factory.mktemp("browse")
    write_stream(folder / "day.jsonl", TWEETS, 5)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "RELAY_DB")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay",
            "run",
            *("--port", "0", "--db", "relay.db"),
            *("--replay", "day.jsonl", "--speed", "max", "--no-loop", "--exit-when-done"),
        ],
        cwd=folder,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )
    assert result.returncode == 0, result.stderr
    return folder / "relay.db"


def test_each_object_is_json_text_that_sqlite_reads(filled: Path) -> None:
    with sqlite3.connect(filled) as conn:
        kinds = conn.execute("SELECT typeof(object), count(*) FROM tweets GROUP BY 1").fetchall()
        assert kinds == [("text", TWEETS)]
        # SQLite's JSON functions read it: every object's id and seq are its row's.
        wrong = conn.execute(
            "SELECT count(*) FROM tweets WHERE json_extract(object, '$.id') IS NOT id "
            "OR json_extract(object, '$.seq') IS NOT seq"
        ).fetchone()
        assert wrong == (0,)
    conn.close()


def _version_5_store(path: Path, objects: list[bytes]) -> None:
    """A store as schema version 5 wrote it: the objects bound as bytes, so BLOBs."""
    conn = sqlite3.connect(path, isolation_level=None)
    db = sqlite_utils.Database(conn)
    register(conn)  # migration 5 indexes with the relay's own function
    for number, migration in enumerate(MIGRATIONS[:5], start=1):
        migration(db)
        conn.execute(f"PRAGMA user_version = {number:d}")
    time = "2026-01-01T00:00:00.000Z"
    rows = [
        (seq, str(seq), "1", "ann", "old", "en", time, time, 0, "[]", body)
        for seq, body in enumerate(objects, start=1)
    ]
    conn.executemany(f"INSERT INTO tweets ({TWEET_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    assert conn.execute("SELECT DISTINCT typeof(object) FROM tweets").fetchall() == [("blob",)]
    conn.close()


def test_a_store_of_blob_objects_migrates_to_text_keeping_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    # Text in several scripts, an escaped control character, an emoji with joiners.
    texts = ["plain", "مرحبا #حفلة", "日本語のテキスト", "a\u0001b", "👩🏽‍💻"]
    objects = [
        orjson.dumps({"id": str(seq), "seq": seq, "text": text})
        for seq, text in enumerate(texts, start=1)
    ]
    _version_5_store(path, objects)

    async def run() -> tuple[list[bytes | None], list[bytes]]:
        store = await SQLiteStore.open(path)
        try:
            assert store.schema_version == len(MIGRATIONS)
            one_by_one = [await store.tweet(str(seq)) for seq in range(1, len(objects) + 1)]
            page = await store.read_bodies("tweets", 0, len(objects), 100, list)
            return one_by_one, [row[1] for row in page.built]
        finally:
            await store.close()

    one_by_one, caught_up = asyncio.run(run())
    assert one_by_one == objects and caught_up == objects
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT typeof(object), CAST(object AS BLOB) FROM tweets ORDER BY seq")
        assert [(kind, bytes(body)) for kind, body in rows] == [("text", o) for o in objects]
        assert conn.execute(
            "SELECT json_extract(object, '$.text') FROM tweets WHERE seq = 2"
        ).fetchone() == ("مرحبا #حفلة",)
    conn.close()


async def _datasette(path: Path, *paths: str) -> list[tuple[int, str]]:
    from datasette.app import Datasette

    browser = Datasette([str(path)], metadata=orjson.loads(METADATA.read_bytes()))
    answers = []
    for url in paths:
        response = await browser.client.get(url)
        answers.append((response.status_code, response.text))
    return answers


def test_datasette_shows_the_objects_with_the_documented_facets_and_search(filled: Path) -> None:
    with sqlite3.connect(filled) as conn:
        # Datasette's facets leave NULL out.
        langs = Counter(lang for (lang,) in conn.execute("SELECT lang FROM tweets") if lang)
        tags = conn.execute("SELECT rules FROM tweets")
        rule_count = Counter(tag for (rules,) in tags for tag in orjson.loads(rules))
        word = "football"
        rows = conn.execute("SELECT seq, text FROM tweets")
        matching = {seq for seq, text in rows if word in text.lower()}
        hashtags = Counter(
            tag["tag"].lower()
            for (body,) in conn.execute("SELECT object FROM tweets")
            for tag in orjson.loads(body).get("entities", {}).get("hashtags", [])
        )
    conn.close()
    assert matching and len(langs) > 1 and len(rule_count) > 1

    (row_page, table, found, top) = asyncio.run(
        _datasette(
            filled,
            "/relay/tweets/7",
            "/relay/tweets.json?_size=0",
            f"/relay/tweets.json?_search={word}&_size=max&_shape=objects",
            "/relay/top_hashtags.json?_shape=array",
        )
    )
    # The row page shows the object as JSON, not as <Binary: 1,234 bytes>.
    assert row_page[0] == 200 and "Binary" not in row_page[1] and "objects.tweets" in row_page[1]
    assert table[0] == 200
    facets: dict[str, Any] = orjson.loads(table[1])["facet_results"]
    assert {f["value"]: f["count"] for f in facets["lang"]["results"]} == dict(langs)
    assert {f["value"]: f["count"] for f in facets["rules"]["results"]} == dict(rule_count)
    assert {"author_username", "has_media", "created_at"} <= set(facets)
    # Search goes through the relay's own full-text index (tweets_fts, rowid = seq).
    assert found[0] == 200
    assert {row["seq"] for row in orjson.loads(found[1])["rows"]} == matching
    # A documented query reads inside the objects with SQLite's JSON functions.
    assert top[0] == 200, top[1][:300]
    counted = {row["hashtag"]: row["tweets"] for row in orjson.loads(top[1])}
    assert counted and all(hashtags[tag] == count for tag, count in counted.items())
    assert sorted(counted.values()) == sorted(n for _, n in hashtags.most_common(len(counted)))
