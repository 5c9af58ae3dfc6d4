"""The peer: a minimal python-websockets server sending the relay's own frames.

It speaks just enough of the relay's protocol for the load generator (a ``subscribe``
gets a ``subscribed`` reply) and sends the frame bytes it was given, the way the
websockets documentation advises: ``broadcast()`` for fan-out, ``send`` in a loop for
one client's catch-up. Compression is off, as in the relay. Commands come on stdin:

- ``go``: (mode ``broadcast``) every frame to every subscriber, a frame at a time;
- ``rate R``: (mode ``latency``) the frames at R a second, each stamped with the send
  time where the relay puts its receive time;

mode ``catchup`` sends every frame to each subscriber as soon as it subscribes, mode
``idle`` holds the connections. ``python -m bench.peer --frames FILE --mode MODE``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.loadgen import STAMP, raise_open_files

SUBSCRIBED = b'{"type":"subscribed","channel":"tweets","epoch":"peer","seq":0,"recovered":0}'


def stamped(frame: bytes, now: float) -> bytes:
    """``frame`` with its ``received_at`` replaced by ``now`` (same format, same length)."""
    at = frame.rfind(STAMP) + len(STAMP)
    if at < len(STAMP):
        return frame
    close = frame.index(b'"', at)
    text = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    return frame[:at] + text.replace("+00:00", "Z").encode() + frame[close:]


async def main(frames: list[bytes], mode: str) -> None:
    raise_open_files()
    subscribers: set[ServerConnection] = set()
    stop = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            if b'"subscribe"' not in (message if isinstance(message, bytes) else message.encode()):
                continue
            await ws.send(SUBSCRIBED, text=True)
            if mode == "catchup":
                for frame in frames:
                    await ws.send(frame, text=True)
            else:
                subscribers.add(ws)
        subscribers.discard(ws)

    async with serve(
        handler, "127.0.0.1", 0, compression=None, max_size=1 << 16, ping_interval=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"peer: port {port}", flush=True)
        loop = asyncio.get_running_loop()
        while not stop.done():
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            words = line.split()
            if words[:1] == ["go"]:
                for frame in frames:
                    broadcast(subscribers, frame, text=True)
                    await asyncio.sleep(0)  # let the transports write, as a server would
            elif words[:1] == ["rate"]:
                period = 1 / float(words[1])
                started = time.perf_counter()
                for n, frame in enumerate(frames):
                    await asyncio.sleep(max(0.0, started + n * period - time.perf_counter()))
                    broadcast(subscribers, stamped(frame, time.time()), text=True)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", required=True, help="the frames, one a line")
    parser.add_argument("--mode", choices=["broadcast", "latency", "catchup", "idle"])
    args = parser.parse_args()
    frames = Path(args.frames).read_bytes().splitlines()
    asyncio.run(main(frames, args.mode))


if __name__ == "__main__":
    cli()
