"""What the parts of ``make bench`` share: a burst to load-generator clients, captured frames.

A part starts its servers as subprocesses on 127.0.0.1 (a fresh store in its own
folder), drives them from the load generator's worker processes, reads the servers'
CPU time and memory from their own /proc counters, and ends everything it started.
"""

from __future__ import annotations

import time
import urllib.request
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import connect

from bench.procs import (
    Generator,
    NodeClients,
    Server,
    info,
    node_peer,
    python_peer,
)

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
    writes_note: str = ""
    """The relay's frames a socket write over the burst, when the part read its metrics."""

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
    processes: int = 2,
    **spec: Any,
) -> Burst:
    """Connect ``clients`` to ``server``, run ``trigger``, wait for ``expect`` frames each.

    Without a trigger the frames start with the subscription (a catch-up): the server's
    CPU is counted from before the clients connect. ``node_clients``: Node ``ws`` clients
    (their files in that folder) instead of the Python generator's, in ``processes``
    client processes."""
    processes = min(processes, clients)
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


def peer_bursts(
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


def cell(result: Burst | str, show: Callable[[Burst], str]) -> str:
    return result if isinstance(result, str) else show(result)


EVENTS_TWEETS = "/v1/events?channel=tweets"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def latencies(b: Burst, warmup: float = 0.0) -> list[float]:
    """Every frame's latency (seconds), leaving out the frames stamped within ``warmup``
    seconds of the first one (the clients record (latency, stamp) pairs)."""
    pairs = array("d")
    for r in b.results:
        pairs.frombytes(r["latencies"])
    stamps = pairs[1::2]
    if not stamps:
        return []
    since = min(stamps) + warmup
    return [value for value, stamp in zip(pairs[::2], stamps, strict=True) if stamp >= since]


def relay_writes(port: int) -> tuple[float, float, float, float]:
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
