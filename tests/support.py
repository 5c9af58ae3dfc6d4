"""Test support: the shipped helpers (:mod:`relay.testing`) and a relay subprocess.

Nothing here stands in for a part of the relay: the relay is the real one on a
real port with a real SQLite file (``relay.testing.RelayServer``, through the
``start_relay`` and ``pushed`` fixtures, or ``RelayProcess`` for the CLI).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import orjson

from relay.sources.replay import ReplaySource
from relay.sources.synth import sample_path, sample_rules
from relay.testing.source import UNIT
from relay.testing.support import (
    counted,
    receive_tweets,
    stream_line,
    subscribe,
    wait_for,
    ws_connect,
)

__all__ = [
    "ROOT",
    "UNIT",
    "RelayProcess",
    "bundled_sample",
    "counted",
    "free_port",
    "receive_tweets",
    "stream_line",
    "subscribe",
    "wait_for",
    "ws_connect",
]

ROOT = Path(__file__).resolve().parent.parent


class RelayProcess:
    """``python -m relay run ...`` (or another role) on a free port, its URLs read from its
    output. ``relay ingest`` prints a URL only with ``--metrics-port``."""

    def __init__(
        self,
        log: Path,
        *args: str,
        port: int = 0,
        command: str = "run",
        env: dict[str, str] | None = None,
    ) -> None:
        self.log = log.open("w")  # a file, not a pipe: a chatty relay must never block on it
        self.log_path = log
        port_args = ["--metrics-port" if command == "ingest" else "--port", str(port)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", command, *port_args, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the relay prints, or exits
        match = re.search(r"http://[\w.]+:(\d+)/", line)
        assert match, f"no URL in {line!r}; log: {log.read_text()}"
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/stream"

    def get(self, path: str) -> dict[str, object]:
        with urllib.request.urlopen(self.url + path, timeout=UNIT) as response:
            result: dict[str, object] = orjson.loads(response.read())
            return result

    def count(self) -> int:
        return int(self.get("/v1/objects/tweets?count=1")["count"])  # type: ignore[call-overload]

    def stop(self) -> int:
        """SIGTERM, and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(4 * UNIT)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.log.close()


def bundled_sample(speed: float = 1.0) -> ReplaySource:
    """The bundled sample as ``relay run`` replays it by default: looping, its rule
    channels declared (a source for ``start_relay(source=...)``)."""
    return ReplaySource(
        sample_path(), speed=speed, loop=True, clock=time.time, declared=sample_rules()
    )


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
