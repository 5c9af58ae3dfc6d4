"""Fan-out part: one burst to many subscribers on each transport, beside the peers."""

from __future__ import annotations

from pathlib import Path

from bench.burst import EVENTS_TWEETS, Burst, burst, capture_frames, cell, peer_bursts, times
from bench.procs import (
    end,
    relay_ingest,
    relay_serve,
)
from bench.table import Row
from relay.sources.synth import write_stream


def _fan_out_run(
    part: Path, redis_url: str, clients: int, count: int, stream: Path, transport: str
) -> tuple[Burst, int]:
    """One relay (serve fed by ingest), ``clients`` of one transport, one burst; the burst
    and the frames it sent, captured to ``part/frames.jsonl`` (WebSocket only)."""
    part.mkdir()
    db = part / "fanout.db"
    serve = relay_serve(part, db, redis_url)
    ingest = None
    captured = 0
    try:

        def trigger() -> None:
            nonlocal ingest
            ingest = relay_ingest(part, db, stream, redis_url)

        spec = {"transport": "sse", "path": EVENTS_TWEETS} if transport == "sse" else {}
        relay = burst(serve, clients, count, trigger, **spec)
        if transport == "websocket":
            captured = capture_frames(serve.port, count, part / "frames.jsonl")
    finally:
        if ingest is not None:
            end(ingest)
        serve.stop()
    return relay, captured


def fan_out(folder: Path, redis_url: str, clients: int, count: int) -> list[Row]:
    """1 part: a burst of ``count`` tweets to ``clients`` subscribers of ``tweets``, over
    WebSocket, then the same to as many server-sent events streams (a relay of its own)."""
    part = folder / "fanout"
    part.mkdir()
    stream = part / "burst.jsonl"
    write_stream(stream, count, seed=11)
    relay, captured = _fan_out_run(part / "ws", redis_url, clients, count, stream, "websocket")
    frames = part / "ws" / "frames.jsonl"
    sse, _ = _fan_out_run(part / "sse", redis_url, clients, count, stream, "sse")
    size = frames.stat().st_size / max(captured, 1)
    py, node = peer_bursts(part, frames, clients, captured)
    cond = f"{clients:,} subscribers x {count:,}-tweet burst, ~{size / 1024:.1f} KB frames"

    def us(b: Burst) -> str:
        return f"{b.us_per_frame:.1f} µs ({b.delivered()})"

    def rate(b: Burst) -> str:
        return f"{b.frames / b.wall / 1000:,.1f}k frames/s"

    def gen(b: Burst) -> str:
        return f"{100 * b.gen_load:.0f}% of a core"

    peers = [p for p in (py, node) if isinstance(p, Burst)]
    ratio = (
        f"relay/best peer {times(relay.us_per_frame, min(p.us_per_frame for p in peers))}"
        if peers
        else ""
    )
    return [
        Row(
            "fan-out",
            f"server CPU per delivered frame; {cond}",
            us(relay),
            cell(py, us),
            cell(node, us),
            f"target <= 3 µs and <= 0.4x peer; {ratio}",
        ),
        Row(
            "fan-out",
            "server-sent events: server CPU per delivered event, the same burst to as many "
            "streams of tweets",
            us(sse),
            "",
            "",
            f"target <= 1.3x WebSocket: {times(sse.us_per_frame, relay.us_per_frame)}",
        ),
        Row(
            "fan-out",
            "delivered frames per second (wall, first frame to last at the clients)",
            rate(relay),
            cell(py, rate),
            cell(node, rate),
        ),
        Row(
            "fan-out",
            "load generator: busiest of 2 worker processes, CPU / burst wall time",
            gen(relay),
            cell(py, gen),
            cell(node, gen),
            "below 100% while a peer goes faster: the generator is not the bound",
        ),
    ]
