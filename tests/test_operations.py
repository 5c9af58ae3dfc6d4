"""What an operator meets: the release phase on a bad database host, a new epoch beside
running processes, waits for servers that are down, a failover read from the logs.

Real processes on a real PostgreSQL and a real Redis; clients are real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.sync.client import ClientConnection

from relay.sources.synth import write_stream
from relay.testing import RelayServer
from tests.support import UNIT, RelayProcess, free_port, stream_line, wait_for, ws_connect
from tests.test_scale_out import log_of, ready, relay_cli


@pytest.fixture
def started() -> Iterator[list[RelayProcess]]:
    processes: list[RelayProcess] = []
    yield processes
    for process in processes:
        process.close()


def _start(
    started: list[RelayProcess], root: Path, command: str, *args: str, env: dict[str, str]
) -> RelayProcess:
    log = root / f"{command}-{len(started) + 1}.log"
    process = RelayProcess(log, *args, command=command, env=env)
    started.append(process)
    return process


def _frames_until(ws: ClientConnection, kind: str, timeout: float) -> list[dict[str, Any]]:
    """Frames up to and with the first of type ``kind``."""
    deadline = time.monotonic() + timeout
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["type"] != kind:
        frames.append(orjson.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic()))))
    return frames


def _lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


# -- point 10: the release phase gives up; waits are one line per change ------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@no-such-host.invalid/relay",  # a typo'd host: no DNS answer
        f"postgresql://postgres@127.0.0.1:{free_port()}/relay",  # nothing listens there
    ],
)
def test_migrate_gives_up_on_a_database_that_does_not_answer_within_its_wait(url: str) -> None:
    began = time.monotonic()
    done = relay_cli("migrate", "--wait", "2s", env={"DATABASE_URL": url})
    took = time.monotonic() - began
    assert done.returncode == 1, done.stderr
    assert 2 <= took < 2 + 2 * UNIT
    assert len(_lines(done.stderr, "waiting for PostgreSQL")) == 1  # not one line a try
    (gave_up,) = _lines(done.stderr, "did not answer")
    assert gave_up.startswith("relay: migrate: PostgreSQL at ")
    assert "within 2 s (--wait)" in gave_up
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_migrate_documents_its_wait_and_refuses_a_bad_one() -> None:
    assert "--wait" in relay_cli("migrate", "--help", env={}).stdout
    done = relay_cli("migrate", "--wait", "soon", env={})
    assert done.returncode == 2 and "not a duration" in done.stderr


def test_waiting_for_redis_is_one_line_when_it_goes_and_one_when_it_answers(
    start_relay: Callable[..., RelayServer],
    make_redis_server: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three loops wait for the same Redis (start, the sender, the follower): the log said
    so in three lines a try; now one line when it goes and one when it answers."""
    caplog.set_level(logging.DEBUG, logger="relay.bus.redis")
    redis = make_redis_server(start=False)
    relay = start_relay(redis_url=redis.url)

    def records(level: int, text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.levelno == level and text in r.getMessage()]

    # Tries go on (at debug level) while Redis is down; the old code's warning a try shows
    # here as a second warning.
    wait_for(
        lambda: (
            len(records(logging.DEBUG, "still waiting for Redis")) >= 3
            or len(records(logging.WARNING, "waiting for Redis")) >= 2
        ),
        4 * UNIT,
        "a few tries",
    )
    redis.start()
    wait_for(lambda: records(logging.INFO, "answers again"), 4 * UNIT, "Redis answers")
    assert len(records(logging.WARNING, "waiting for Redis")) == 1
    assert len(records(logging.INFO, "answers again")) == 1
    relay.push(stream_line(1))
    relay.wait_seq(1)


def test_a_serving_process_waits_for_the_schema_in_one_line(
    make_settings: Callable[..., Any],
    start_relay: Callable[..., RelayServer],
    pg_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from relay.store.postgres.admin import migrate

    caplog.set_level(logging.DEBUG, logger="relay.app.relay")
    settings = make_settings(database_url=pg_url)

    def lines(text: str, level: int = logging.DEBUG) -> int:
        return len([r for r in caplog.records if r.levelno == level and text in r.message])

    async def main() -> None:
        from relay.app.relay import Relay

        relay = Relay(settings, role="serve")
        starting = asyncio.create_task(relay.start())
        deadline = time.monotonic() + 6 * UNIT
        while lines("still waiting for the store") < 2 and lines("waiting for the store", 30) < 2:
            assert time.monotonic() < deadline, "no second try"
            await asyncio.sleep(0.01)
        await migrate(pg_url)
        await asyncio.wait_for(starting, 4 * UNIT)
        await relay.stop()

    asyncio.run(main())
    assert lines("waiting for the store", logging.WARNING) == 1
    assert lines("the store answers again", logging.INFO) == 1


# -- point 9: a new epoch beside running processes ----------------------------------------


def test_a_new_epoch_is_refused_while_an_ingester_holds_the_lease(
    tmp_path: Path, pg_url: str, started: list[RelayProcess]
) -> None:
    stream = tmp_path / "stream.jsonl"
    write_stream(stream, 50, 3)
    env = {"DATABASE_URL": pg_url, "RELAY_LEASE_TTL": "60"}
    assert relay_cli("migrate", env=env).returncode == 0
    epoch = relay_cli("migrate", env=env)  # idempotent
    worker = _start(started, tmp_path, "ingest", "--replay", str(stream), "--speed", "max", env=env)
    wait_for(lambda: "active ingester" in log_of(worker), 4 * UNIT, "the writer")
    holder = log_of(worker).split("active ingester (")[1].split(")")[0]

    refused = relay_cli("migrate", "--new-epoch", env=env)
    assert refused.returncode == 2, refused.stdout
    (line,) = refused.stderr.strip().splitlines()
    assert f"held by {holder}" in line and "--force" in line
    assert "new epoch" not in refused.stdout

    worker.proc.send_signal(signal.SIGKILL)  # dead, its lease still live for a minute
    worker.proc.wait(UNIT)
    again = relay_cli("migrate", "--new-epoch", env=env)
    assert again.returncode == 2 and f"held by {holder}" in again.stderr
    forced = relay_cli("migrate", "--new-epoch", "--force", env=env)
    assert forced.returncode == 0, forced.stderr
    assert "new epoch" in forced.stdout
    assert epoch.returncode == 0


def test_serving_processes_reset_their_clients_when_the_epoch_changes(
    tmp_path: Path, pg_url: str, redis_server: Any, started: list[RelayProcess]
) -> None:
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    write_stream(first, 40, 3)
    write_stream(second, 10, 4)
    env = {
        "DATABASE_URL": pg_url,
        "REDIS_URL": redis_server.url,
        "RELAY_BUS_CHECK_INTERVAL": "0.3",
        "RELAY_HEARTBEAT_INTERVAL": "0.2",
    }
    assert relay_cli("migrate", env=env).returncode == 0
    web = _start(started, tmp_path, "serve", env=env)
    wait_for(lambda: ready(web), 4 * UNIT, "serve ready")
    old_epoch = web.get("/v1/info")["epoch"]
    live = ws_connect(web.ws_url)
    live.send(orjson.dumps({"op": "subscribe", "channel": "tweets"}).decode())
    worker = _start(
        started, tmp_path, "ingest", "--replay", str(first), "--speed", "max", "--no-loop", env=env
    )
    frames = _frames_until(live, "subscribed", UNIT)
    tweets = 0
    while tweets < 40:
        frame = orjson.loads(live.recv(timeout=2 * UNIT))
        tweets += frame["type"] == "tweet"
    assert worker.stop() == 0  # the lease is handed over: no writer now

    done = relay_cli("migrate", "--new-epoch", env=env)
    assert done.returncode == 0, done.stderr
    new_epoch = done.stdout.split("new epoch ")[1].split(":")[0]
    assert new_epoch != old_epoch

    frames = _frames_until(live, "reset", 4 * UNIT)
    assert frames[-1] == {"type": "reset", "channel": "tweets", "epoch": new_epoch, "seq": 40}
    wait_for(lambda: "epoch changed" in log_of(web), UNIT, "the log line")
    (line,) = _lines(log_of(web), "epoch changed")
    assert old_epoch in line and new_epoch in line and "1 subscriptions of 1 clients" in line
    assert web.get("/v1/info")["epoch"] == new_epoch

    # A client resuming in the old epoch is told to reset, not served the old history.
    resumed = ws_connect(web.ws_url)
    since = {"epoch": old_epoch, "seq": 10}
    resumed.send(orjson.dumps({"op": "subscribe", "channel": "tweets", "since": since}).decode())
    assert _frames_until(resumed, "subscribed", UNIT)[0]["type"] == "reset"

    # The new epoch's writer reaches the same serving process, live, after seq 40.
    _start(started, tmp_path, "ingest", "--replay", str(second), "--speed", "max", env=env)
    seqs = []
    while len(seqs) < 10:
        frame = orjson.loads(live.recv(timeout=4 * UNIT))
        assert frame["type"] != "reset"
        if frame["type"] == "tweet":
            seqs.append(frame["seq"])
    assert seqs == list(range(41, 51))
    live.close()
    resumed.close()


# -- point 11: a failover that reads as one ------------------------------------------------


def test_a_failover_reads_as_one_in_the_logs(
    tmp_path: Path, pg_url: str, redis_server: Any, started: list[RelayProcess]
) -> None:
    stream = tmp_path / "stream.jsonl"
    write_stream(stream, 3000, 5)
    common = {"DATABASE_URL": pg_url, "REDIS_URL": redis_server.url}
    # The writers' lease outlives the serving process's patience: the silence shows first.
    writers = {**common, "RELAY_LEASE_TTL": "6", "RELAY_HEARTBEAT_INTERVAL": "0.2"}
    web_env = {**common, "RELAY_HEARTBEAT_INTERVAL": "0.2", "RELAY_BUS_CHECK_INTERVAL": "0.5"}
    assert relay_cli("migrate", env=common).returncode == 0
    web = _start(started, tmp_path, "serve", env=web_env)
    replay = ("--replay", str(stream), "--speed", "200", "--no-loop")
    active = _start(started, tmp_path, "ingest", *replay, env=writers)
    wait_for(lambda: "active ingester" in log_of(active), 4 * UNIT, "the writer")
    standby = _start(started, tmp_path, "ingest", *replay, env=writers)
    wait_for(lambda: "relay ingest started" in log_of(standby), 4 * UNIT, "the standby")
    (started_line,) = _lines(log_of(standby), "relay ingest started")
    assert "standing by for the writer lease (not writing)" in started_line
    assert "became the active writer" not in log_of(standby)

    wait_for(lambda: web.get("/v1/info")["seq"] > 0, 4 * UNIT, "tweets through the bus")
    silences = len(_lines(log_of(web), "no heartbeat from the writer"))
    heard = len(_lines(log_of(web), "heard on the bus again"))
    assert silences == heard  # before the writer came, if the serving process waited

    active.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: len(_lines(log_of(web), "no heartbeat from the writer")) > silences,
        4 * UNIT,
        "the silence",
    )
    wait_for(lambda: "became the active writer" in log_of(standby), 6 * UNIT, "the takeover")
    (took_over,) = _lines(log_of(standby), "became the active writer")
    waited = float(took_over.split("after ")[1].split(" s")[0])
    assert 0 < waited <= time.monotonic() - killed + 1 + 12  # it stood by since its start
    assert "at seq " in took_over
    wait_for(
        lambda: len(_lines(log_of(web), "heard on the bus again")) > heard,
        4 * UNIT,
        "the writer heard again",
    )
    # One line when it went quiet, one when it came back: not a line a check.
    assert len(_lines(log_of(web), "no heartbeat from the writer")) == silences + 1
    assert len(_lines(log_of(web), "heard on the bus again")) == heard + 1
    assert "active ingester" not in log_of(standby)
