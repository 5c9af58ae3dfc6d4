"""The parts of ``make bench``, each a function returning table rows.

A part starts its servers as subprocesses on 127.0.0.1 (a fresh store in its own
folder), drives them from the load generator's worker processes, reads the servers'
CPU time and memory from their own /proc counters, and ends everything it started.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import connect

from bench.ingest import fill
from bench.procs import (
    Generator,
    NodeClients,
    Server,
    end,
    info,
    node_peer,
    node_ready,
    python_peer,
    relay_ingest,
    relay_serve,
)
from bench.table import Row
from relay.sources.synth import generate, write_stream

SUBSCRIBE = b'{"op":"subscribe","channel":"tweets"}'


def times(figure: float, peer: float) -> str:
    """``figure`` as a multiple of ``peer``; a short run may count no CPU tick (10 ms) at all."""
    return f"{figure / peer:.2f}x" if peer > 0 else "n/a (no CPU tick counted)"


@dataclass
class Burst:
    """What one server did while the generator received a burst."""

    cpu: float
    wall: float
    frames: int
    expected: int
    gaps: int
    gen_cpu: float
    results: list[dict[str, Any]]

    @property
    def us_per_frame(self) -> float:
        return 1e6 * self.cpu / max(self.frames, 1)

    @property
    def gen_load(self) -> float:
        """The busiest generator worker's CPU share of the burst's wall time."""
        return max((r.get("cpu", 0.0) for r in self.results), default=0.0) / max(self.wall, 1e-9)

    def delivered(self) -> str:
        return f"{self.frames:,}/{self.expected:,}" + (f", {self.gaps} gaps" if self.gaps else "")


def burst(
    server: Server,
    clients: int,
    expect: int,
    trigger: Callable[[], Any] | None,
    *,
    subscribe: bytes = SUBSCRIBE,
    timeout: float = 60.0,
    node_clients: Path | None = None,
    **spec: Any,
) -> Burst:
    """Connect ``clients`` to ``server``, run ``trigger``, wait for ``expect`` frames each.

    Without a trigger the frames start with the subscription (a catch-up): the server's
    CPU is counted from before the clients connect. ``node_clients``: Node ``ws`` clients
    (their files in that folder) instead of the Python generator's."""
    processes = min(2, clients)
    gen: Generator | NodeClients = (
        Generator(processes=processes)
        if node_clients is None
        else NodeClients(node_clients, processes)
    )
    try:
        if trigger is None:
            cpu, gen_cpu = server.cpu(), 0.0
            started = time.time()
        ready = gen.connect(server.port, clients, subscribe, expect, timeout=timeout, **spec)
        if ready < clients:
            raise RuntimeError(f"only {ready} of {clients} clients subscribed")
        gen.send("wait")
        if trigger is not None:
            time.sleep(0.2)  # the workers are in their wait (a pipe message away)
            cpu, gen_cpu = server.cpu(), gen.cpu()
            started = time.time()
            trigger()
        results = gen.results(timeout + 10)
        cpu, gen_cpu = server.cpu() - cpu, gen.cpu() - gen_cpu
    finally:
        gen.close()
    if any("error" in r for r in results):
        raise RuntimeError(f"load generator: {results}")
    last = max(r["last"] for r in results)
    # A burst counts from its first frame; a catch-up from before the client connected.
    first = (
        started
        if trigger is None
        else min((r["first"] for r in results if r["first"]), default=started)
    )
    return Burst(
        cpu=cpu,
        wall=max(last - first, 1e-9),
        frames=sum(r["frames"] for r in results),
        expected=expect * clients,
        gaps=sum(r["gaps"] for r in results),
        gen_cpu=gen_cpu,
        results=results,
    )


def capture_frames(port: int, count: int, path: Path, timeout: float = 30.0) -> int:
    """The relay's own ``tweets`` frames, exactly as sent, from a resume at seq 0."""
    epoch = info(port).get("epoch")
    since = {"op": "subscribe", "channel": "tweets", "since": {"epoch": epoch, "seq": 0}}
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    with connect(
        f"ws://127.0.0.1:{port}/v1/stream", compression=None, max_size=None, open_timeout=10
    ) as ws:
        ws.send(orjson.dumps(since).decode())
        while len(frames) < count and time.monotonic() < deadline:
            message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            data = message.encode() if isinstance(message, str) else message
            if data.startswith(b'{"type":"tweet"'):
                frames.append(data)
    path.write_bytes(b"".join(f + b"\n" for f in frames))
    return len(frames)


def _peer_bursts(
    folder: Path,
    frames: Path,
    clients: int,
    count: int,
    mode: str = "broadcast",
    subscribe: bytes = SUBSCRIBE,
    **spec: Any,
) -> tuple[Burst | str, Burst | str]:
    """The python-websockets peer and Node's ``ws`` on the same frames and clients."""
    out: list[Burst | str] = []
    for start in (python_peer, node_peer):
        try:
            peer = start(folder, frames, mode)
        except RuntimeError as exc:
            out.append(f"failed: {exc}"[:80])
            continue
        if isinstance(peer, str):
            out.append(peer)
            continue
        try:
            go = (lambda p=peer: p.command("go")) if mode == "broadcast" else None
            out.append(burst(peer, clients, count, go, subscribe=subscribe, **spec))
        except RuntimeError as exc:
            out.append(f"failed: {exc}"[:80])
        finally:
            peer.stop()
    return out[0], out[1]


def _cell(result: Burst | str, show: Callable[[Burst], str]) -> str:
    return result if isinstance(result, str) else show(result)


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


EVENTS_TWEETS = "/v1/events?channel=tweets"


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
    py, node = _peer_bursts(part, frames, clients, captured)
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
            _cell(py, us),
            _cell(node, us),
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
            _cell(py, rate),
            _cell(node, rate),
        ),
        Row(
            "fan-out",
            "load generator: busiest of 2 worker processes, CPU / burst wall time",
            gen(relay),
            _cell(py, gen),
            _cell(node, gen),
            "below 100% while a peer goes faster: the generator is not the bound",
        ),
    ]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _latencies(b: Burst) -> list[float]:
    out: list[float] = []
    for r in b.results:
        values = array("d")
        values.frombytes(r["latencies"])
        out.extend(values)
    return out


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

        before = _writes(serve.port)
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
        after = _writes(serve.port)
        writes, frames, waited, observed = (a - b for a, b in zip(after, before, strict=True))
        captured = part / "frames.jsonl"
        capture_frames(serve.port, count, captured)
    finally:
        if ingest is not None:
            end(ingest)
        serve.stop()
    return LiveRun(relay, frames / max(writes, 1), waited / max(observed, 1)), captured


def _writes(port: int) -> tuple[float, float, float, float]:
    """The relay's socket writes to clients, frames sent, and its delivery latency
    histogram's sum and count, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values = [0.0, 0.0, 0.0, 0.0]
    for line in text.splitlines():
        for n, prefix in enumerate(
            (
                "relay_stream_writes_total ",
                "relay_frames_sent_total{",
                "relay_delivery_latency_seconds_sum ",
                "relay_delivery_latency_seconds_count ",
            )
        ):
            if line.startswith(prefix):
                values[n] += float(line.split()[-1])
    writes, frames, waited, observed = values
    return writes, frames, waited, observed


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

    def lat(b: Burst) -> str:
        values = _latencies(b)
        if not values:
            return "no frames"
        return (
            f"p50 {1000 * statistics.median(values):.1f} ms, "
            f"p99 {1000 * percentile(values, 0.99):.1f} ms ({b.delivered()})"
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
                _cell(py, lat),
                _cell(node, lat),
                "target: every frame, p99 <= 25 ms",
            ),
            Row(
                "latency",
                f"server CPU a delivered frame during the paced run, {name}; frames a "
                "write; generator: busiest client process's CPU",
                f"{cpu(b)}; {run.frames_per_write:.1f} frames a write; relay's own "
                f"delivery latency mean {1000 * run.mean_delivery:.1f} ms; generator "
                f"{100 * b.gen_load:.0f}%",
                _cell(py, lambda p: f"{cpu(p)}; generator {100 * p.gen_load:.0f}%"),
                _cell(node, lambda p: f"{cpu(p)}; generator {100 * p.gen_load:.0f}%"),
                f"target <= 0.5x Node ws: {versus(b)}",
            ),
        ]
    return rows


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
    py, node = _peer_bursts(part, frames, 1, captured, "catchup", timeout=60)

    def wall(b: Burst) -> str:
        return f"{b.wall:.2f} s, {b.us_per_frame:.1f} µs/frame ({b.delivered()})"

    return [
        Row(
            "catch-up",
            f"1 client resumes from seq 0 over {count:,} stored tweets: wall "
            "(connect to last frame), server CPU a frame; peer: send() in a loop",
            wall(relay),
            _cell(py, wall),
            _cell(node, wall),
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


def idle(folder: Path, clients: int) -> list[Row]:
    """5 part: ``clients`` idle subscribers, each with a filter that never matches."""
    part = folder / "idle"
    part.mkdir()
    subscribe = b'{"op":"subscribe","channel":"tweets","filters":{"lang":"xx"}}'
    results: list[str] = []
    frames = part / "none.jsonl"
    frames.write_bytes(b"")

    def measure(server: Server) -> str:
        gen = Generator()
        try:
            time.sleep(0.5)
            before = server.rss_kb()
            ready = gen.connect(server.port, clients, subscribe, 0, timeout=60)
            gen.send("hold")
            time.sleep(1.0)  # whatever the server does after the last subscribe settles
            after = server.rss_kb()
            gen.release()
            gen.results(30)
        finally:
            gen.close()
        if ready < clients:
            return f"only {ready} connected"
        return (
            f"{(after - before) / clients:.1f} KB each ({before / 1024:.0f} -> "
            f"{after / 1024:.0f} MB)"
        )

    serve = relay_serve(part, part / "idle.db", "")
    try:
        results.append(measure(serve))
    except RuntimeError as exc:
        results.append(f"failed: {exc}"[:80])
    finally:
        serve.stop()
    for start in (python_peer, node_peer):
        try:
            peer = start(part, frames, "idle")
        except RuntimeError as exc:
            results.append(f"failed: {exc}"[:80])
            continue
        if isinstance(peer, str):
            results.append(peer)
            continue
        try:
            results.append(measure(peer))
        except RuntimeError as exc:
            results.append(f"failed: {exc}"[:80])
        finally:
            peer.stop()
    return [
        Row(
            "idle",
            f"{clients:,} idle subscribers (filter lang=xx never matches), no "
            "compression: server resident memory (VmRSS) per connection",
            results[0],
            results[1],
            results[2],
            "target <= 10 KB at 10,000",
        ),
    ]
