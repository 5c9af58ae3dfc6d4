"""Fan-out part: one burst to many subscribers on each transport, beside the peers."""

from __future__ import annotations

from pathlib import Path

from bench.burst import (
    EVENTS_TWEETS,
    Burst,
    burst,
    capture_frames,
    cell,
    peer_bursts,
    relay_writes,
    times,
)
from bench.procs import (
    end,
    node_ready,
    relay_ingest,
    relay_serve,
)
from bench.table import Row
from relay.sources.synth import write_stream

SLOW_READERS = 1
"""Node client processes of the slow-reader burst: one process reads every connection."""


def _fan_out_run(
    part: Path,
    redis_url: str,
    clients: int,
    count: int,
    stream: Path,
    transport: str,
    *,
    slow: bool = False,
) -> tuple[Burst, int]:
    """One relay (serve fed by ingest), ``clients`` of one transport, one burst; the burst
    and the frames it sent, captured to ``part/frames.jsonl`` (WebSocket only). ``slow``:
    the clients are Node ``ws`` clients in one process, which reads several times slower
    than the generator's two."""
    part.mkdir()
    db = part / "fanout.db"
    serve = relay_serve(part, db, redis_url)
    ingest = None
    captured = 0
    before = (0.0, 0.0)
    try:

        def trigger() -> None:
            nonlocal ingest, before
            before = relay_writes(serve.port)[:2]
            ingest = relay_ingest(part, db, stream, redis_url)

        spec: dict[str, object] = (
            {"transport": "sse", "path": EVENTS_TWEETS} if transport == "sse" else {}
        )
        if slow:
            spec = {"node_clients": part, "processes": SLOW_READERS}
        relay = burst(serve, clients, count, trigger, **spec)
        writes, frames = (a - b for a, b in zip(relay_writes(serve.port)[:2], before, strict=True))
        relay.writes_note = f"{frames / max(writes, 1):.0f} frames a write"
        if transport == "websocket" and not slow:
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
    why_not = node_ready()
    slow: Burst | str = why_not
    slow_py: Burst | str = why_not
    slow_node: Burst | str = why_not
    if not why_not:
        slow, _ = _fan_out_run(
            part / "slow", redis_url, clients, count, stream, "websocket", slow=True
        )
        slow_py, slow_node = peer_bursts(
            part / "slow", frames, clients, captured, node_clients=part, processes=SLOW_READERS
        )

    def us(b: Burst) -> str:
        return f"{b.us_per_frame:.1f} µs ({b.delivered()})"

    def rate(b: Burst) -> str:
        return f"{b.frames / b.wall / 1000:,.1f}k frames/s"

    def gen(b: Burst) -> str:
        return f"{100 * b.gen_load:.0f}% of a core"

    def us_rate(b: Burst) -> str:
        rate = b.frames / b.wall / 1000
        return f"{b.us_per_frame:.1f} µs, {rate:,.0f}k frames/s ({b.delivered()})"

    slow_note = (
        f"target <= 1.5 µs; {times(slow.us_per_frame, relay.us_per_frame)} the fast readers' "
        f"µs; {slow.writes_note}"
        if isinstance(slow, Burst)
        else ""
    )
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
            f"slow readers: the same burst to {clients:,} subscribers read by one Node ws client "
            "process (a few times slower than the generator's two); server CPU per frame, rate",
            cell(slow, us_rate),
            cell(slow_py, us_rate),
            cell(slow_node, us_rate),
            slow_note,
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
