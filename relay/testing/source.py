"""Sources a test controls: lines pushed by the test, a recording released step by step.

Both are real :class:`relay.sources.Source` objects: the relay reads them through the same
ingest path as a file or the X API. Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from relay.sources import RawLine
from relay.sources.replay import ReplaySource

UNIT = 5.0
"""Every default timeout of :mod:`relay.testing` is a multiple of this (seconds)."""

FIXED_START = 1_767_225_600.0
"""2026-01-01T00:00:00Z: where a :class:`ReplayClock` starts unless told otherwise."""


class ReplayClock:
    """The test's clock: a fixed start that moves ``tick`` seconds at each reading.

    A recorded line without a receive time gets its time from here, never from the
    wall clock, so the same recording gives the same ``received_at`` on every run.
    """

    def __init__(self, start: float = FIXED_START, tick: float = 0.001) -> None:
        self.start = start
        self.tick = tick
        self.readings = 0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            now = self.start + self.readings * self.tick
            self.readings += 1
            return now


def as_line(payload: bytes | str | Mapping[str, Any]) -> bytes:
    """A payload as one stream line: bytes as they are, text encoded, a mapping as JSON."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return orjson.dumps(payload)


class ControlledSource:
    """A recording (optional) and lines pushed by the test, as one source.

    ``speed`` 0 replays as fast as the relay stores; N paces at N times the recorded
    pace. ``stepped`` holds each recorded line until :meth:`step` releases it. Pushed
    lines go out as soon as the source is reading, between recorded lines (stepped or not). Without
    ``keep_open`` the source ends after the recording (and any line pushed before), which
    is what makes the relay log ``replay finished``; with it, the source waits for
    pushes until the relay stops.
    """

    name = "replay"

    def __init__(
        self,
        replay: str | Path | None,
        *,
        loop: asyncio.AbstractEventLoop,
        speed: float = 0.0,
        stepped: bool = False,
        keep_open: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.replay = Path(replay) if replay is not None else None
        self.speed = speed
        self.stepped = stepped
        self.keep_open = keep_open
        self.clock = clock or ReplayClock()
        self._loop = loop
        self._pushed: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._budget = 0
        self._wakeup = asyncio.Event()
        """Set when a line is pushed or released."""
        self.recorded_lines = 0
        """Recorded lines handed to ingest so far."""
        self.ended = threading.Event()

    # Called from any thread.
    def push(self, *payloads: bytes | str | Mapping[str, Any]) -> None:
        """Send lines: those of one call arrive together (one batch, when they fit)."""
        if self.ended.is_set():
            raise RuntimeError(
                "the source has ended (the recording was fully read): start the server "
                "with keep_open=True to push lines after it"
            )
        lines = [as_line(payload) for payload in payloads]
        self._loop.call_soon_threadsafe(self._put, *lines)

    def step(self, count: int = 1) -> None:
        if not self.stepped:
            raise RuntimeError("step() needs a stepped server: RelayServer(..., speed='step')")
        if count < 1:
            raise ValueError("step() releases at least one line")
        self._loop.call_soon_threadsafe(self._release, count)

    def end(self) -> None:
        """End a source kept open: what was pushed before still goes through."""
        self._loop.call_soon_threadsafe(self._put, None)

    # On the relay's loop.
    def _put(self, *lines: bytes | None) -> None:
        for data in lines:
            self._pushed.put_nowait(data)
        self._wakeup.set()

    def _release(self, count: int) -> None:
        self._budget += count
        self._wakeup.set()

    def _pending(self) -> list[bytes | None]:
        out: list[bytes | None] = []
        while not self._pushed.empty():
            out.append(self._pushed.get_nowait())
        return out

    async def batches(self) -> AsyncIterator[list[RawLine]]:
        """The lines in lists: a replay at full speed in the lists it reads, with lines
        pushed meanwhile between two of them; else one line a list, as :meth:`lines`."""
        if self.replay is None or self.stepped or self.speed:
            async for line in self.lines():
                yield [line]
            return
        try:
            replay = ReplaySource(self.replay, speed=0, loop=False, clock=self.clock)
            async for group in replay.batches():
                pushed: list[RawLine] = []
                ended = False
                for data in self._pending():
                    if data is None:  # ended: what was pushed before the end still goes
                        ended = True
                        break
                    pushed.append(RawLine(data, self.clock()))
                if pushed:
                    yield pushed
                if ended:
                    return
                self.recorded_lines += len(group)
                yield group
            async for line in self._after_replay():
                yield [line]
        finally:
            self.ended.set()

    async def _after_replay(self) -> AsyncIterator[RawLine]:
        if not self.keep_open:
            for data in self._pending():
                if data is None:
                    return
                yield RawLine(data, self.clock())
            return
        while (data := await self._pushed.get()) is not None:
            yield RawLine(data, self.clock())

    async def lines(self) -> AsyncIterator[RawLine]:
        try:
            if self.replay is not None:
                replay = ReplaySource(self.replay, speed=self.speed, loop=False, clock=self.clock)
                async for line in replay.lines():
                    while True:  # pushed lines go out at once, a stepped line when released
                        for data in self._pending():
                            if data is None:
                                return
                            yield RawLine(data, self.clock())
                        if not self.stepped or self._budget:
                            break
                        self._wakeup.clear()
                        await self._wakeup.wait()
                    if self.stepped:
                        self._budget -= 1
                    self.recorded_lines += 1
                    yield line
            async for line in self._after_replay():
                yield line
        finally:
            self.ended.set()
