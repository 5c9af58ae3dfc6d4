"""``relay-demo --sse`` (the stream as server-sent events over plain HTTP) and
``relay-demo --since-time`` (a rewind), as a person runs them, against real relays."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import orjson
import pytest

from relay.core.auth import issue_token
from relay.testing import RelayServer
from tests.support import ROOT, UNIT, counted, free_port, stream_line, wait_for
from tests.test_auth import SECRET


class Demo:
    """``relay-demo`` with its output read line by line as it comes (reader threads)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "client_demo.cli", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, sink in ((self.proc.stdout, self.out.put), (self.proc.stderr, self.err.append)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _read(stream: IO[str], sink: Callable[[str], None]) -> None:
        with stream:
            for line in stream:
                sink(line)

    def lines(self, count: int) -> list[str]:
        got = []
        for _ in range(count):
            try:
                got.append(self.out.get(timeout=6 * UNIT))
            except queue.Empty:
                raise AssertionError(f"{len(got)} of {count} lines; stderr: {self.err}") from None
        return got

    def tweets(self, count: int) -> list[dict[str, object]]:
        return [orjson.loads(line) for line in self.lines(count)]

    def said(self, text: str) -> None:
        wait_for(lambda: any(text in line for line in self.err), 6 * UNIT, repr(text))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def _demo(*args: str, env: dict[str, str] | None = None) -> Iterator[Demo]:
    demo = Demo(*args, env=env)
    try:
        yield demo
    finally:
        demo.stop()


def _push(relay: RelayServer, first: int, last: int, text: str = "tweet") -> None:
    relay.push(*(stream_line(n, f"{text} {n}") for n in range(first, last + 1)))


def test_sse_shows_live_tweets_and_resumes_across_a_relay_restart(
    start_relay: Callable[..., RelayServer],
) -> None:
    port = free_port()
    relay = start_relay(port=port)  # the same SQLite file both times
    with _demo("--sse", "--json", relay.url) as demo:
        demo.said("subscribed to tweets")
        _push(relay, 1, 5, "live")
        got = demo.tweets(5)
        assert relay.relay is not None
        assert counted(relay.relay.metrics.frames_sent, transport="sse") > 0
        assert counted(relay.relay.metrics.frames_sent, transport="websocket") == 0
        relay.stop()
        demo.said("the relay ended the stream: 1001 shutdown")
        relay = start_relay(port=port)
        _push(relay, 6, 8, "while away")
        relay.wait_seq(8)
        got += demo.tweets(3)  # from the store: after the last one it printed
        _push(relay, 9, 10, "live again")
        got += demo.tweets(2)
    assert [t["id"] for t in got] == [str(n) for n in range(1, 11)], "a gap or a duplicate"
    assert [t["seq"] for t in got] == list(range(1, 11))


def test_sse_with_several_channels_prints_a_tweet_on_two_of_them_on_each() -> None:
    with RelayServer() as relay:
        relay.push(
            stream_line(1, "cats", tags=("cats",)),
            stream_line(2, "both", tags=("cats", "dogs")),
            stream_line(3, "neither", tags=()),
        )
        relay.wait_seq(3)
        with _demo(
            "--sse", "--since", "0", "--channel", "rule:cats", "--channel", "rule:dogs", relay.url
        ) as demo:
            lines = demo.lines(3)
    # The plain lines: "SEQ  @author  text", once for each channel the tweet is on.
    assert [line.split()[0] for line in lines] == ["1", "2", "2"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--channel", "rule:nope"], "unknown channel 'rule:nope'"),
        (["--channel", "bad channel"], "unknown channel 'bad channel'"),
    ],
)
def test_an_sse_stream_the_relay_refuses_is_one_line_and_exit_2(
    start_relay: Callable[..., RelayServer], args: list[str], says: str
) -> None:
    from tests.support import bundled_sample

    relay = start_relay(source=bundled_sample())
    done = _run("--sse", "--json", *args, relay.url)
    assert done.returncode == 2
    assert says in _one_line(done.stderr)


def test_sse_on_a_private_relay_tells_no_token_from_a_refused_one(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(secret=SECRET, public_channels=[])
    none = _run("--sse", "--json", relay.url, env={"RELAY_DEMO_TOKEN": ""})
    assert none.returncode == 1 and "needs a token" in _one_line(none.stderr)
    bad = _run("--sse", "--json", "--token", "not-a-token", relay.url)
    assert bad.returncode == 1 and "refused the token" in _one_line(bad.stderr)
    granted = issue_token(SECRET, subject="a", channels=["rule:dogs"], ttl=600, now=time.time())
    forbidden = _run("--sse", "--json", "--channel", "rule:cats", "--token", granted, relay.url)
    assert forbidden.returncode == 2 and "does not grant rule:cats" in _one_line(forbidden.stderr)


def test_sse_opens_a_new_stream_with_a_fresh_token_when_its_token_expires(
    start_relay: Callable[..., RelayServer], tmp_path: Path
) -> None:
    relay = start_relay(secret=SECRET, public_channels=[])
    fresh = tmp_path / "token"
    fresh.write_text(
        issue_token(SECRET, subject="a", channels=["tweets"], ttl=600, now=time.time()) + "\n"
    )
    short = issue_token(SECRET, subject="a", channels=["tweets"], ttl=2, now=time.time())
    with _demo(
        "--sse", "--json", "--token-command", f"cat {fresh}", relay.url,
        env={"RELAY_DEMO_TOKEN": short},
    ) as demo:  # fmt: skip
        demo.said("subscribed to tweets")
        _push(relay, 1, 2, "before")
        got = demo.tweets(2)
        demo.said("token refreshed: reopening the stream")
        _push(relay, 3, 4, "after")
        got += demo.tweets(2)
    assert [t["seq"] for t in got] == [1, 2, 3, 4]


def test_sse_without_a_token_command_ends_with_one_line_when_its_token_expires(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(secret=SECRET, public_channels=[])
    short = issue_token(SECRET, subject="a", channels=["tweets"], ttl=1, now=time.time())
    done = _run("--sse", "--json", relay.url, env={"RELAY_DEMO_TOKEN": short})
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert "token expired" in last and "--token-command" in last, done.stderr


# -- --since-time ----------------------------------------------------------------------


def _now_iso() -> str:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(time.time(), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@pytest.mark.parametrize("sse", [False, True], ids=["websocket", "sse"])
def test_since_time_shows_the_tweets_received_from_then_then_live(
    start_relay: Callable[..., RelayServer], sse: bool
) -> None:
    relay = start_relay()
    _push(relay, 1, 20, "early")
    relay.wait_seq(20)
    early = max(t["received_at"] for t in relay.all_tweets())
    wait_for(lambda: _now_iso() > early, UNIT, "a later millisecond")
    _push(relay, 21, 40, "later")
    relay.wait_seq(40)
    stored = relay.all_tweets()
    moment = min(t["received_at"] for t in stored if t["received_at"] > early)
    expected = sorted(t["seq"] for t in stored if t["received_at"] >= moment)
    assert expected and expected[0] > 20, expected
    transport = ["--sse"] if sse else []
    with _demo(*transport, "--json", "--since-time", moment, relay.url) as demo:
        got = demo.tweets(len(expected))
        demo.said(f"subscribed to tweets from {moment}: {len(expected)} stored tweets")
        _push(relay, 41, 42, "live")
        got += demo.tweets(2)
    assert [t["seq"] for t in got] == [*expected, 41, 42]
    assert all(t["received_at"] >= moment for t in got)


@pytest.mark.parametrize("sse", [False, True], ids=["websocket", "sse"])
def test_since_time_back_from_now_covers_a_young_relay_whole(
    start_relay: Callable[..., RelayServer], sse: bool
) -> None:
    relay = start_relay()
    _push(relay, 1, 10)
    relay.wait_seq(10)
    transport = ["--sse"] if sse else []
    with _demo(*transport, "--json", "--since-time", "-15m", relay.url) as demo:
        assert [t["seq"] for t in demo.tweets(10)] == list(range(1, 11))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--since-time", "yesterday"], "--since-time must be an ISO 8601 time"),
        (["--since-time", "2026-13-01T00:00:00Z"], "not '2026-13-01T00:00:00Z'"),
        (["--since-time", "-5x"], "a time back (-30s, -15m, -1h, -7d)"),
        (["--since-time", "-15m", "--since", "3"], "give --since or --since-time, not both"),
    ],
)
def test_a_bad_since_time_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    done = _run(*args, "http://127.0.0.1:1")
    assert done.returncode == 2
    assert says in _one_line(done.stderr)
    assert done.stdout == ""


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client_demo.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=20 * UNIT,
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and "connected" not in line]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_sse_into_a_closed_pipe_ends_quietly_with_0(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay()
    _push(relay, 1, 5)
    relay.wait_seq(5)
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m client_demo.cli --sse --json --since 0 "
         f"{relay.url} | head -3; echo \"status=${{PIPESTATUS[0]}}\" >&2"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=20 * UNIT,
    )  # fmt: skip
    assert [orjson.loads(line)["seq"] for line in done.stdout.splitlines()] == [1, 2, 3]
    assert "Traceback" not in done.stderr and "status=0" in done.stderr, done.stderr
    assert relay.relay is not None
    wait_for(
        lambda: counted(relay.relay.metrics.sse_closes, reason="client") == 1,  # type: ignore[union-attr]
        2 * UNIT,
        "the stream closed by the client",
    )
