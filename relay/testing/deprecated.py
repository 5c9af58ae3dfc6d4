"""The harness and push source of earlier releases, kept so old tests still run.

``RunningRelay`` is a :class:`~relay.testing.RelayServer` that runs the settings it is
given exactly (started at once); ``PushSource`` hands its lines to the one push source,
:class:`~relay.testing.ControlledSource`. Both warn (``DeprecationWarning``) when made.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections.abc import AsyncIterator

from relay.config import Settings
from relay.sources import RawLine, Source
from relay.testing.server import Clock, RelayServer, Sleep
from relay.testing.source import UNIT, ControlledSource


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated: use {new}", DeprecationWarning, stacklevel=3)


class PushSource:
    """Deprecated: ``RelayServer(...).push(*lines)``, which feeds a relay the same way."""

    name = "push"

    def __init__(self) -> None:
        _deprecated("relay.testing.PushSource", "RelayServer(...).push(*lines)")
        self._source: ControlledSource | None = None
        self._ready = threading.Event()

    async def lines(self) -> AsyncIterator[RawLine]:
        self._source = ControlledSource(
            None, loop=asyncio.get_running_loop(), keep_open=True, clock=time.time
        )
        self._ready.set()
        async for line in self._source.lines():
            yield line

    def push(self, *lines: bytes) -> None:
        assert self._ready.wait(UNIT), "the relay never started reading its source"
        assert self._source is not None
        self._source.push(*lines)

    def end(self) -> None:
        assert self._source is not None
        self._source.end()


class RunningRelay(RelayServer):
    """Deprecated: :class:`~relay.testing.RelayServer`. A relay on these very settings,
    started at once, reading ``source`` or the source its settings name."""

    def __init__(
        self,
        settings: Settings,
        source: Source | None = None,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        role: str = "run",
        metrics_port: int | None = None,
    ) -> None:
        _deprecated("relay.testing.RunningRelay", "relay.testing.RelayServer")
        self._given = settings
        super().__init__(
            epoch=None,
            source=source,
            wall_clock=clock,
            sleep=sleep,
            role=role,
            metrics_port=metrics_port,
        )
        self.start()

    def settings(self) -> Settings:
        return self._given

    def _controlled_source(
        self, settings: Settings, loop: asyncio.AbstractEventLoop
    ) -> ControlledSource | None:
        return None  # without a source of the test's, the relay builds its settings' own

    def wait_stored(self, count: int, timeout: float = 4 * UNIT) -> None:
        """Deprecated: :meth:`RelayServer.wait_seq`."""
        self.wait_seq(count, timeout)
