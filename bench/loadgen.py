"""The load generator: many WebSocket clients on one asyncio loop, in a worker process.

Each client is a raw asyncio protocol: a fixed upgrade request offering no extension
(so no compression), one masked text frame to subscribe, and a minimal reader of the
server's unmasked frames that counts tweet frames, checks their seqs follow each other
and, when asked, reads the relay's ``received_at`` stamp for latency. Pings are
answered. With ``transport: "sse"`` a client is a plain GET of an event stream
(:class:`EventClient`), read the same way: tweet events counted, their ids' seqs checked.
It does as little per frame as a client can, so that the server, not the generator, is
what the benchmark measures; the worker reports its own CPU time.

The parent drives a worker through a pipe: ``connect`` -> ready, ``wait`` -> done.
Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import struct
import time
from array import array
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

HOST = "127.0.0.1"
UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)
SEQ = b'"seq":'
STAMP = b'"received_at":"'


def raise_open_files() -> None:
    """As many descriptors as the hard limit allows (10,000 clients need more than 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame; the zero mask leaves the payload as it is."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


@dataclass
class Shared:
    """What every client of one worker adds to."""

    expect: int
    latency: bool
    frames: int = 0
    complete: int = 0
    gaps: int = 0
    closed: int = 0
    first: float = 0.0
    last: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    stamps: dict[bytes, float] = field(default_factory=dict)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    clients: int = 0

    def stamp(self, text: bytes) -> float:
        value = self.stamps.get(text)
        if value is None:
            value = datetime.fromisoformat(text.decode().replace("Z", "+00:00")).timestamp()
            self.stamps[text] = value
        return value


class Client(asyncio.Protocol):
    """One WebSocket client that reads and counts; ``stuck`` ones stop reading at once."""

    def __init__(self, shared: Shared, request: bytes, subscribe: bytes, stuck: bool) -> None:
        self.shared = shared
        self.request = request
        self.subscribe = subscribe
        self.stuck = stuck
        self.buffer = bytearray()
        self.upgraded = False
        self.subscribed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.count = 0
        self.last_seq = -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.shared.closed += 1
        if not self.subscribed.done():
            self.subscribed.set_exception(ConnectionError(f"closed before subscribed: {exc}"))

    def _answered(self, buffer: bytearray, status: bytes) -> bool:
        """Whether the server's answer head is in and says ``status`` (then it is taken off
        the buffer); a refusal fails the subscription and closes."""
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        if not buffer.startswith(status):
            self.subscribed.set_exception(
                ConnectionError(bytes(buffer[: buffer.find(b"\r\n")]).decode())
            )
            assert self.transport is not None
            self.transport.close()
            return False
        del buffer[: end + 4]
        self.upgraded = True
        return True

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            if not self._answered(buffer, b"HTTP/1.1 101"):
                return
            assert self.transport is not None
            self.transport.write(client_frame(self.subscribe))
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            opcode = buffer[pos] & 0x0F
            length = buffer[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buffer[pos + 2] << 8) | buffer[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, pos + 2)
                head = 10
            end = pos + head + length
            if end > size:
                break
            start = pos + head
            pos = end
            if opcode == 0x1:
                if buffer.startswith(b'{"type":"tweet"', start):
                    self._tweet(buffer, start, end, now)
                elif not self.subscribed.done():
                    self.subscribed.set_result(bytes(buffer[start:end]))
            elif opcode == 0x9 and self.transport is not None:  # ping: answer it
                self.transport.write(client_frame(bytes(buffer[start:end]), 0xA))
            elif opcode == 0x8 and self.transport is not None:
                self.transport.close()
        del buffer[:pos]
        if self.stuck and self.transport is not None and self.subscribed.done():
            self.transport.pause_reading()

    def _tweet(self, buffer: bytearray, start: int, end: int, now: float) -> None:
        at = buffer.find(SEQ, start, end) + 6
        stop = at
        while 48 <= buffer[stop] <= 57:
            stop += 1
        self._counted(int(buffer[at:stop]), buffer, start, end, now)

    def _counted(self, seq: int, buffer: bytearray, start: int, end: int, now: float) -> None:
        shared = self.shared
        if self.count >= shared.expect:  # a looping source goes on: past the run
            return
        if self.last_seq >= 0 and seq != self.last_seq + 1:
            shared.gaps += 1
        self.last_seq = seq
        if shared.latency:
            mark = buffer.rfind(STAMP, start, end) + len(STAMP)
            if mark >= len(STAMP):
                close = buffer.find(b'"', mark, end)
                stamp = shared.stamp(bytes(buffer[mark:close]))
                shared.latencies.extend((now - stamp, stamp))
        self.count += 1
        shared.frames += 1
        if not shared.first:
            shared.first = now
        shared.last = now
        if self.count == shared.expect:
            shared.complete += 1
            if shared.complete >= shared.clients:
                shared.all_done.set()


class EventClient(Client):
    """One server-sent events client: ``request`` is its GET; tweet events are counted by
    the seq of their ``id: <epoch>:<seq>``."""

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buffer = self.buffer
        buffer += data
        if not self.upgraded and not self._answered(buffer, b"HTTP/1.1 200"):
            return
        # Line by line with one-byte finds (memchr): a two-byte pattern would be searched
        # through every event's whole data at several times the cost.
        pos, size = 0, len(buffer)
        while True:
            start, end = pos, pos
            while (stop := buffer.find(b"\n", end)) > end:  # to the blank line
                end = stop + 1
            if stop < 0:
                break  # the event is not complete yet
            pos = stop + 1
            if buffer.startswith(b"id: ", start):
                colon = buffer.find(b":", start + 4, end)
                line = buffer.find(b"\n", colon)
                if buffer.startswith(b"event: tweet\n", line + 1):
                    self._counted(int(buffer[colon + 1 : line]), buffer, start, end, now)
                    continue
            if not self.subscribed.done() and buffer.find(b"event: subscribed", start, end) >= 0:
                self.subscribed.set_result(bytes(buffer[start:end]))
            if pos >= size:
                break
        del buffer[:pos]
        if self.stuck and self.transport is not None and self.subscribed.done():
            self.transport.pause_reading()


EVENTS_REQUEST = "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"


async def _open(
    port: int,
    path: str,
    shared: Shared,
    subscribe: bytes,
    count: int,
    stuck: int,
    timeout: float,
    transport: str = "websocket",
) -> list[Client]:
    loop = asyncio.get_running_loop()
    kind = EventClient if transport == "sse" else Client
    template = EVENTS_REQUEST if transport == "sse" else UPGRADE
    request = template.format(path=path, host=HOST, port=port).encode()
    limit = asyncio.Semaphore(64)  # connects in flight: the server's accept queue is finite

    async def one(is_stuck: bool) -> Client:
        async with limit:
            _, client = await loop.create_connection(
                lambda: kind(shared, request, subscribe, is_stuck), HOST, port
            )
            await asyncio.wait_for(client.subscribed, timeout)
            return client

    return await asyncio.wait_for(
        asyncio.gather(*(one(n < stuck) for n in range(count + stuck))), timeout * 4
    )


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _serve(pipe: Connection, spec: dict[str, Any]) -> None:
    raise_open_files()
    shared = Shared(expect=spec["expect"], latency=spec.get("latency", False))
    shared.clients = spec["clients"]
    loop = asyncio.get_running_loop()
    timeout = spec.get("timeout", 30.0)
    try:
        clients = await _open(
            spec["port"],
            spec.get("path", "/v1/stream"),
            shared,
            spec["subscribe"],
            spec["clients"],
            spec.get("stuck", 0),
            timeout,
            spec.get("transport", "websocket"),
        )
    except (TimeoutError, OSError) as exc:
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    pipe.send({"ready": len(clients)})
    # The parent says when to wait for the frames (after it started the burst).
    command = await loop.run_in_executor(None, _recv, pipe, timeout * 4)
    cpu = cpu_seconds()
    started = time.time()
    if command == "wait" and shared.expect:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(shared.all_done.wait(), timeout)
    elif command == "hold":
        await loop.run_in_executor(None, _recv, pipe, timeout * 4)
    result = {
        "frames": shared.frames,
        "complete": shared.complete,
        "gaps": shared.gaps,
        "closed": shared.closed,
        "first": shared.first,
        "last": shared.last,
        "started": started,
        "cpu": cpu_seconds() - cpu,
        "latencies": shared.latencies.tobytes(),
    }
    for client in clients:
        if client.transport is not None:
            client.transport.abort()
    pipe.send(result)


def _recv(pipe: Connection, timeout: float) -> Any:
    if pipe.poll(timeout):
        return pipe.recv()
    return None


def run_worker(pipe: Connection, spec: dict[str, Any]) -> None:
    """A worker process's body: open the clients, report, wait for the frames, report."""
    try:
        asyncio.run(_serve(pipe, spec), debug=False)
    finally:
        pipe.close()
