"""Latency part: the live path at X's real rate, Node clients, beside the peers."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.burst import (
    Burst,
    burst,
    capture_frames,
    cell,
    latencies,
    percentile,
    relay_writes,
    times,
)
from bench.procs import (
    end,
    node_peer,
    node_ready,
    python_peer,
    relay_ingest,
    relay_serve,
)
from bench.table import Row
from relay.sources.synth import generate

WARMUP = 1.0
"""Seconds at the start of a paced run (at most a tenth of it) whose frames the latency
figures leave out, for every server: the relay's ingester process starts with the stream
while the client processes warm up on the same 2 cores, and in the first tenth of a
second every hop of the relay (commit, Redis, fan-out) waits 15-30 ms for a core; the
figure is of the live path, not of a start. The p99 with them is printed beside."""
LINES_PER_CHUNK = 5
"""Lines recorded at one time by default: the replay's sleep overshoots a little each
time, and one sleep per 4 ms line may fall short of 250 a second on a busy machine."""


def _stream_at(path: Path, count: int, rate: float, seed: int, chunk: int) -> None:
    """``count`` synthetic lines recorded at ``rate`` a second, ``chunk`` at one time."""
    lines = []
    for n, line in enumerate(generate(count, seed)):
        payload = orjson.loads(line)
        at = (n // chunk) * chunk / rate
        payload["__relay"] = {"received_at": 1_700_000_000 + at}
        lines.append(orjson.dumps(payload) + b"\n")
    path.write_bytes(b"".join(lines))


@dataclass
class LiveRun:
    """One relay's paced run: what the clients saw and what its writes carried."""

    burst: Burst
    frames_per_write: float
    mean_delivery: float
    """The relay's own delivery latency (line received -> sockets), mean seconds."""


def _live_run(
    part: Path,
    redis_url: str,
    stream: Path,
    clients: int,
    count: int,
    rate: float,
    window_ms: float,
    node_clients: Path | None,
) -> tuple[LiveRun, Path]:
    """A fresh relay (window ``window_ms``) fed at ``rate`` by ``relay ingest --loop``;
    the run and its frames, captured to ``part/frames.jsonl``."""
    part.mkdir()
    db = part / "latency.db"
    serve = relay_serve(part, db, redis_url, RELAY_COALESCE_MS=str(window_ms))
    ingest = None
    try:

        def trigger() -> None:
            nonlocal ingest
            # --loop stamps each line with the ingester's clock as it reads it (and gives
            # fresh ids); the run ends once every client has its ``count`` frames.
            ingest = relay_ingest(part, db, stream, redis_url, speed="1", loop=True)

        before = relay_writes(serve.port)
        relay = burst(
            serve,
            clients,
            count,
            trigger,
            latency=True,
            stuck=1,
            timeout=count / rate + 15,
            node_clients=node_clients,
        )
        after = relay_writes(serve.port)
        writes, frames, waited, observed = (a - b for a, b in zip(after, before, strict=True))
        captured = part / "frames.jsonl"
        capture_frames(serve.port, count, captured)
    finally:
        if ingest is not None:
            end(ingest)
        serve.stop()
    return LiveRun(relay, frames / max(writes, 1), waited / max(observed, 1)), captured


def latency(
    folder: Path,
    redis_url: str,
    clients: int,
    count: int,
    rate: float,
    window_ms: float,
    chunk: int = LINES_PER_CHUNK,
) -> list[Row]:
    """2 part: ``count`` tweets at ``rate`` a second to ``clients``, one stuck client, on a
    relay without the coalescing window and one with ``window_ms``, then both peers."""
    part = folder / "latency"
    part.mkdir()
    stream = part / "paced.jsonl"
    _stream_at(stream, count, rate, seed=12, chunk=chunk)
    ready = node_ready()
    node_clients = part if not ready else None
    runs: dict[float, LiveRun] = {}
    frames = Path()
    for window in (0.0, window_ms):
        folder_of_run = part / f"window-{window:g}"
        run, frames = _live_run(
            folder_of_run, redis_url, stream, clients, count, rate, window, node_clients
        )
        runs[window] = run
    captured = sum(1 for _ in frames.open("rb"))
    peers: list[Burst | str] = []
    for start in (python_peer, node_peer):
        try:
            server = start(part, frames, "latency")
        except RuntimeError as exc:
            peers.append(f"failed: {exc}"[:80])
            continue
        if isinstance(server, str):
            peers.append(server)
            continue
        try:
            peers.append(
                burst(
                    server,
                    clients,
                    captured,
                    lambda s=server: s.command(f"rate {rate}"),
                    latency=True,
                    stuck=1,
                    timeout=count / rate + 15,
                    node_clients=node_clients,
                )
            )
        except RuntimeError as exc:
            peers.append(f"failed: {exc}"[:80])
        finally:
            server.stop()
    py, node = peers

    warmup = min(WARMUP, count / rate / 10)  # a short run (--quick) keeps most of its frames

    def lat(b: Burst) -> str:
        every = latencies(b)
        values = latencies(b, warmup) or every
        if not values:
            return "no frames"
        return (
            f"p50 {1000 * statistics.median(values):.1f} ms, "
            f"p99 {1000 * percentile(values, 0.99):.1f} ms; with the first {warmup:g} s "
            f"p99 {1000 * percentile(every, 0.99):.1f} ms ({b.delivered()})"
        )

    def cpu(b: Burst) -> str:
        return (
            f"{b.us_per_frame:.1f} µs/frame, {100 * b.cpu / b.wall:.0f}% of a core, "
            f"{b.frames / b.wall / 1000:.0f}k frames/s"
        )

    def versus(b: Burst) -> str:
        if isinstance(node, str):
            return "Node ws peer: " + node
        return f"{times(b.us_per_frame, node.us_per_frame)} Node ws"

    who = "Node ws clients" if node_clients else f"Python clients (no Node clients: {ready})"
    cond = (
        f"{rate:.0f} tweets/s ({chunk} a line time) to {clients:,} subscribers + 1 stuck "
        f"client, {count:,} tweets, "
        f"{who} in 2 processes"
    )
    rows = []
    for window, run in runs.items():
        name = f"window {window:g} ms" if window else "no window (coalesce_ms 0)"
        b = run.burst
        rows += [
            Row(
                "latency",
                f"line received -> frame at client, {name}; {cond}",
                lat(b),
                cell(py, lat),
                cell(node, lat),
                f"target: every frame, p99 <= 25 ms (past the first {warmup:g} s, every "
                "server alike: the relay's ingester starts with the stream)",
            ),
            Row(
                "latency",
                f"server CPU a delivered frame during the paced run, {name}; frames a "
                "write; generator: busiest client process's CPU",
                f"{cpu(b)}; {run.frames_per_write:.1f} frames a write; relay's own "
                f"delivery latency mean {1000 * run.mean_delivery:.1f} ms; generator "
                f"{100 * b.gen_load:.0f}%",
                cell(py, lambda p: f"{cpu(p)}; generator {100 * p.gen_load:.0f}%"),
                cell(node, lambda p: f"{cpu(p)}; generator {100 * p.gen_load:.0f}%"),
                f"target <= 0.5x Node ws: {versus(b)}",
            ),
        ]
    return rows
