"""The PaaS shape end to end: `relay migrate`, `relay ingest` and `relay serve` processes on a
real PostgreSQL and a real Redis, killed and restarted for real.

Each test starts real CLI subprocesses; clients are real WebSocket clients that resume
(on the same or another serving process) from the last seq they got, as the protocol
says. Every assertion is on what clients received: the same seqs, each once, in order,
with the tweet ids the store holds.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from relay.sources.synth import write_stream
from tests.support import ROOT, UNIT, RelayProcess, wait_for

SCALE_ENV = {
    "RELAY_LEASE_TTL": "2",
    "RELAY_HEARTBEAT_INTERVAL": "0.5",
    "RELAY_BUS_CHECK_INTERVAL": "1",
}


class Reader:
    """A client that reads ``tweets`` from a list of serving processes, resuming from its
    last seq on the next one whenever its connection ends, until it has ``until``."""

    def __init__(self, urls: Callable[[], list[str]], until: int) -> None:
        self.urls = urls
        self.until = until
        self.frames: list[tuple[int, str]] = []
        self.connections = 0
        self.epoch = ""
        self.done = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        attempt = 0
        while not self._stop and (not self.frames or self.frames[-1][0] < self.until):
            candidates = self.urls()
            url = candidates[attempt % len(candidates)]
            attempt += 1
            try:
                self._read(url)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                time.sleep(0.05)  # a retry pace, not a synchronisation
        self.done.set()

    def _read(self, url: str) -> None:
        with connect(url, open_timeout=UNIT) as ws:
            self.connections += 1
            op: dict[str, Any] = {"op": "subscribe", "channel": "tweets"}
            if self.epoch:
                last = self.frames[-1][0] if self.frames else 0
                op["since"] = {"epoch": self.epoch, "seq": last}
            ws.send(orjson.dumps(op).decode())
            while not self._stop:
                frame = orjson.loads(ws.recv(timeout=4 * UNIT))
                if frame["type"] == "subscribed":
                    if not self.epoch:
                        self.epoch = frame["epoch"]
                        if frame["seq"] > 0:
                            return  # started late: connect again, resuming from seq 0
                elif frame["type"] == "tweet":
                    self.frames.append((frame["seq"], frame["tweet"]["id"]))
                    if frame["seq"] >= self.until:
                        return

    def wait(self, timeout: float) -> list[tuple[int, str]]:
        assert self.done.wait(timeout), (
            f"got {len(self.frames)} of {self.until} tweets "
            f"(last {self.frames[-1] if self.frames else None})"
        )
        return self.frames

    def stop(self) -> None:
        self._stop = True


class EventsReader(Reader):
    """The same reader over server-sent events, with no SSE library: a plain HTTP GET of
    ``/v1/events``, resumed on the next process with ``Last-Event-ID`` as EventSource does."""

    def _read(self, url: str) -> None:
        base = url.replace("ws://", "").split("/", 1)[0]
        host, port = base.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=4 * UNIT)
        headers = {"Accept": "text/event-stream"}
        if self.epoch:
            last = self.frames[-1][0] if self.frames else 0
            headers["Last-Event-ID"] = f"{self.epoch}:{last}"
        try:
            connection.request("GET", "/v1/events?channel=tweets", headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                raise OSError(f"/v1/events answered {response.status}")
            self.connections += 1
            fields: dict[str, str] = {}
            while not self._stop:
                line = response.readline()
                if not line:
                    raise OSError("the stream ended")
                text = line.decode().rstrip("\r\n")
                if text:
                    name, _, value = text.partition(":")
                    fields[name] = value.removeprefix(" ")
                    continue
                event, fields = fields, {}
                if event.get("event") == "subscribed" and not self.epoch:
                    subscribed = orjson.loads(event["data"])
                    self.epoch = subscribed["epoch"]
                    if subscribed["seq"] > 0:
                        return  # started late: connect again, resuming from seq 0
                elif event.get("event") == "tweet":
                    frame = orjson.loads(event["data"])
                    assert event["id"] == f"{self.epoch}:{frame['seq']}"
                    self.frames.append((frame["seq"], frame["tweet"]["id"]))
                    if frame["seq"] >= self.until:
                        return
        finally:
            connection.close()


READERS = {"websocket": Reader, "sse": EventsReader}


def relay_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=6 * UNIT,
    )


def assert_whole(frames: list[tuple[int, str]], count: int) -> None:
    """Seqs 1..count, each once, in order, and every tweet id once."""
    seqs = [seq for seq, _ in frames]
    assert seqs == list(range(1, count + 1)), f"first bad index {_first_bad(seqs)}"
    ids = [tweet_id for _, tweet_id in frames]
    assert len(set(ids)) == len(ids)


def _first_bad(seqs: list[int]) -> int:
    for index, seq in enumerate(seqs):
        if seq != index + 1:
            return index
    return len(seqs)


@pytest.fixture
def deploy(tmp_path: Path, pg_url: str, redis_server: Any) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path, pg_url, redis_server.url)
    yield deployment
    deployment.close()


class Deployment:
    """The Procfile's processes, started by the test."""

    def __init__(self, root: Path, database_url: str, redis_url: str) -> None:
        self.root = root
        self.env = {**SCALE_ENV, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
        self.started: list[RelayProcess] = []
        self.stream = root / "stream.jsonl"
        self._names = 0

    def write_stream(self, count: int) -> None:
        write_stream(self.stream, count, 11)

    def migrate(self) -> None:
        done = relay_cli("migrate", env=self.env)
        assert done.returncode == 0, done.stderr

    def ingest(self, speed: str = "50") -> RelayProcess:
        args = ("--replay", str(self.stream), "--speed", speed, "--no-loop")
        return self._start("ingest", *args)

    def serve(self) -> RelayProcess:
        return self._start("serve")

    def _start(self, command: str, *args: str) -> RelayProcess:
        self._names += 1
        log = self.root / f"{command}-{self._names}.log"
        process = RelayProcess(log, *args, command=command, env=self.env)
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            process.close()


def log_of(process: RelayProcess) -> str:
    return process.log_path.read_text()


def test_two_serving_processes_give_clients_the_same_sequence(deploy: Deployment) -> None:
    deploy.write_stream(1500)
    deploy.migrate()
    deploy.migrate()  # idempotent: the release phase runs on every deploy
    web = [deploy.serve(), deploy.serve()]
    for process in web:
        wait_for(lambda p=process: ready(p), 4 * UNIT, "serve ready")
    readers = [Reader(lambda p=p: [p.ws_url], 1500) for p in web]
    worker = deploy.ingest()
    results = [reader.wait(12 * UNIT) for reader in readers]
    for frames in results:
        assert_whole(frames, 1500)
    assert results[0] == results[1]
    assert all(reader.connections == 1 for reader in readers)
    assert worker.stop() == 0
    for process in web:
        assert process.stop() == 0
        assert "Traceback" not in log_of(process)


@pytest.mark.parametrize("transport", READERS)
def test_a_killed_serving_process_costs_its_clients_nothing(
    deploy: Deployment, transport: str
) -> None:
    deploy.write_stream(1500)
    deploy.migrate()
    web = [deploy.serve(), deploy.serve()]
    for process in web:
        wait_for(lambda p=process: ready(p), 4 * UNIT, "serve ready")
    alive = list(web)
    reader = READERS[transport](lambda: [p.ws_url for p in alive], 1500)
    deploy.ingest(speed="30")
    wait_for(lambda: len(reader.frames) > 200, 8 * UNIT, "the first tweets")
    alive.remove(web[0])
    web[0].proc.send_signal(signal.SIGKILL)
    frames = reader.wait(16 * UNIT)
    assert_whole(frames, 1500)
    assert reader.connections >= 2


def test_the_standby_ingester_takes_over_from_a_killed_one(deploy: Deployment) -> None:
    deploy.write_stream(1500)
    deploy.migrate()
    web = deploy.serve()
    wait_for(lambda: ready(web), 4 * UNIT, "serve ready")
    reader = Reader(lambda: [web.ws_url], 1500)
    active = deploy.ingest(speed="30")
    wait_for(lambda: len(reader.frames) > 100, 8 * UNIT, "the first tweets")
    standby = deploy.ingest(speed="30")
    wait_for(lambda: "standing by" in log_of(standby), 4 * UNIT, "the standby line")
    active.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: "became the active writer" in log_of(standby), 8 * UNIT, "the takeover")
    assert time.monotonic() - killed_at < 30
    frames = reader.wait(16 * UNIT)
    assert_whole(frames, 1500)  # the replay starts again: known ids are duplicates


def test_a_frozen_ingester_is_fenced_and_the_standby_goes_on(deploy: Deployment) -> None:
    deploy.write_stream(1500)
    deploy.migrate()
    web = deploy.serve()
    wait_for(lambda: ready(web), 4 * UNIT, "serve ready")
    reader = Reader(lambda: [web.ws_url], 1500)
    active = deploy.ingest(speed="30")
    wait_for(lambda: len(reader.frames) > 100, 8 * UNIT, "the first tweets")
    standby = deploy.ingest(speed="30")
    wait_for(lambda: "standing by" in log_of(standby), 4 * UNIT, "the standby line")
    active.proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: "became the active writer" in log_of(standby), 8 * UNIT, "the takeover")
    active.proc.send_signal(signal.SIGCONT)
    assert active.proc.wait(4 * UNIT) == 1  # it can no longer commit: one line, exit 1
    assert "writer lease" in log_of(active)
    frames = reader.wait(16 * UNIT)
    assert_whole(frames, 1500)


def test_a_redis_restart_loses_clients_nothing(deploy: Deployment, redis_server: Any) -> None:
    deploy.write_stream(1500)
    deploy.migrate()
    web = deploy.serve()
    wait_for(lambda: ready(web), 4 * UNIT, "serve ready")
    reader = Reader(lambda: [web.ws_url], 1500)
    deploy.ingest(speed="30")
    wait_for(lambda: len(reader.frames) > 200, 8 * UNIT, "the first tweets")
    redis_server.restart()  # no persistence: the stream is gone
    frames = reader.wait(16 * UNIT)
    assert_whole(frames, 1500)
    assert reader.connections == 1


def test_a_postgresql_restart_loses_and_doubles_nothing(deploy: Deployment, pg_server: Any) -> None:
    deploy.write_stream(1500)
    deploy.migrate()
    web = deploy.serve()
    wait_for(lambda: ready(web), 4 * UNIT, "serve ready")
    reader = Reader(lambda: [web.ws_url], 1500)
    worker = deploy.ingest(speed="30")
    wait_for(lambda: len(reader.frames) > 200, 8 * UNIT, "the first tweets")
    pg_server.restart()
    frames = reader.wait(20 * UNIT)
    assert_whole(frames, 1500)
    assert worker.proc.poll() is None  # it waited and went on
    count = web.get("/v1/objects/tweets?count=1")["count"]
    assert count == 1500


def test_processes_started_before_their_servers_wait_and_say_so(
    tmp_path: Path, pg_server: Any, make_redis_server: Callable[..., Any]
) -> None:
    database_url = pg_server.create_database()
    redis_down = make_redis_server(start=False)
    deployment = Deployment(tmp_path, database_url, redis_down.url)
    try:
        deployment.write_stream(300)
        deployment.migrate()
        pg_server.stop()
        web = deployment.serve()
        status, body = readiness(web)
        assert status == 503 and "waiting" in str(body)
        worker = deployment.ingest()
        wait_for(lambda: "waiting for PostgreSQL" in log_of(web), 4 * UNIT, "the waiting line")
        pg_server.start()
        wait_for(lambda: "Redis" in str(readiness(web)[1]), 8 * UNIT, "waiting for Redis")
        assert readiness(web)[0] == 503
        redis_down.start()
        wait_for(lambda: ready(web), 8 * UNIT, "serve ready")
        reader = Reader(lambda: [web.ws_url], 300)
        assert_whole(reader.wait(8 * UNIT), 300)
        assert worker.proc.poll() is None
        # Lost while running: /readyz says so, the object API answers 503, not 500.
        pg_server.stop()
        wait_for(lambda: "unreachable" in str(readiness(web)[1]), 4 * UNIT, "unreachable")
        assert readiness(web)[0] == 503
        assert status_of(web.url + "/v1/objects/tweets?count=1") == 503
        pg_server.start()
        wait_for(lambda: ready(web), 4 * UNIT, "ready again")
        assert "Traceback" not in log_of(web)
    finally:
        deployment.close()


def status_of(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=UNIT) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def readiness(process: RelayProcess) -> tuple[int, object]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(process.url + "/readyz", timeout=UNIT) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def ready(process: RelayProcess) -> bool:
    return readiness(process)[0] == 200


def test_relay_run_stores_in_postgresql_and_an_explicit_db_wins(
    tmp_path: Path, pg_url: str
) -> None:
    write_stream(tmp_path / "stream.jsonl", 200, 5)
    replay = ("--replay", str(tmp_path / "stream.jsonl"), "--speed", "max", "--no-loop")
    env = {"DATABASE_URL": pg_url}
    embedded = RelayProcess(tmp_path / "run.log", *replay, env=env)
    try:
        wait_for(lambda: embedded.count() == 200, 4 * UNIT, "200 tweets in PostgreSQL")
        metrics = urllib_text(embedded.url + "/metrics")
        assert "relay_writer_active 1.0" in metrics
        assert "relay_store_commit_seconds_count" in metrics
        assert "relay_bus_lag_seqs" in metrics
        assert embedded.stop() == 0
    finally:
        embedded.close()
    assert not list(tmp_path.glob("*.db"))
    db = tmp_path / "explicit.db"
    explicit = RelayProcess(tmp_path / "explicit.log", *replay, "--db", str(db), env=env)
    try:
        wait_for(lambda: explicit.count() == 200, 4 * UNIT, "200 tweets in SQLite")
        assert explicit.stop() == 0
    finally:
        explicit.close()
    assert db.is_file()
    assert "--db" in (tmp_path / "explicit.log").read_text()  # it says which store it took


def urllib_text(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=UNIT) as response:
        return str(response.read().decode())
