"""``RelayServer``: a real relay on 127.0.0.1 for a test, from a recording or pushed lines.

In-process by default (its own event loop in a thread: fast, steppable, and the test's
own blocking code never stalls it), or the real ``relay run`` command as a subprocess
with ``subprocess=True``. Every wait has a timeout and fails with what it waited for.

Determinism: a stepped or ``max`` replay gives the same seqs, ids and frames on every
run. The store's epoch is fixed (:data:`TEST_EPOCH` unless told otherwise), recorded
times are kept, a line without one gets its time from a :class:`ReplayClock`, and the
relay commits one line at a time (``batch_size=1``), so no tweet takes the receive time
of a neighbour that happened to share its batch. Frames are the same when the client
subscribes at the same point: before the first :meth:`RelayServer.step`, or after
:meth:`RelayServer.wait_replayed` (a client that subscribes while a ``max`` replay runs
gets the same tweets, but its ``subscribed`` frame depends on when it came).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from subprocess import PIPE, Popen, TimeoutExpired
from types import TracebackType
from typing import Any, TypeVar

from relay.app.relay import Relay
from relay.config import ENVIRONMENT, SPEED_MAX, Settings, parse_speed
from relay.ingest.finished import ReplaySummary
from relay.testing.http import Response, get_json
from relay.testing.source import UNIT, ControlledSource, ReplayClock

T = TypeVar("T")

TEST_EPOCH = "7e57000000000001"
"""The store epoch a :class:`RelayServer` gives a new SQLite store unless told otherwise."""

TEST_SEND_BUFFER = 256 * 1024 * 1024
"""Bytes a relay of :class:`RelayServer` queues for one client (production: 1 MiB)."""

_SUMMARY = re.compile(
    r"replay finished: (\d+) lines, (\d+) stored, (\d+) duplicates, (\d+) malformed"
)


class RelayServerError(AssertionError):
    """A relay that did not start, failed, or did not get somewhere in time.

    An ``AssertionError``, so a test runner reports it as a failed test, not a crash.
    """


class RelayServer:
    """A relay for one test. Use ``with RelayServer(...) as relay:`` (or ``async with``).

    - ``replay``: a recording (relay JSONL, twarc2 JSONL, a raw stream capture; ``.gz``
      read through gzip). ``None``: lines come only from :meth:`push`.
    - ``speed``: ``"max"`` (as fast as it stores), a number N (N times the recorded
      pace), or ``"step"`` (each recorded line waits for :meth:`step`).
    - ``store``: a SQLite file or a ``postgresql://`` URL; default a temporary SQLite file.
    - ``epoch``: the epoch a new SQLite store gets (``None``: a random one, as in
      production).
    - ``keep_open``: keep the source open after the recording so the test can push more;
      default: open when there is no recording.
    - ``subprocess``: run ``python -m relay run`` instead (no stepping, no push).
    - ``source="x-stream"`` or ``"x-poll"`` (with ``x_api_base_url`` a
      :class:`~relay.testing.FakeXApi`'s URL) reads the X API instead of a recording.
    - ``settings``: any :class:`relay.config.Settings` field (``secret``,
      ``public_channels``...).
    """

    def __init__(
        self,
        replay: str | Path | None = None,
        *,
        speed: float | str = "max",
        store: str | Path | None = None,
        epoch: str | None = TEST_EPOCH,
        keep_open: bool | None = None,
        clock: ReplayClock | None = None,
        subprocess: bool = False,
        timeout: float = 4 * UNIT,
        **settings: Any,
    ) -> None:
        self.replay = Path(replay) if replay is not None else None
        if self.replay is not None and not self.replay.is_file():
            raise RelayServerError(f"no recording at {self.replay}")
        self.stepped = speed == "step"
        self.speed = SPEED_MAX if self.stepped else parse_speed(speed)
        self.keep_open = keep_open if keep_open is not None else self.replay is None
        self.subprocess = subprocess
        if subprocess and (self.stepped or self.keep_open):
            raise RelayServerError(
                "a subprocess relay replays a recording that ends: no speed='step', no "
                "keep_open, no push"
            )
        self.clock = clock or ReplayClock()
        self.timeout = timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._store = store
        self._epoch = epoch
        self._extra = dict(settings)
        self.relay: Relay | None = None
        """The :class:`relay.app.relay.Relay` itself (in-process only)."""
        self.source: ControlledSource | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._proc: Popen[str] | None = None
        self._log_path: Path | None = None
        self.port = 0
        self.url = ""
        """``http://127.0.0.1:PORT``: the object API, ``/v1/info``, ``/metrics``."""
        self.ws_url = ""
        """``ws://127.0.0.1:PORT/v1/stream``."""

    # -- life

    def settings(self) -> Settings:
        """The settings the relay runs with."""
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "batch_size": 1,
            # A test that subscribes, then waits for the replay before reading, is not a
            # slow consumer to close with 4008: the whole recording fits in its buffer.
            "send_buffer": TEST_SEND_BUFFER,
        }
        values.update(self._extra)
        store = str(self._store) if self._store is not None else ""
        if store.startswith(("postgres://", "postgresql://")):
            values["database_url"] = store
        else:
            values["db"] = store or str(Path(self._tmpdir()) / "relay.db")
            values["database_url"] = ""
        return Settings.from_mapping(values)

    def _tmpdir(self) -> str:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="relay-test-")
        return self._tmp.name

    def start(self) -> RelayServer:
        settings = self.settings()
        if self._epoch is not None and not settings.database_url:
            _fix_epoch(Path(settings.db), self._epoch)
        try:
            if self.subprocess:
                self._start_process(settings)
            else:
                self._start_in_process(settings)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/stream"
        return self

    def _start_in_process(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="relay-server", daemon=True
        )
        self._thread.start()
        if settings.source == "replay":
            self.source = ControlledSource(
                self.replay,
                loop=self.loop,
                speed=self.speed,
                stepped=self.stepped,
                keep_open=self.keep_open,
                clock=self.clock,
            )
        # Another source (x-stream against a FakeXApi, say) is built from the settings.
        self.relay = Relay(settings, source=self.source)
        self.call(self.relay.start())
        self.port = self.relay.port

    def _start_process(self, settings: Settings) -> None:
        import relay

        # Rich wraps log lines at 80 columns when stderr is a file: wide enough for one line.
        env = {"COLUMNS": "200", **os.environ, **_environment(settings)}
        # The relay this process imported, not whatever else is on the path.
        package_root = str(Path(relay.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
        )
        args = [sys.executable, "-m", "relay", "run", "--port", "0", "--no-loop"]
        if self.replay is not None:
            args += ["--replay", str(self.replay.resolve())]
        args += ["--speed", "max" if self.speed == SPEED_MAX else str(self.speed)]
        self._log_path = Path(self._tmpdir()) / "relay.log"
        with self._log_path.open("w") as log:  # a file: a chatty relay never blocks on it
            self._proc = Popen(
                args,
                cwd=self._tmpdir(),
                env=env,
                stdout=PIPE,
                stderr=log,
                text=True,
            )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # the first URL, or nothing once it exits
        match = re.search(r"http://[\w.]+:(\d+)/", line)
        if not match:
            raise RelayServerError(f"the relay did not start: {self.log()}")
        self.port = int(match.group(1))

    def stop(self) -> int | None:
        """Stop the relay (clients drained and closed with 1001); the exit code of a
        subprocess. Safe to call twice."""
        code = None
        if self.relay is not None and self.loop is not None and self.loop.is_running():
            self.call(self.relay.stop())
        if self.loop is not None:
            if self.loop.is_running():
                self.loop.call_soon_threadsafe(self.loop.stop)
            if self._thread is not None:
                self._thread.join(self.timeout)
            if not self.loop.is_running():
                self.loop.close()
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
            try:
                code = self._proc.wait(self.timeout)
            except TimeoutExpired:
                self._proc.kill()
                code = self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return code

    def __enter__(self) -> RelayServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> RelayServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # -- where it is

    @property
    def epoch(self) -> str:
        return str(self.info()["epoch"])

    @property
    def head(self) -> int:
        """The last seq published to clients."""
        if self.relay is not None and self.relay.hub is not None:
            return self.relay.hub.head
        return int(self.info()["seq"])

    def info(self) -> dict[str, Any]:
        status, body = self.get("/v1/info")
        if status != 200:
            raise RelayServerError(f"/v1/info answered {status}: {body}")
        return dict(body)

    def get(self, path: str, token: str | None = None) -> Response:
        """GET a path of the relay (``/v1/info``, ``/v1/objects/tweets?...``, ``/readyz``):
        a :class:`Response` with the status and the decoded JSON body, an error status
        included (never raised); ``token`` goes as ``Authorization: Bearer``.
        ``status, body = relay.get(path)`` unpacks it."""
        return get_json(self.url + path, token=token, timeout=self.timeout)

    def log(self) -> str:
        """What a subprocess relay logged so far."""
        return self._log_path.read_text() if self._log_path is not None else ""

    # -- driving it

    def push(self, payload: bytes | str | Mapping[str, Any]) -> None:
        """Inject one stream line (an X API payload: bytes, text, or a mapping as JSON)."""
        self._controlled().push(payload)

    def step(self, count: int = 1) -> None:
        """Release the next ``count`` recorded lines (``speed="step"``)."""
        self._controlled().step(count)

    def end(self) -> None:
        """End a source kept open; :meth:`wait_replayed` then returns."""
        self._controlled().end()

    def _controlled(self) -> ControlledSource:
        if self.source is None:
            raise RelayServerError("push, step and end need an in-process RelayServer")
        return self.source

    def wait_replayed(self, timeout: float | None = None) -> ReplaySummary:
        """Wait until the source ended and every tweet it sent is stored and published;
        what ``relay run`` logs then (``replay finished: ...``)."""
        timeout = timeout or self.timeout
        if self._proc is not None:
            return self._wait_logged_summary(timeout)
        relay = self._relay()
        self._wait(relay.finished, timeout, "the replay to finish")
        assert relay.summary is not None
        return relay.summary

    def wait_seq(self, seq: int, timeout: float | None = None) -> None:
        """Wait until tweets up to ``seq`` are stored and published."""
        timeout = timeout or self.timeout
        if self._proc is None:
            relay = self._relay()

            async def reached() -> None:
                while relay.hub is None or relay.hub.head < seq:
                    if relay.failed.is_set():
                        return
                    await asyncio.sleep(0.005)

            self._run(reached(), timeout, f"seq {seq} (head {self.head})")
            self._check()
            return
        deadline = time.monotonic() + timeout
        while self.head < seq:
            self._check_process()
            if time.monotonic() > deadline:
                raise RelayServerError(f"timed out waiting for seq {seq} (head {self.head})")
            time.sleep(0.01)

    async def wait_replayed_async(self, timeout: float | None = None) -> ReplaySummary:
        return await asyncio.to_thread(self.wait_replayed, timeout)

    async def wait_seq_async(self, seq: int, timeout: float | None = None) -> None:
        await asyncio.to_thread(self.wait_seq, seq, timeout)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the relay's event loop (in-process) and return its result."""
        if self.loop is None:
            coro.close()
            raise RelayServerError("the relay is not running in this process")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout or self.timeout)

    # -- internals

    def _relay(self) -> Relay:
        if self.relay is None:
            raise RelayServerError("the relay is not started")
        return self.relay

    def _wait(self, event: asyncio.Event, timeout: float, what: str) -> None:
        relay = self._relay()

        async def either() -> None:
            waits = [
                asyncio.ensure_future(event.wait()),
                asyncio.ensure_future(relay.failed.wait()),
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

        self._run(either(), timeout, what)
        self._check()

    def _run(self, coro: Coroutine[Any, Any, None], timeout: float, what: str) -> None:
        try:
            self.call(asyncio.wait_for(coro, timeout), timeout + UNIT)
        except TimeoutError:
            raise RelayServerError(f"timed out after {timeout:g} s waiting for {what}") from None

    def _check(self) -> None:
        relay = self._relay()
        if relay.failed.is_set():
            raise RelayServerError(f"the relay failed: {relay.error}")

    def _check_process(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RelayServerError(
                f"the relay exited with {self._proc.returncode}: {self.log()[-2000:]}"
            )

    def _wait_logged_summary(self, timeout: float) -> ReplaySummary:
        deadline = time.monotonic() + timeout
        while True:
            match = _SUMMARY.search(self.log())
            if match:
                lines, stored, duplicates, malformed = (int(g) for g in match.groups())
                return ReplaySummary(lines, stored, duplicates, malformed)
            self._check_process()
            if time.monotonic() > deadline:
                raise RelayServerError(f"timed out after {timeout:g} s waiting for the replay")
            time.sleep(0.01)


def _fix_epoch(path: Path, epoch: str) -> None:
    """Create the SQLite store at ``path`` with ``epoch``; an existing store keeps its own."""
    if path.exists():
        return
    from relay.store.sqlite.schema import migrate

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        migrate(conn)
        conn.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", [epoch])
    finally:
        conn.close()


def _environment(settings: Settings) -> dict[str, str]:
    """The settings as the ``RELAY_...`` variables a subprocess reads."""
    defaults = Settings()
    env: dict[str, str] = {}
    for key, names in ENVIRONMENT.items():
        value = getattr(settings, key)
        if value == getattr(defaults, key) and key not in ("db", "database_url"):
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | tuple):
            text = ",".join(str(v) for v in value)
        elif value is None:
            continue
        else:
            text = str(value)
        env[names[-1]] = text
    return env
