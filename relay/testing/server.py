"""``RelayServer``: a real relay on 127.0.0.1 for a test, from a recording or pushed lines.

In-process by default (its own event loop in a thread: fast, steppable, and the test's
own blocking code never stalls it), or the real ``relay run`` command as a subprocess
with ``subprocess=True``. Every wait has a timeout and fails with what it waited for.

Determinism: a stepped or ``max`` replay gives the same seqs, ids and frames on every
run. The store's epoch is fixed (:data:`TEST_EPOCH` unless told otherwise), recorded
times are kept, and a line without one gets its time from a :class:`ReplayClock`. The
relay commits in batches (a ``max`` replay as fast as the store takes them), and each
tweet keeps its own line's receive time, so which lines happened to share a batch changes
nothing that is stored or sent. Frames are the same when the client
subscribes at the same point: before the first :meth:`RelayServer.step`, or after
:meth:`RelayServer.wait_replayed` (a client that subscribes while a ``max`` replay runs
gets the same tweets, but its ``subscribed`` frame depends on when it came).
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson

from relay.app.launch import BorrowedGc
from relay.app.relay import ROLES, Relay
from relay.config import Settings
from relay.core.values import SPEED_MAX, parse_speed
from relay.ingest.finished import ReplaySummary
from relay.sources import Source
from relay.sources.archive import is_archive_url
from relay.testing.errors import RelayServerError as RelayServerError  # its home before
from relay.testing.http import Response, get_json
from relay.testing.process import CliRelay
from relay.testing.source import UNIT, ControlledSource, ReplayClock

T = TypeVar("T")

TEST_EPOCH = "7e57000000000001"
"""The store epoch a :class:`RelayServer` gives a new SQLite store unless told otherwise."""

TEST_SEND_BUFFER = 256 * 1024 * 1024
"""Bytes a relay of :class:`RelayServer` queues for one client (production: 1 MiB)."""

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RelayServer:
    """A relay for one test. Use ``with RelayServer(...) as relay:`` (or ``async with``).

    - ``replay``: a recording (relay JSONL, twarc2 JSONL, a raw stream capture; ``.gz``
      read through gzip), or an archive's URL (``s3://bucket/prefix`` with the ``AWS_*``
      variables in the environment, ``file:///path``; ``since``/``until`` as
      ``replay_since``/``replay_until`` settings): the relay replays it as
      ``relay run --replay URL`` does. ``None``: lines come only from :meth:`push`.
    - ``speed``: ``"max"`` (as fast as it stores), a number N (N times the recorded
      pace), or ``"step"`` (each recorded line waits for :meth:`step`).
    - ``store``: a SQLite file or a ``postgresql://`` URL; default a temporary SQLite file.
    - ``epoch``: the epoch a new SQLite store gets (``None``: a random one, as in
      production).
    - ``keep_open``: keep the source open after the recording so the test can push more;
      default: open when there is no recording.
    - ``clock``: gives a time to recorded and pushed lines that have none.
    - ``source``: a :class:`relay.sources.Source` of the test's own, read instead of a
      recording and pushed lines; or ``"x-stream"``/``"x-poll"`` (with ``x_api_base_url``
      a :class:`~relay.testing.FakeXApi`'s URL): the relay builds it from its settings.
    - ``role``: ``"run"`` (source and clients), ``"ingest"`` (source only; a
      ``metrics_port`` for ``/metrics`` and ``/readyz``) or ``"serve"`` (clients only),
      as the CLI commands of those names.
    - ``wall_clock``, ``sleep``: the relay's own time and waits (token expiry, rate
      limits, retention, the X sources' pacing); default the real ones.
    - ``subprocess``: run ``python -m relay run`` instead (no stepping, no push).
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
        clock: Clock | None = None,
        source: str | Source | None = None,
        role: str = "run",
        metrics_port: int | None = None,
        wall_clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        subprocess: bool = False,
        timeout: float = 4 * UNIT,
        **settings: Any,
    ) -> None:
        self.archive = str(replay) if replay is not None and is_archive_url(str(replay)) else ""
        """The archive replayed (``s3://bucket/prefix``, ``file:///path``), when one is."""
        if self.archive:
            if speed == "step" or subprocess or source is not None:
                raise RelayServerError("an archive replays in process, at a pace, alone")
            settings.setdefault("replay", self.archive)
            replay = None
        self.replay = Path(replay) if replay is not None else None
        if self.replay is not None and not self.replay.is_file():
            raise RelayServerError(f"no recording at {self.replay}")
        self.stepped = speed == "step"
        self.speed = SPEED_MAX if self.stepped else parse_speed(speed)
        if self.archive:
            settings.setdefault("speed", "max" if self.speed == SPEED_MAX else self.speed)
        self.keep_open = (
            keep_open if keep_open is not None else self.replay is None and not self.archive
        )
        if isinstance(source, str):
            settings["source"] = source
            source = None
        if role not in ROLES:
            raise RelayServerError(f"role is one of {', '.join(ROLES)}, not {role!r}")
        self.subprocess = subprocess
        if subprocess and (self.stepped or self.keep_open or source is not None):
            raise RelayServerError(
                "a subprocess relay replays a recording that ends: no speed='step', no "
                "keep_open, no push, no source object"
            )
        if source is not None and self.replay is not None:
            raise RelayServerError("a recording or a source object, not both")
        self.clock = clock or ReplayClock()
        self.timeout = timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._store = store
        self._epoch = epoch
        self._extra = dict(settings)
        self._own_source = source
        self._relay_args: dict[str, Any] = {
            "role": role,
            "metrics_port": metrics_port,
            "clock": wall_clock,
            "sleep": sleep,
        }
        self.relay: Relay | None = None
        """The :class:`relay.app.relay.Relay` itself (in-process only)."""
        self.source: ControlledSource | None = None
        """The source :meth:`push`, :meth:`step` and :meth:`end` drive, when the relay
        reads a recording or pushed lines (not a source of the test's own)."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._process: CliRelay | None = None
        self._gc_borrowed = False
        self.port = 0
        self.url = ""
        """``http://127.0.0.1:PORT``: the object API, ``/v1/info``, ``/metrics``."""
        self.ws_url = ""
        """``ws://127.0.0.1:PORT/v1/stream``."""
        self.events_url = ""
        """``http://127.0.0.1:PORT/v1/events``: server-sent events (:class:`SseClient`)."""

    # -- life

    def settings(self) -> Settings:
        """The settings the relay runs with."""
        values: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
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
                workdir = Path(self._tmpdir())
                self._process = CliRelay(settings, self.replay, self.speed, workdir)
                self.port = self._process.port
            else:
                self._start_in_process(settings)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/stream"
        self.events_url = f"{self.url}/v1/events"
        return self

    def _start_in_process(self, settings: Settings) -> None:
        # The relay's collection thresholds while it runs (as ``relay run`` sets them):
        # at the default ones a full-speed replay spends a fifth of its time collecting.
        BorrowedGc.borrow()
        self._gc_borrowed = True
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="relay-server", daemon=True
        )
        self._thread.start()
        self.source = self._controlled_source(settings, self.loop)
        source = self._own_source or self.source
        self.relay = Relay(settings, source=source, **self._relay_args)
        self.call(self.relay.start())
        self.port = self.relay.port

    def _controlled_source(
        self, settings: Settings, loop: asyncio.AbstractEventLoop
    ) -> ControlledSource | None:
        """The recording and pushed lines as a source; None when the relay reads the
        test's own source, builds one from its settings (x-stream...), or reads none."""
        if self._own_source is not None or settings.source != "replay" or self.archive:
            return None  # an archive: the relay builds its source from the settings
        if "ingest" not in ROLES[self._relay_args["role"]]:
            return None  # a serving process reads no source
        return ControlledSource(
            self.replay,
            loop=loop,
            speed=self.speed,
            stepped=self.stepped,
            keep_open=self.keep_open,
            clock=self.clock,
        )

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
        if self._process is not None:
            code = self._process.stop(self.timeout)
        if self._gc_borrowed:
            BorrowedGc.give_back()
            self._gc_borrowed = False
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

    def all_tweets(self, token: str | None = None, **params: str) -> list[dict[str, Any]]:
        """Every stored tweet the object API gives (``params`` as its query parameters:
        ``q``, ``rule``, ``search``), in seq order, page after page."""
        out: list[dict[str, Any]] = []
        query = "&" + urlencode(params) if params else ""
        while True:
            path = f"/v1/objects/tweets?sort=seq&limit=1000&offset={len(out)}{query}"
            status, body = self.get(path, token=token)
            if status != 200:
                raise RelayServerError(f"{path} answered {status}: {body}")
            out.extend(body["results"])
            if len(body["results"]) < 1000:
                return out

    def stored_ids(self) -> list[str]:
        """The id of every stored tweet in seq order, read from the store itself (whatever
        the access policy; in-process only)."""
        from relay.core.query import parse_tweet_query

        store = self._relay().store
        if store is None:
            raise RelayServerError("the relay has no store open")
        ids: list[str] = []
        while True:
            params = {"sort": ["seq"], "limit": ["1000"], "offset": [str(len(ids))]}
            objects, _ = self.call(store.query(parse_tweet_query(params)))
            ids.extend(orjson.loads(o)["id"] for o in objects)
            if len(objects) < 1000:
                return ids

    def log(self) -> str:
        """What a subprocess relay logged so far."""
        return self._process.log() if self._process is not None else ""

    # -- driving it

    def push(self, *payloads: bytes | str | Mapping[str, Any]) -> None:
        """Inject stream lines (X API payloads: bytes, text, or mappings as JSON); the
        lines of one call arrive together, as one batch when they fit in one."""
        self._controlled().push(*payloads)

    def step(self, count: int = 1) -> None:
        """Release the next ``count`` recorded lines (``speed="step"``)."""
        self._controlled().step(count)

    def end(self) -> None:
        """End a source kept open; :meth:`wait_replayed` then returns."""
        self._controlled().end()

    def _controlled(self) -> ControlledSource:
        if self.source is None:
            raise RelayServerError(
                "push, step and end need an in-process RelayServer reading a recording or "
                "pushed lines"
            )
        return self.source

    def wait_replayed(self, timeout: float | None = None) -> ReplaySummary:
        """Wait until the source ended and every tweet it sent is stored and published;
        what ``relay run`` logs then (``replay finished: ...``)."""
        timeout = timeout or self.timeout
        if self._process is not None:
            return self._process.wait_summary(timeout)
        relay = self._relay()
        self._wait(relay.finished, timeout, "the replay to finish")
        assert relay.summary is not None
        return relay.summary

    def wait_seq(self, seq: int, timeout: float | None = None) -> None:
        """Wait until tweets up to ``seq`` are stored and published."""
        timeout = timeout or self.timeout
        if self._process is None:
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
            self._process.check()
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
