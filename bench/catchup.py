"""Catch-up part: one client resumes over a store full of tweets, on each transport."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import orjson

from bench.burst import Burst, burst, capture_frames, cell, peer_bursts, times
from bench.ingest import fill
from bench.procs import (
    Server,
    info,
    relay_serve,
)
from bench.table import Row
from relay.sources.synth import write_stream

IDLE_POLL = "5"
"""Seconds between the store polls of the catch-up's ``relay serve`` (no bus): the
default, where the other parts poll every 50 ms for live tweets. Nothing is live here,
and the polls' CPU is not the catch-up's."""


def _resumes(serve: Server, count: int) -> tuple[Burst, Burst]:
    """One WebSocket client, then one event stream, resuming from seq 0 on ``serve``."""
    epoch = info(serve.port).get("epoch")
    since = orjson.dumps(
        {"op": "subscribe", "channel": "tweets", "since": {"epoch": epoch, "seq": 0}}
    )
    relay = burst(serve, 1, count, None, subscribe=since, timeout=60)
    path = f"/v1/events?channel=tweets&since={epoch}:0"
    sse = burst(serve, 1, count, None, timeout=60, transport="sse", path=path)
    return relay, sse


def wall(b: Burst) -> str:
    return f"{b.wall:.2f} s, {b.us_per_frame:.1f} µs/frame ({b.delivered()})"


def catch_up(folder: Path, count: int, database_url: str = "") -> list[Row]:
    """4 part: one client resumes from seq 0 over ``count`` stored tweets (SQLite; with
    ``database_url``, PostgreSQL too, in a database of its own on that server)."""
    part = folder / "catchup"
    part.mkdir()
    started = time.perf_counter()
    db = fill(part, count)
    filled = time.perf_counter() - started
    serve = relay_serve(part, db, "", RELAY_BUS_CHECK_INTERVAL=IDLE_POLL)
    try:
        relay, sse = _resumes(serve, count)
        frames = part / "frames.jsonl"
        captured = capture_frames(serve.port, count, frames, timeout=120)
    finally:
        serve.stop()
    py, node = peer_bursts(part, frames, 1, captured, "catchup", timeout=60)
    postgres = "skipped: set DATABASE_URL (a server where the bench may create a database)"
    if database_url:
        try:
            postgres = _postgres(part, count, database_url)
        except Exception as exc:  # no right to create a database, server gone: say so
            postgres = f"PostgreSQL failed: {type(exc).__name__}: {exc}"[:100]
    return [
        Row(
            "catch-up",
            f"1 client resumes from seq 0 over {count:,} stored tweets: wall "
            "(connect to last frame), server CPU a frame; peer: send() in a loop",
            wall(relay),
            cell(py, wall),
            cell(node, wall),
            f"target <= 0.5 s, <= 3 µs/frame, below Node (store filled in {filled:.0f} s)",
        ),
        Row(
            "catch-up",
            f"server-sent events: 1 stream resumes from seq 0 over the same {count:,} tweets",
            wall(sse),
            "",
            "",
            f"target <= 0.5 s, <= 3 µs/frame: {sse.wall / relay.wall:.2f}x WebSocket wall, "
            f"{times(sse.us_per_frame, relay.us_per_frame)} CPU",
        ),
        Row("catch-up", "PostgreSQL store: the same resumes (WebSocket; events)", postgres),
    ]


def _postgres(part: Path, count: int, database_url: str) -> str:
    """The same two resumes over a PostgreSQL store of ``count`` tweets, in a database the
    bench creates on the server of ``database_url`` (and drops after)."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from bench.stores import ingest as relay_ingest_in_process
    from relay.config import Settings

    name = f"relay_bench_catchup_{secrets.token_hex(4)}"
    admin = make_conninfo(database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        params = conninfo_to_dict(database_url)
        params["dbname"] = name
        url = _as_url(params)
        stream = part / "pg.jsonl"
        write_stream(stream, count, seed=14)
        settings = Settings.from_mapping(
            {"port": 0, "replay": str(stream), "speed": "max", "loop": False, "database_url": url}
        )
        asyncio.run(relay_ingest_in_process(settings, count))
        serve = relay_serve(
            part, part / "pg-unused.db", "", RELAY_BUS_CHECK_INTERVAL=IDLE_POLL, DATABASE_URL=url
        )
        try:
            relay, sse = _resumes(serve, count)
        finally:
            serve.stop()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
    return f"WebSocket {wall(relay)}; events {wall(sse)}"


def _as_url(params: dict[str, object]) -> str:
    """A postgresql:// URL of connection parameters (the relay takes URLs only)."""
    from urllib.parse import quote

    user = quote(str(params.get("user", "")), safe="")
    password = params.get("password")
    auth = f"{user}:{quote(str(password), safe='')}@" if password else (f"{user}@" if user else "")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    return f"postgresql://{auth}{host}:{port}/{params['dbname']}"
