"""The soak test's clients: each kind a bounded asyncio loop, run in worker processes.

Every loop stops at ``deadline`` (wall clock) or after ``MAX_ROUNDS`` rounds, whichever
comes first, and every wait has a timeout, so a worker always ends. Clients only ever
connect to 127.0.0.1. Each kind counts what it saw in a :class:`Tally`; the worker sends
the tallies back to the parent as plain dicts.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import random
import struct
import time
import urllib.error
import urllib.request
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

HOST = "127.0.0.1"
MAX_ROUNDS = 100_000
"""A bound on every loop besides its deadline."""
TIMEOUT = 5.0
CHANNELS = ["tweets", "rule:cats", "rule:python", "rule:space", "rule:football", "rule:music"]
FILTERS: list[dict[str, Any] | None] = [
    None,
    {"lang": "en"},
    {"has_media": True},
    {"lang": ["ja", "es"]},
    {"keyword": "the"},
]


@dataclass
class Tally:
    """What one kind of client saw."""

    connects: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    extra: dict[str, Any] = field(default_factory=dict)

    def closed(self, exc: BaseException, prefix: str = "") -> None:
        code = getattr(getattr(exc, "rcvd", None), "code", None)
        self.closes[prefix + (str(code) if code is not None else "no close frame")] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "connects": self.connects,
            "refused": dict(self.refused),
            "closes": dict(self.closes),
            "frames": self.frames,
            "errors": dict(self.errors),
            "statuses": dict(self.statuses),
            "latencies_ms": list(self.latencies_ms),
            **self.extra,
        }


@dataclass
class Target:
    port: int
    deadline: float

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/v1/stream"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def left(self) -> float:
        return self.deadline - time.time()


def _latency_ms(frame: dict[str, Any], now: float) -> float | None:
    received = frame.get("tweet", {}).get("received_at")
    if not isinstance(received, str):
        return None
    return (now - datetime.fromisoformat(received).timestamp()) * 1000


async def _open(target: Target, tally: Tally, **kwargs: Any) -> ClientConnection | None:
    try:
        ws = await connect(target.ws_url, open_timeout=TIMEOUT, close_timeout=1, **kwargs)
    except InvalidStatus as exc:
        tally.refused[str(exc.response.status_code)] += 1
        return None
    except (OSError, TimeoutError) as exc:
        tally.errors[type(exc).__name__] += 1
        return None
    tally.connects += 1
    return ws


async def _subscribe(ws: ClientConnection, channel: str, **extra: Any) -> dict[str, Any]:
    """Send subscribe and return the ``subscribed`` (or error) frame."""
    await ws.send(orjson.dumps({"op": "subscribe", "channel": channel, **extra}).decode())
    while True:
        frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if frame["type"] in ("subscribed", "error"):
            return frame


async def reference(target: Target, tally: Tally) -> None:
    """One fast reader of ``tweets``: every seq once, in order, resuming after any close."""
    seqs = array("q")
    epoch, last = "", 0
    rounds = 0
    while target.left() > 0 and rounds < MAX_ROUNDS:
        rounds += 1
        ws = await _open(target, tally, max_size=None)
        if ws is None:
            await asyncio.sleep(0.2)
            continue
        try:
            since = {"since": {"epoch": epoch, "seq": last}} if epoch else {}
            answer = await _subscribe(ws, "tweets", **since)
            epoch = answer.get("epoch", epoch)
            # Frames recovered from the store are old by design: not live delivery latency.
            catching_up = int(answer.get("recovered") or 0)
            while target.left() > 0:
                raw = await asyncio.wait_for(ws.recv(), max(0.01, min(TIMEOUT, target.left())))
                now = time.time()
                frame = orjson.loads(raw)
                if frame.get("type") != "tweet":
                    continue
                seqs.append(frame["seq"])
                last = frame["seq"]
                tally.frames += 1
                if catching_up > 0:
                    catching_up -= 1
                elif tally.frames % 10 == 0:  # a sample keeps the report small
                    latency = _latency_ms(frame, now)
                    if latency is not None:
                        tally.latencies_ms.append(latency)
        except ConnectionClosed as exc:
            tally.closed(exc)
        except TimeoutError:
            if target.left() > 0:  # the last wait is cut short by the deadline on purpose
                tally.errors["timeout"] += 1
        finally:
            await ws.close()
    gaps = [(a, b) for a, b in itertools.pairwise(seqs) if b != a + 1]
    tally.extra.update(
        first_seq=seqs[0] if seqs else None,
        last_seq=seqs[-1] if seqs else None,
        unique_seqs=len(set(seqs)),
        gaps=len(gaps),
        gap_examples=gaps[:5],
        resumes=rounds - 1,
    )


async def reader(target: Target, tally: Tally, delay: float = 0.0, once: float = 0.0) -> None:
    """A subscriber with filters; ``delay`` between frames makes it slow, ``once`` churns."""
    rng = random.Random()
    rounds = 0
    while target.left() > 0 and rounds < MAX_ROUNDS:
        rounds += 1
        ws = await _open(target, tally, max_size=None)
        if ws is None:
            await asyncio.sleep(0.2)
            continue
        try:
            chosen = rng.choice(FILTERS)
            await _subscribe(ws, rng.choice(CHANNELS), **({"filters": chosen} if chosen else {}))
            stop = time.time() + (once or target.left())
            while time.time() < min(stop, target.deadline):
                raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
                tally.frames += 1
                if delay:
                    await asyncio.sleep(delay)
                elif tally.frames % 50 == 0:
                    latency = _latency_ms(orjson.loads(raw), time.time())
                    if latency is not None:
                        tally.latencies_ms.append(latency)
        except ConnectionClosed as exc:
            tally.closed(exc)
        except TimeoutError:
            tally.errors["timeout"] += 1
        finally:
            await ws.close()


async def resumer(target: Target, tally: Tally) -> None:
    """Connect, resume from a recent (epoch, seq), take what comes for a second, leave."""
    rng = random.Random()
    rounds = 0
    while target.left() > 0 and rounds < MAX_ROUNDS:
        rounds += 1
        info = await asyncio.to_thread(_get_json, target.http_url + "/v1/info")
        ws = await _open(target, tally, max_size=None)
        if ws is None or info is None:
            await asyncio.sleep(0.2)
            continue
        try:
            since = {"epoch": info["epoch"], "seq": max(0, info["seq"] - rng.randrange(5000))}
            answer = await _subscribe(ws, rng.choice(CHANNELS), since=since)
            tally.extra["recovered"] = tally.extra.get("recovered", 0) + answer.get("recovered", 0)
            stop = time.time() + 1.0
            while time.time() < min(stop, target.deadline):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
                tally.frames += 1
        except ConnectionClosed as exc:
            tally.closed(exc)
        except TimeoutError:
            tally.errors["timeout"] += 1
        finally:
            await ws.close()


async def misbehaving(target: Target, tally: Tally) -> None:
    """Bad frames, an oversized frame, a burst past the rate limit, sub/unsub churn."""
    rng = random.Random()
    rounds = 0
    while target.left() > 0 and rounds < MAX_ROUNDS:
        rounds += 1
        ws = await _open(target, tally, max_size=None, max_queue=4)
        if ws is None:
            await asyncio.sleep(0.2)
            continue
        act = rng.choice(["junk", "oversized", "burst", "churn"])
        tally.extra[act] = tally.extra.get(act, 0) + 1
        try:
            if act == "junk":
                for junk in ("{", "[]", '{"op":"nope"}', '{"op":"subscribe"}', b"\x00\x01"):
                    await ws.send(junk)
            elif act == "oversized":
                await ws.send("x" * (70 * 1024))
            elif act == "burst":
                for _ in range(80):
                    await ws.send('{"op":"ping"}')
            else:
                stop = time.time() + 5
                while time.time() < min(stop, target.deadline):
                    channel = rng.choice(CHANNELS)
                    await ws.send(
                        orjson.dumps(
                            {
                                "op": "subscribe",
                                "channel": channel,
                                "since": {"epoch": "", "seq": 0},
                            }
                        ).decode()
                    )
                    await ws.send(orjson.dumps({"op": "unsubscribe", "channel": channel}).decode())
                    await asyncio.sleep(0.1)  # 20 ops/s: at the default rate limit
            # Whatever it did, see how the relay answers: a close, or still open after 3 s.
            stop = time.time() + 3
            while time.time() < stop:
                await asyncio.wait_for(ws.recv(), max(0.01, stop - time.time()))
                tally.frames += 1
            tally.closes[f"{act}: open after 3 s"] += 1
        except ConnectionClosed as exc:
            tally.closed(exc, prefix=f"{act}: ")
        except TimeoutError:
            tally.closes[f"{act}: open after 3 s"] += 1
        finally:
            await ws.close()


# Raw sockets, for clients a WebSocket library would not let us write.


def _mask(opcode: int, payload: bytes) -> bytes:
    key = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


async def _raw_open(
    target: Target, tally: Tally
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, target.port), TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /v1/stream HTTP/1.1\r\nHost: {HOST}:{target.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        tally.errors[type(exc).__name__] += 1
        return None
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        tally.refused[head.split(b" ", 2)[1].decode()] += 1
        writer.close()
        return None
    tally.connects += 1
    return reader, writer


async def _raw_close_code(reader: asyncio.StreamReader, tally: Tally, within: float) -> None:
    """Read server frames until a close frame (its code counted) or ``within`` seconds."""
    stop = time.time() + within
    try:
        while time.time() < stop:
            first, second = await asyncio.wait_for(reader.readexactly(2), stop - time.time())
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await reader.readexactly(8))
            payload = await asyncio.wait_for(reader.readexactly(length), stop - time.time())
            if first & 0x0F == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                tally.closes[str(code)] += 1
                return
        tally.closes[f"open after {within:.0f} s"] += 1
    except TimeoutError:
        tally.closes[f"open after {within:.0f} s"] += 1
    except (asyncio.IncompleteReadError, ConnectionError):
        tally.closes["cut off, no close frame"] += 1


async def never_reads(target: Target, tally: Tally, hold: float = 15.0) -> None:
    """Subscribe to ``tweets`` from seq 0 and never read; after ``hold`` s see what is left."""
    rounds = 0
    while target.left() > 0 and rounds < MAX_ROUNDS:
        rounds += 1
        opened = await _raw_open(target, tally)
        if opened is None:
            await asyncio.sleep(0.5)
            continue
        reader, writer = opened
        op = {"op": "subscribe", "channel": "tweets", "since": {"epoch": "", "seq": 0}}
        writer.write(_mask(0x1, orjson.dumps(op)))
        await asyncio.sleep(max(0.0, min(hold, target.left())))
        await _raw_close_code(reader, tally, 2.0)
        writer.close()


async def ping_flood(target: Target, tally: Tally, seconds: float = 5.0, rate: int = 4000) -> None:
    """125-byte pings at ``rate`` a second for ``seconds``, never reading the pongs."""
    rounds = 0
    ping = _mask(0x9, b"p" * 125)
    while target.left() > 0 and rounds < MAX_ROUNDS:
        rounds += 1
        opened = await _raw_open(target, tally)
        if opened is None:
            await asyncio.sleep(0.5)
            continue
        reader, writer = opened
        stop = time.time() + min(seconds, target.left())
        sent = 0
        try:
            while time.time() < stop:
                writer.write(ping * (rate // 20))
                sent += rate // 20
                await asyncio.wait_for(writer.drain(), 1)
                await asyncio.sleep(0.05)
        except (ConnectionError, TimeoutError):
            pass
        tally.frames += sent
        await _raw_close_code(reader, tally, 2.0)
        writer.close()


# HTTP.


def _get(url: str) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        error.read()
        status = error.code
    except (OSError, TimeoutError):
        status = 0  # no answer in time, or the connection failed
    return status, (time.perf_counter() - started) * 1000


def _get_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            return orjson.loads(response.read())
    except (OSError, ValueError):
        return None


HEAVY_QUERIES = [
    "/v1/objects/tweets?sort=-seq&limit=100",
    "/v1/objects/tweets?sort=createdAt&offset=50000&limit=50",
    "/v1/objects/tweets?search=cats&limit=100",
    "/v1/objects/tweets?search=python%20asyncio&sort=-createdAt&limit=50",
    '/v1/objects/tweets?q={"lang":{"$in":["en","ja","es","fr"]}}&limit=100&count=1',
    '/v1/objects/tweets?q={"has_media":true,"lang":{"$in":["en"]}}&sort=-seq&offset=1000',
    "/v1/objects/tweets?sort=" + ",".join(["id"] * 200) + "&limit=10",
    "/v1/objects/tweets?count=1&limit=1",
    "/v1/info",
]


async def queries(target: Target, tally: Tally) -> None:
    """Heavy object API queries, one at a time, each answered or timed out."""
    rng = random.Random()
    rounds = 0
    while target.left() > 0 and rounds < MAX_ROUNDS:
        rounds += 1
        path = rng.choice(HEAVY_QUERIES).replace('"', "%22").replace("{", "%7B")
        path = path.replace("}", "%7D").replace("[", "%5B").replace("]", "%5D").replace("$", "%24")
        status, ms = await asyncio.to_thread(_get, target.http_url + path)
        tally.statuses[str(status)] += 1
        tally.latencies_ms.append(ms)
        tally.frames += 1


Kind = Callable[[Target, Tally], Awaitable[None]]

GROUPS: dict[str, list[tuple[str, Kind, int]]] = {
    # One process each, so that a busy group never delays the reference reader.
    "reference": [("reference", reference, 1)],
    "readers": [
        ("subscriber", reader, 6),
        ("churn", lambda t, y: reader(t, y, once=1.0), 4),
        ("resumer", resumer, 3),
        ("slow", lambda t, y: reader(t, y, delay=0.05), 3),
    ],
    "hostile": [
        ("never-read", never_reads, 3),
        ("ping-flood", ping_flood, 2),
        ("misbehaving", misbehaving, 3),
    ],
    "queries": [("query", queries, 3)],
}
"""Worker process -> the kinds of client it runs and how many of each (before --scale)."""


def run_worker(group: str, port: int, deadline: float, scale: float, results: Any) -> None:
    """A worker process: run one group's clients until ``deadline``, send back the tallies."""

    async def run() -> dict[str, dict[str, Any]]:
        target = Target(port, deadline)
        tallies: dict[str, Tally] = {}
        tasks: dict[asyncio.Task[None], str] = {}
        for name, kind, count in GROUPS[group]:
            tally = tallies[name] = Tally()
            for _ in range(max(1, round(count * scale))):
                tasks[asyncio.create_task(kind(target, tally))] = name
        # Every loop ends by the deadline; the margin covers the last waits' timeouts.
        done, pending = await asyncio.wait(tasks, timeout=max(0.0, target.left()) + 3 * TIMEOUT)
        for task in pending:
            task.cancel()
            tallies[tasks[task]].errors["still running at the end"] += 1
        for task in done:
            if (exc := task.exception()) is not None:
                tallies[tasks[task]].errors[f"crashed: {type(exc).__name__}: {exc}"[:120]] += 1
        return {name: tally.as_dict() for name, tally in tallies.items()}

    results.put((group, asyncio.run(run())))
