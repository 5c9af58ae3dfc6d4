"""``make bench``: ingest throughput, fan-out throughput and end-to-end latency, printed.

Everything is real: a relay on 127.0.0.1, a SQLite file in a temporary folder, a
synthetic stream replayed at full speed, and WebSocket clients in this process.
Run with ``python -m bench [--tweets N] [--clients K]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table
from websockets.asyncio.client import connect

from relay.app import Relay
from relay.config import Settings
from relay.synth import generate, write_stream

console = Console()


async def ingest(folder: Path, count: int) -> tuple[float, int]:
    """Replay ``count`` tweets at full speed into a fresh store; tweets a second."""
    stream = folder / "ingest.jsonl"
    write_stream(stream, count, seed=1)
    settings = Settings.from_mapping(
        {"port": 0, "db": str(folder / "ingest.db"), "replay": str(stream), "speed": "max"}
    )
    relay = Relay(settings)
    started = time.perf_counter()
    await relay.start()
    assert relay.ingest is not None
    await relay.ingest.finished.wait()
    elapsed = time.perf_counter() - started
    commits = getattr(relay.store, "commits", 0)
    await relay.stop()
    return count / elapsed, commits


async def fan_out(
    folder: Path, count: int, clients: int, rate: float = 0.0
) -> tuple[float, list[float]]:
    """``clients`` subscribers; delivered frames a second and per-tweet latencies (ms).

    ``rate`` tweets a second paces the source (0: as fast as possible)."""
    stream = folder / "fanout.jsonl"
    stream.write_bytes(b"".join(line + b"\n" for line in generate(count, seed=2)))
    settings = Settings.from_mapping(
        {
            "port": 0,
            "db": str(folder / "fanout.db"),
            "replay": str(stream),
            "speed": "max",
            "send_buffer": 64 << 20,
        }
    )
    source_started = asyncio.Event()
    latencies: list[float] = []

    async def client(url: str, ready: asyncio.Event, done: list[int]) -> None:
        async with connect(url, max_size=None) as ws:
            await ws.send('{"op":"subscribe","channel":"tweets"}')
            await ws.recv()
            ready.set()
            await source_started.wait()
            for _ in range(count):
                frame = orjson.loads(await ws.recv())
                received = time.time()
                latencies.append(
                    (received - frame["tweet"]["received_at_unix"]) * 1000
                    if "received_at_unix" in frame["tweet"]
                    else 0.0
                )
            done.append(1)

    # The relay starts with a source that waits for the clients, so no tweet is missed.
    relay = Relay(settings, source=_Gated(stream, source_started, rate))
    await relay.start()
    url = f"ws://127.0.0.1:{relay.port}/v1/stream"
    readies = [asyncio.Event() for _ in range(clients)]
    done: list[int] = []
    tasks = [asyncio.create_task(client(url, ready, done)) for ready in readies]
    await asyncio.gather(*(ready.wait() for ready in readies))
    started = time.perf_counter()
    source_started.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    await relay.stop()
    return count * clients / elapsed, latencies


class _Gated:
    """The replay source, held back until every client is subscribed; stamps send times."""

    name = "bench"

    def __init__(self, path: Path, gate: asyncio.Event, rate: float) -> None:
        self.path = path
        self.gate = gate
        self.rate = rate

    async def lines(self):  # type: ignore[no-untyped-def]
        from relay.sources import RawLine

        await self.gate.wait()
        start = time.perf_counter()
        for n, line in enumerate(self.path.read_bytes().splitlines()):
            if self.rate:
                await asyncio.sleep(max(0.0, start + n / self.rate - time.perf_counter()))
            payload = orjson.loads(line)
            payload["data"]["received_at_unix"] = time.time()
            yield RawLine(orjson.dumps(payload), time.time())


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--tweets", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="paced rate for latency")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rate, commits = asyncio.run(ingest(folder, args.tweets))
        fan_count = max(1000, args.tweets // 10)
        delivered, _ = asyncio.run(fan_out(folder, fan_count, args.clients))
        _, latencies = asyncio.run(fan_out(folder, 1000, args.clients, rate=args.rate))
    table = Table(title="tweet-relay benchmarks")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"ingest: {args.tweets} tweets replayed at max speed", f"{rate:,.0f} tweets/s")
    table.add_row("ingest: store commits (group commit)", f"{commits:,}")
    table.add_row(
        f"fan-out: {fan_count} tweets to {args.clients} clients", f"{delivered:,.0f} frames/s"
    )
    if latencies:
        ordered = sorted(latencies)
        table.add_row(
            f"latency at {args.rate:.0f} tweets/s, p50", f"{statistics.median(ordered):.1f} ms"
        )
        table.add_row(
            f"latency at {args.rate:.0f} tweets/s, p99",
            f"{ordered[int(len(ordered) * 0.99) - 1]:.1f} ms",
        )
    console.print(table)


if __name__ == "__main__":
    main()
