"""relay.testing: the shipped RelayServer, client, pytest plugin, and the CLI's end of replay."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.config import Settings
from relay.core.auth import issue_token
from relay.core.times import time_from_unix
from relay.sources import RawLine
from relay.sources.synth import sample_path, write_stream
from relay.testing import (
    TEST_EPOCH,
    RelayClient,
    RelayClientError,
    RelayServer,
    RelayServerError,
    ReplayClock,
    Response,
    stream_line,
    tweets_of,
)
from relay.testing.source import FIXED_START
from tests.support import ROOT, UNIT, counted, wait_for

Frame = dict[str, Any]

RELAY_RUN = [sys.executable, "-m", "relay", "run", "--port", "0"]
PACED = ["--speed", "30", "--no-loop", "--exit-when-done"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic recording (with recorded times), plus a duplicate, a malformed line and
    a line without a recorded time."""
    path = tmp_path_factory.mktemp("rec") / "stream.jsonl"
    write_stream(path, 200, 5)
    lines = path.read_bytes().splitlines()
    extra = [lines[10], b"{not json", stream_line(9_000_000_000_000_000_001, "no time"), b""]
    path.write_bytes(b"\n".join(lines + extra) + b"\n")
    return path


def replay_frames(recording: Path, *, stepped: bool = False, **options: Any) -> list[Frame]:
    """Every frame a client gets: subscribed before the first step, or after the replay."""
    speed = "step" if stepped else "max"
    server = RelayServer(recording, speed=speed, **options)
    with server, RelayClient(server.ws_url) as client:
        if stepped:
            client.subscribe(since=(server.epoch, 0))
            server.step(204)
        else:
            server.wait_replayed()
            client.subscribe(since=(server.epoch, 0))
        client.until_seq(201)
        if stepped:
            server.wait_replayed()
        return client.frames


@pytest.mark.parametrize("stepped", [False, True], ids=["max", "step"])
def test_the_same_recording_replayed_twice_gives_identical_frames(
    recording: Path, stepped: bool
) -> None:
    first = replay_frames(recording, stepped=stepped)
    second = replay_frames(recording, stepped=stepped)
    assert len(tweets_of(first)) == 201  # 200 + the line without a time; not the duplicate
    assert first == second
    assert first[0]["epoch"] == TEST_EPOCH
    assert [f["seq"] for f in first if f["type"] == "tweet"] == list(range(1, 202))
    # Live (stepped) or from the store: the same tweets, byte for byte.
    assert tweets_of(first) == tweets_of(replay_frames(recording, stepped=not stepped))


def test_a_line_without_a_recorded_time_gets_the_test_clocks(recording: Path) -> None:
    frames = tweets_of(replay_frames(recording, clock=ReplayClock(start=FIXED_START)))
    untimed = frames[-1]
    assert untimed["text"] == "no time"
    # The clock's second reading: the malformed line before it has no time either.
    assert untimed["received_at"] == time_from_unix(FIXED_START + 0.001)
    recorded = orjson.loads(recording.read_bytes().splitlines()[0])["__relay"]["received_at"]
    assert frames[0]["received_at"] == time_from_unix(recorded)


def test_wait_replayed_says_what_the_replay_did(recording: Path) -> None:
    with RelayServer(recording) as server:
        summary = server.wait_replayed()
        assert (summary.lines, summary.stored, summary.duplicates, summary.malformed) == (
            204,
            201,
            1,
            1,
        )
        assert str(summary) == "replay finished: 204 lines, 201 stored, 1 duplicates, 1 malformed"
        assert server.head == 201


@pytest.mark.parametrize("as_process", [False, True], ids=["in_process", "cli"])
def test_the_summary_accounts_for_every_line_skipped_tweets_too(
    tmp_path: Path, as_process: bool
) -> None:
    path = tmp_path / "skips.jsonl"
    write_stream(path, 10, 5)
    lines = path.read_bytes().splitlines()
    no_id = orjson.loads(lines[2])
    no_id["data"]["id"] = "9" * 40  # past 2^64: no usable id
    no_text = orjson.loads(lines[3])
    no_text["data"]["text"] = ["not", "text"]
    lines[2], lines[3] = orjson.dumps(no_id), orjson.dumps(no_text)
    path.write_bytes(b"\n".join(lines) + b"\n")
    with RelayServer(path, subprocess=as_process) as server:
        summary = server.wait_replayed()
    assert (summary.lines, summary.stored, summary.skipped) == (10, 8, 2)
    assert summary.stored + summary.duplicates + summary.malformed + summary.skipped == 10
    assert str(summary) == (
        "replay finished: 10 lines, 8 stored, 0 duplicates, 0 malformed, 2 tweets skipped"
    )


def test_a_stepped_replay_releases_recorded_lines_only_when_told(recording: Path) -> None:
    with RelayServer(recording, speed="step") as server, RelayClient(server.ws_url) as client:
        client.subscribe()
        server.step(3)
        assert [f["seq"] for f in client.tweets(3)] == [1, 2, 3]
        with pytest.raises(RelayClientError, match="got 0 of 1"):
            client.tweets(1, timeout=0.3)  # nothing more was released
        server.step(2)
        assert [f["seq"] for f in client.tweets(2)] == [4, 5]
        assert server.head == 5


def test_pushed_lines_reach_clients_and_the_store(tmp_path: Path) -> None:
    with RelayServer(store=tmp_path / "mine.db") as server, RelayClient(server.ws_url) as client:
        client.subscribe()
        server.push(stream_line(1, "one"))
        server.push({"data": {"id": "2", "text": "two", "edit_history_tweet_ids": ["2"]}})
        server.wait_seq(2)
        assert [t["text"] for t in tweets_of(client.tweets(2))] == ["one", "two"]
        server.end()
        assert server.wait_replayed().stored == 2
    assert (tmp_path / "mine.db").exists()


def test_get_returns_a_named_status_and_body_that_still_unpacks(recording: Path) -> None:
    # fcb6446: a bare (status, body) tuple, undocumented.
    with RelayServer(recording) as server:
        server.wait_replayed()
        found = server.get("/v1/objects/tweets?sort=seq&limit=2")
        assert isinstance(found, Response)
        assert found.status == 200 and [t["seq"] for t in found.body["results"]] == [1, 2]
        status, body = found  # as before it had names
        assert (status, body) == (found.status, found.body)
        missing = server.get("/v1/objects/tweets/nope")
        assert missing.status == 404 and missing.body["errors"][0]["reason"]


def test_the_epoch_can_be_random_or_chosen(recording: Path) -> None:
    with RelayServer(recording, epoch="0123456789abcdef") as server:
        assert server.epoch == "0123456789abcdef"
    with RelayServer(recording, epoch=None) as server:
        assert re.fullmatch(r"[0-9a-f]{16}", server.epoch) and server.epoch != TEST_EPOCH


def test_the_client_reports_a_reset_and_error_frames(recording: Path) -> None:
    with RelayServer(recording) as server, RelayClient(server.ws_url) as client:
        server.wait_replayed()
        subscribed = client.subscribe(since=("another-epoch", 5))
        assert client.resets == [
            {"type": "reset", "channel": "tweets", "epoch": TEST_EPOCH, "seq": 201}
        ]
        assert subscribed["seq"] == 201
        with pytest.raises(RelayClientError, match="unknown_channel") as error:
            client.subscribe("nope")
        assert error.value.frame is not None and error.value.frame["code"] == "unknown_channel"


def test_access_control_settings_and_tokens(recording: Path) -> None:
    from relay.core.auth import issue_token

    secret = "s" * 32
    with RelayServer(recording, secret=secret, public_channels=[]) as server:
        server.wait_replayed()
        with pytest.raises(Exception, match="401"):
            RelayClient(server.ws_url)
        token = issue_token(secret, subject="t", channels=["tweets"], ttl=600, now=_now())
        with RelayClient(server.ws_url, token=token) as client:
            client.subscribe(since=(server.epoch, 0))
            assert len(client.until_seq(201)) == 201


def _now() -> float:
    import time

    return time.time()


def test_the_async_context_manager(recording: Path) -> None:
    async def main() -> int:
        async with RelayServer(recording) as server:
            summary = await server.wait_replayed_async()
            await server.wait_seq_async(summary.stored)
            return server.head

    assert asyncio.run(main()) == 201


def test_a_subprocess_relay_runs_the_real_cli(recording: Path) -> None:
    server = RelayServer(recording, subprocess=True)
    with server:
        summary = server.wait_replayed()
        assert (summary.lines, summary.stored) == (204, 201)
        assert server.head == 201 and server.epoch == TEST_EPOCH
    assert server.stop() == 0  # the clean exit of SIGTERM, asked again: harmless


@pytest.mark.relay(replay="sample")
def test_the_plugin_fixtures_start_the_marked_relay(
    relay_server: RelayServer, relay_client: RelayClient
) -> None:
    relay_client.subscribe(since=(relay_server.epoch, 0))
    summary = relay_server.wait_replayed()
    assert summary.stored == summary.lines == 3000
    assert relay_client.until_seq(3000)[-1]["seq"] == 3000
    assert relay_server.replay == Path(sample_path())


def test_run_no_loop_exit_when_done_exits_0_after_the_last_tweet(
    recording: Path, tmp_path: Path
) -> None:
    log = tmp_path / "relay.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            # Paced (about 2 s) so that the client below is connected before the end.
            [*RELAY_RUN, "--db", str(tmp_path / "r.db"), "--replay", str(recording), *PACED],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            # Rich wraps log lines at 80 columns when stderr is a file.
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"http://[\w.]+:(\d+)/", line)
            assert match, log.read_text()
            base = f"127.0.0.1:{match.group(1)}"
            with urllib.request.urlopen(f"http://{base}/v1/info", timeout=UNIT) as response:
                epoch = orjson.loads(response.read())["epoch"]
            tweets: list[dict[str, Any]] = []
            client = RelayClient(f"ws://{base}/v1/stream")
            client.subscribe(since=(epoch, 0))
            with pytest.raises(RelayClientError) as closed:
                while True:  # every tweet, then 1001 as the relay exits on its own
                    tweets += tweets_of([client.next_frame(timeout=4 * UNIT)])
            assert closed.value.code == 1001, closed.value
            assert proc.wait(4 * UNIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            assert proc.stdout is not None
            proc.stdout.close()
    text = log.read_text()
    assert "replay finished: 204 lines, 201 stored, 1 duplicates, 1 malformed" in text
    assert text.index("replay finished") < text.index("shutting down")
    assert [t["seq"] for t in tweets] == list(range(1, 202))


def test_exit_when_done_refuses_a_replay_that_never_ends() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "run", "--port", "0", "--exit-when-done"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=4 * UNIT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    assert "--exit-when-done needs a replay that ends" in proc.stderr


def test_relay_testing_needs_no_pytest_outside_its_plugin() -> None:
    code = "import sys, relay.testing; print('pytest' in sys.modules, '_pytest' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=4 * UNIT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout.split() == ["False", "False"], proc.stderr


def test_pushed_lines_go_out_while_a_stepped_replay_waits(recording: Path) -> None:
    with RelayServer(recording, speed="step") as server, RelayClient(server.ws_url) as client:
        client.subscribe()
        server.push(stream_line(1, "pushed"))
        assert [t["text"] for t in tweets_of(client.tweets(1))] == ["pushed"]
        server.step(1)
        (recorded,) = tweets_of(client.tweets(1))
        assert recorded["seq"] == 2 and recorded["text"] != "pushed"


def test_the_lines_of_one_push_go_together_and_the_stored_tweets_can_be_listed(
    tmp_path: Path,
) -> None:
    secret = "s" * 32
    token = issue_token(secret, subject="t", channels=["tweets"], ttl=60, now=time.time())
    with RelayServer(batch_size=500, secret=secret, public_channels=[]) as server:
        assert server.relay is not None
        writes = server.relay.metrics.stream_writes
        with RelayClient(server.ws_url, token=token) as client:
            client.subscribe()
            wait_for(lambda: counted(writes) == 1, UNIT, "the subscribed frame's write")
            server.push(*(stream_line(n, lang="ja" if n % 2 else "en") for n in (1, 2, 3)))
            assert [f["seq"] for f in client.tweets(3)] == [1, 2, 3]
            wait_for(lambda: counted(writes) >= 2, UNIT, "the tweets' write")
            assert counted(writes) == 2  # one push, one batch, one write
        assert server.stored_ids() == ["1", "2", "3"]  # from the store: no token needed
        assert server.get("/v1/objects/tweets").status == 401
        assert [t["id"] for t in server.all_tweets(token=token)] == ["1", "2", "3"]
        assert [t["id"] for t in server.all_tweets(token=token, q='{"lang": "ja"}')] == ["1", "3"]


class Lines:
    """A source of the test's own: a fixed list, received at a fixed time."""

    name = "lines"

    async def lines(self) -> AsyncIterator[RawLine]:
        for n in (1, 2):
            yield RawLine(stream_line(n), 1_700_000_000.0)


def test_a_source_of_the_tests_own_and_the_relays_own_clock() -> None:
    with RelayServer(source=Lines(), wall_clock=lambda: 1_700_000_100.0) as server:
        assert server.wait_replayed().stored == 2
        assert server.relay is not None and server.relay.clock() == 1_700_000_100.0
        with pytest.raises(RelayServerError, match="push, step and end need"):
            server.push(stream_line(3))
    with pytest.raises(RelayServerError, match="not both"):
        RelayServer(Path(__file__), source=Lines())


def test_running_relay_and_push_source_still_work_and_say_they_are_deprecated(
    tmp_path: Path,
) -> None:
    from relay.testing import PushSource, RunningRelay

    settings = Settings.from_mapping({"port": 0, "db": str(tmp_path / "old.db")})
    with pytest.warns(DeprecationWarning, match="PushSource is deprecated") as made:
        source = PushSource()
    assert made[0].filename == __file__  # the warning names the caller's line
    with pytest.warns(DeprecationWarning, match="RunningRelay is deprecated: use"):
        relay = RunningRelay(settings, source)
    try:
        source.push(stream_line(1), stream_line(2))
        relay.wait_stored(2)
        assert relay.stored_ids() == ["1", "2"]
        assert relay.get("/v1/info").body["seq"] == 2
        assert relay.relay is not None and relay.relay.settings is settings  # as given
    finally:
        relay.stop()


def test_an_in_process_relay_lends_its_collection_thresholds_while_it_runs(
    tmp_path: Path,
) -> None:
    import gc

    from relay.app.launch import HOT_PATH_THRESHOLDS

    recording = tmp_path / "stream.jsonl"
    write_stream(recording, 20, seed=3)
    before = gc.get_threshold()
    assert before != HOT_PATH_THRESHOLDS
    with RelayServer(recording, speed="max") as outer:
        assert gc.get_threshold() == HOT_PATH_THRESHOLDS
        with RelayServer(recording, speed="max") as inner:
            assert inner.wait_replayed().stored == 20
        assert gc.get_threshold() == HOT_PATH_THRESHOLDS  # the outer one still runs
        assert outer.wait_replayed().stored == 20
    assert gc.get_threshold() == before


def test_lines_pushed_during_a_full_speed_replay_are_stored_once_each_beside_it(
    tmp_path: Path,
) -> None:
    # At full speed the replay goes a read of the file at a time; pushed lines go out
    # between two reads, and the recorded lines keep their order among themselves.
    path = tmp_path / "stream.jsonl"
    write_stream(path, 3000, seed=9)
    recorded = [orjson.loads(line)["data"]["id"] for line in path.read_bytes().splitlines()]
    pushed = [str(10**12 + n) for n in range(20)]
    with RelayServer(path, speed="max", keep_open=True) as server:
        for tweet_id in pushed:
            server.push({"data": {"id": tweet_id, "text": "pushed"}})
        server.wait_seq(len(recorded) + len(pushed), timeout=20 * UNIT)
        ids = [tweet["id"] for tweet in server.all_tweets()]
    assert sorted(ids) == sorted(recorded + pushed)  # each once
    assert [i for i in ids if i not in pushed] == recorded
    assert [i for i in ids if i in pushed] == pushed
