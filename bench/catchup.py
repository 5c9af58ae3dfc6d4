"""Catch-up part: one client resumes over a store full of tweets, on each transport."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from bench.burst import Burst, burst, capture_frames, cell, peer_bursts, times
from bench.ingest import fill
from bench.procs import (
    info,
    relay_serve,
)
from bench.table import Row


def catch_up(folder: Path, count: int) -> list[Row]:
    """4 part: one client resumes from seq 0 over ``count`` stored tweets."""
    part = folder / "catchup"
    part.mkdir()
    started = time.perf_counter()
    db = fill(part, count)
    filled = time.perf_counter() - started
    serve = relay_serve(part, db, "")
    try:
        epoch = info(serve.port).get("epoch")
        since = orjson.dumps(
            {"op": "subscribe", "channel": "tweets", "since": {"epoch": epoch, "seq": 0}}
        )
        relay = burst(serve, 1, count, None, subscribe=since, timeout=60)
        path = f"/v1/events?channel=tweets&since={epoch}:0"
        sse = burst(serve, 1, count, None, timeout=60, transport="sse", path=path)
        frames = part / "frames.jsonl"
        captured = capture_frames(serve.port, count, frames, timeout=120)
    finally:
        serve.stop()
    py, node = peer_bursts(part, frames, 1, captured, "catchup", timeout=60)

    def wall(b: Burst) -> str:
        return f"{b.wall:.2f} s, {b.us_per_frame:.1f} µs/frame ({b.delivered()})"

    return [
        Row(
            "catch-up",
            f"1 client resumes from seq 0 over {count:,} stored tweets: wall "
            "(connect to last frame), server CPU a frame; peer: send() in a loop",
            wall(relay),
            cell(py, wall),
            cell(node, wall),
            f"target <= 1.5 s, <= 3 µs/frame (store filled in {filled:.0f} s)",
        ),
        Row(
            "catch-up",
            f"server-sent events: 1 stream resumes from seq 0 over the same {count:,} tweets",
            wall(sse),
            "",
            "",
            f"target <= 1.3x WebSocket: {sse.wall / relay.wall:.2f}x wall, "
            f"{times(sse.us_per_frame, relay.us_per_frame)} CPU",
        ),
    ]
