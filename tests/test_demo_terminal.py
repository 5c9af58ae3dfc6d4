"""``relay-demo`` as a person runs it: in a real terminal (tmux) at several sizes, in pipes,
against wrong addresses, private relays and unknown channels.

tmux comes from the system (``apt-get install tmux``); the tmux tests skip without it,
and fail under CI, where it must be installed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.core.auth import issue_token
from relay.testing import RelayServer
from tests.support import ROOT, UNIT, RelayProcess, counted, stream_line, subscribe, wait_for
from tests.test_auth import SECRET

TEXTS = [
    "नमस्ते दुनिया, यह एक परीक्षण है क्षत्रिय",  # Devanagari: conjuncts, vowel signs
    "مرحبا بالعالم هذا اختبار",  # Arabic, right to left
    "สวัสดีครับ ทุกคน ที่นี่",  # Thai: combining vowels and tones
    "みんな見て、新しい写真です！ 😀",
    "family 👨‍👩‍👧‍👦 and 👍🏽 and flags 🇯🇵🇰🇷 and ❤️ hearts",  # joined emoji sequences
    "방탄소년단이 최고 #원호",
    "two\nlines\tand a tab \u202eRTL override\u202c end",  # control and format characters
    "a long plain line " + "word " * 60,
    "Zalgo t\u0337\u0321e\u0334\u0322x\u0338\u0327t combining marks",
]


def _demo(*args: str, env: dict[str, str] | None = None, timeout: float = 20 * UNIT) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "client_demo.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- a relay of multilingual tweets ------------------------------------------------


@pytest.fixture
def multilingual(tmp_path: Path, processes: list[RelayProcess]) -> RelayProcess:
    recording = tmp_path / "many-scripts.jsonl"
    recording.write_bytes(
        b"\n".join(stream_line(i + 1, text, author=f"a{i}") for i, text in enumerate(TEXTS)) + b"\n"
    )
    relay = RelayProcess(
        tmp_path / "relay.log",
        "--db",
        str(tmp_path / "demo.db"),
        "--replay",
        str(recording),
        "--speed",
        "max",
        "--loop",
    )
    processes.append(relay)
    return relay


# -- tmux ----------------------------------------------------------------------------


@pytest.fixture
def tmux() -> Iterator[Callable[..., str]]:
    """Runs a command in a detached tmux session of a given size; yields ``start``, which
    returns the session's name. Every session (and the private server) ends with the test."""
    if shutil.which("tmux") is None:
        message = "tmux is not installed (apt-get install tmux)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"terminal tests must run in CI: {message}")
        pytest.skip(message)
    socket = f"relay-test-{uuid.uuid4().hex[:8]}"

    def start(command: list[str], width: int, height: int) -> str:
        name = f"s{width}x{height}"
        subprocess.run(
            ["tmux", "-L", socket, "-f", "/dev/null", "new-session", "-d", "-s", name,
             "-x", str(width), "-y", str(height), *command],
            check=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm-256color",
                 "LC_ALL": "C.UTF-8"},
        )  # fmt: skip
        return f"{socket}:{name}"

    yield start
    subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True)


def _capture(target: str) -> list[str]:
    socket, name = target.split(":")
    done = subprocess.run(
        ["tmux", "-L", socket, "capture-pane", "-p", "-t", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()


def _received(lines: list[str]) -> int:
    for line in lines:
        match = re.search(r"(\d+) received", line)
        if match:
            return int(match.group(1))
    return -1


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (52, 14)])
def test_the_live_view_fills_the_terminal_keeps_its_borders_and_leaves_nothing_behind(
    tmux: Callable[..., str], multilingual: RelayProcess, size: tuple[int, int]
) -> None:
    from client_demo.view import CHROME_LINES

    width, height = size
    target = tmux([sys.executable, "-m", "client_demo.cli", multilingual.url], width, height)
    lines: list[str] = []

    def redrawn_many_times() -> bool:
        nonlocal lines
        lines = _capture(target)
        return _received(lines) >= max(3 * len(TEXTS), height)

    wait_for(redrawn_many_times, 10 * UNIT, "the view to show several rounds of tweets")
    # Stop the tweets, then take a frame the terminal shows twice in a row: a capture
    # taken while a frame is being drawn would show half of it.
    multilingual.close()
    previous: list[str] = []

    def steady() -> bool:
        nonlocal lines, previous
        previous, lines = lines, _capture(target)
        return lines == previous

    wait_for(steady, 10 * UNIT, "a frame that stays")
    # The terminal's own account of the screen after many redraws of every script.
    status = [line for line in lines if "received" in line]
    headers = [line for line in lines if re.search(r"seq.*author.*tweet", line)]
    assert len(status) == 1, "\n".join(lines)
    assert len(headers) == 1, "\n".join(lines)
    assert len(lines) <= height
    body = lines[lines.index(headers[0]) + 2 :]
    rows = [line for line in body if line.startswith("│")]
    # As many tweets as the terminal has lines for, not a fixed number.
    assert len(rows) == height - CHROME_LINES, "\n".join(lines)
    for line in rows:
        # Each row still ends at the right border: nothing pushed past it, nothing left
        # of an older, longer line after it.
        assert line.rstrip().endswith("│"), "\n".join(lines)
    if width >= 70:
        # The rules column is plain ASCII, counted from the right edge: its left border
        # stands where the header's does in every row, whatever script the tweet before
        # it is in (tmux gives a Devanagari vowel sign a cell, rich does not).
        rules = len(headers[0].rstrip().rsplit("┃", 2)[1])
        for line in rows:
            assert len(line.rstrip().rsplit("│", 2)[1]) == rules, "\n".join(lines)
    seqs = [int(line.split("│")[1]) for line in rows]
    assert seqs == sorted(set(seqs), reverse=True), "\n".join(lines)
    # What follows the table is blank: no stale copy of an older frame under it.
    end = next(i for i, line in enumerate(body) if line.startswith("└"))
    assert all(not line.strip() for line in body[end + 1 :]), "\n".join(lines)


# -- pipes, addresses, exit codes -----------------------------------------------------


@pytest.mark.parametrize("mode", ["--json", "--since=0"])
def test_output_into_a_closed_pipe_ends_quietly_with_0(
    multilingual: RelayProcess, mode: str
) -> None:
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m client_demo.cli {mode} {multilingual.url} "
         "| head -3; echo \"status=${PIPESTATUS[0]}\" >&2"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=20 * UNIT,
    )  # fmt: skip
    assert len(done.stdout.splitlines()) == 3
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    assert "status=0" in done.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://x", "http(s):// or ws(s)://"),
        ("http://no-such-host.invalid", "gave up after"),
        ("http://127.0.0.1:{closed}", "gave up after"),
    ],
)
def test_a_first_connection_that_cannot_succeed_is_one_line_and_exit_1(url: str, says: str) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    started = time.monotonic()
    done = _demo("--json", url.format(closed=closed))
    assert done.returncode == 1
    assert says in _one_line(done.stderr)
    assert done.stdout == ""
    assert time.monotonic() - started < 15 * UNIT


@pytest.fixture
def private_relay(start_relay: Callable[..., RelayServer]) -> RelayServer:
    relay = start_relay(secret=SECRET, public_channels=[])
    relay.push(*(stream_line(i, f"tweet {i}", tags=("cats",)) for i in range(1, 6)))
    relay.wait_seq(5)
    return relay


def _token(channels: list[str]) -> str:
    return issue_token(SECRET, subject="alice", channels=channels, ttl=600, now=time.time())


def test_no_token_and_a_refused_token_say_different_things(private_relay: RelayServer) -> None:
    none = _demo("--json", private_relay.url, env={"RELAY_DEMO_TOKEN": ""})
    assert none.returncode == 1
    assert "needs a token" in _one_line(none.stderr)
    bad = _demo("--json", "--token", "not-a-token", private_relay.url)
    assert bad.returncode == 1
    assert "refused the token" in _one_line(bad.stderr)


def test_the_token_can_come_from_the_environment(private_relay: RelayServer) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "client_demo.cli", "--json", "--since", "0", private_relay.url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RELAY_DEMO_TOKEN": _token(["tweets"])},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    with proc.stdout:
        try:
            lines = [proc.stdout.readline() for _ in range(5)]
            assert [line.count('"seq"') for line in lines] == [1] * 5
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("channel", "code"), [("nope", "unknown_channel"), ("rule:dogs", "forbidden")]
)
def test_an_unknown_or_forbidden_channel_is_one_line_and_exit_2(
    private_relay: RelayServer, channel: str, code: str
) -> None:
    done = _demo(
        "--json", "--channel", channel, "--token", _token(["rule:cats"]), private_relay.url
    )
    assert done.returncode == 2
    assert code in _one_line(done.stderr.replace("relay-demo: connected\n", ""))
    # It gives up with a normal close, not the 1011 (internal error) of a failing client.
    closes = private_relay.relay.metrics.closes
    wait_for(lambda: counted(closes, code="1000", by="client") == 1, UNIT, "the close")
    assert counted(closes, code="1011") == 0


def test_version() -> None:
    done = _demo("--version")
    assert done.returncode == 0 and re.fullmatch(r"relay-demo \S+\n", done.stdout)


@pytest.fixture
def expiring_relay(start_relay: Callable[..., RelayServer]) -> Callable[[float], RelayServer]:
    def start(grace: float) -> RelayServer:
        return start_relay(secret=SECRET, public_channels=[], refresh_grace=grace)

    return start


def test_refresh_required_runs_the_token_command_and_the_stream_goes_on(
    expiring_relay: Callable[[float], RelayServer], tmp_path: Path
) -> None:
    relay = expiring_relay(2 * UNIT)
    fresh = tmp_path / "token"
    fresh.write_text(_token(["tweets"]) + "\n")
    short = issue_token(SECRET, subject="alice", channels=["tweets"], ttl=1, now=time.time())
    proc = subprocess.Popen(
        [sys.executable, "-m", "client_demo.cli", "--json", "--token-command",
         f"cat {fresh}", relay.url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RELAY_DEMO_TOKEN": short},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    with proc.stdout, proc.stderr:
        try:
            seen: list[str] = []
            while "token refreshed" not in "".join(seen):
                seen.append(proc.stderr.readline())
                assert proc.poll() is None, seen
            # The stream goes on after the refresh, on the same connection.
            relay.push(stream_line(7, "after the refresh"))
            assert '"after the refresh"' in proc.stdout.readline()
        finally:
            proc.kill()
            proc.wait()


def test_without_a_token_command_an_expired_token_is_one_clear_exit(
    expiring_relay: Callable[[float], RelayServer],
) -> None:
    relay = expiring_relay(0.5)
    short = issue_token(SECRET, subject="alice", channels=["tweets"], ttl=1, now=time.time())
    done = _demo("--json", relay.url, env={"RELAY_DEMO_TOKEN": short})
    assert done.returncode == 1
    assert "token expired" in done.stderr.splitlines()[-1]
    assert "--token-command" in done.stderr.splitlines()[-1]


def test_the_view_drops_a_deleted_tweet_and_ignores_frames_it_does_not_know() -> None:
    from client_demo.stream import ResumingStream
    from client_demo.view import LiveView

    stream = ResumingStream("http://127.0.0.1:1", ["tweets"])
    view = LiveView()
    for seq in (1, 2):
        frame = {"type": "tweet", "channel": "tweets", "seq": seq, "tweet": {"id": str(seq)}}
        event = stream._read(frame)
        assert event is not None
        view.update(event)
    deleted = stream._read({"type": "deleted", "channel": "tweets", "id": "1", "seq": 1})
    assert deleted is not None and deleted.kind == "deleted"
    view.update(deleted)
    assert [row[0] for row in view.tweets] == [2]
    # The protocol grows by adding: a frame type or field it does not know is no error.
    assert stream._read({"type": "from_the_future", "channel": "tweets", "x": 1}) is None


def test_a_revoked_token_is_told_apart_from_an_expired_one(
    start_relay: Callable[..., RelayServer],
    tmp_path: Path,
) -> None:
    listing = tmp_path / "revoked.txt"
    listing.write_text("")
    relay = start_relay(
        secret=SECRET,
        public_channels=[],
        revoked_tokens_file=str(listing),
        revoked_tokens_interval=0.05,
    )
    relay.push(stream_line(1, "before the revocation"))
    relay.wait_seq(1)
    token = issue_token(
        SECRET, subject="alice", channels=["tweets"], ttl=600, now=time.time(), token_id="lost"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "client_demo.cli", "--json", "--since", "0", relay.url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RELAY_DEMO_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert '"before the revocation"' in proc.stdout.readline()
        listing.write_text("lost\n")
        _, err = proc.communicate(timeout=10 * UNIT)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1
    last = err.splitlines()[-1]
    assert "revoked" in last, err
    assert "expired" not in last and "--token-command" not in last, err


# -- what goes down a pipe ------------------------------------------------------------

PIPED = [
    *TEXTS,
    "at work 👩🏽‍💻 and 🏳️‍🌈, ZWNJ in می‌خواهم",  # joiners and variation selectors
    "escapes \x1b[31mred\x1b[0m, C1 \x9b2J, NEL\x85here, DEL\x7f, LS\u2028PS\u2029end",
]


@pytest.fixture
def pushed_relay(start_relay: Callable[..., RelayServer]) -> RelayServer:
    return start_relay()


def _piped(text: str) -> str:
    """The rule for piped text, stated again: line breaks and tabs are spaces, every other
    C0 or C1 control character goes, everything else stays."""
    spaced = re.sub("[\n\r\t\v\f\x1c-\x1e\x85\u2028\u2029]", " ", text)
    return re.sub("[\x00-\x1f\x7f-\x9f]", "", spaced)


def _lines_of(proc: subprocess.Popen[bytes], count: int) -> list[bytes]:
    assert proc.stdout is not None
    return [proc.stdout.readline() for _ in range(count)]


@contextlib.contextmanager
def _demo_process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``relay-demo`` with its output and errors on pipes; killed (if still running) and
    its pipes closed at the end of the block."""
    with subprocess.Popen(
        [sys.executable, "-m", "client_demo.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        try:
            yield proc
        finally:
            proc.kill()


def test_piped_lines_keep_every_character_but_line_breaks_and_controls(
    pushed_relay: RelayServer,
) -> None:
    relay = pushed_relay
    relay.push(*(stream_line(i + 1, text, author=f"a{i}") for i, text in enumerate(PIPED)))
    relay.wait_seq(len(PIPED))
    with _demo_process("--since", "0", relay.url) as proc:
        lines = [line.decode() for line in _lines_of(proc, len(PIPED))]
    expected = [f"{i + 1}  @user_a{i}  {_piped(text)}\n" for i, text in enumerate(PIPED)]
    assert lines == expected
    assert "👩🏽\u200d💻" in lines[-2] and "👨\u200d👩\u200d👧\u200d👦" in lines[4]
    assert "\u202eRTL override\u202c" in lines[6]  # a bidi override is a character, kept
    assert "\x1b" not in lines[-1] and "[31mred" in lines[-1] and "NEL here" in lines[-1]


def test_json_writes_each_tweet_object_as_the_relay_sent_it(
    pushed_relay: RelayServer,
) -> None:
    relay = pushed_relay
    relay.push(*(stream_line(i + 1, text, author=f"a{i}") for i, text in enumerate(PIPED)))
    relay.wait_seq(len(PIPED))
    assert relay.relay.hub is not None
    ws, _ = subscribe(relay.ws_url, since={"epoch": relay.relay.hub.epoch, "seq": 0})
    sent: list[bytes] = []
    with ws:
        while len(sent) < len(PIPED):
            frame = ws.recv(timeout=UNIT, decode=False)
            if frame.startswith(b'{"type":"tweet"'):
                sent.append(frame[frame.index(b',"tweet":') + len(b',"tweet":') : -1] + b"\n")
    with _demo_process("--json", "--since", "0", relay.url) as proc:
        assert _lines_of(proc, len(PIPED)) == sent


@pytest.fixture
def other_relay() -> Iterator[str]:
    """A relay of another make: the same protocol, its JSON written with spaces, escapes
    and number forms this relay never uses. A real WebSocket server on a free port."""
    from websockets.datastructures import Headers
    from websockets.http11 import Response
    from websockets.sync.server import ServerConnection, serve

    def process_request(connection: ServerConnection, request: Any) -> Response | None:
        if request.path != "/v1/info":
            return None
        port = connection.local_address[1]
        body = (
            b'{"stream_url": "ws://127.0.0.1:%d/v1/stream", "epoch": "e1", "channels": []}' % port
        )
        headers = Headers(
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return Response(200, "OK", headers, body)

    def handler(connection: ServerConnection) -> None:
        connection.recv()  # the subscribe
        connection.send('{"type": "subscribed", "channel": "tweets", "epoch": "e1", '
                        '"seq": 0, "recovered": 1}')  # fmt: skip
        connection.send(OTHER_FRAME)
        with contextlib.suppress(Exception):
            connection.recv()  # until the client goes

    with serve(handler, "127.0.0.1", 0, process_request=process_request) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.socket.getsockname()[1]}"
        server.shutdown()
        thread.join(UNIT)


OTHER_TWEET = '{ "id" : "7", "text": "caf\\u00e9 \\/ 👩🏽‍💻", "n": 1.50, "big": 1E3 }'
OTHER_FRAME = '{"type": "tweet", "channel": "tweets", "seq": 1, "tweet": ' + OTHER_TWEET + "}"


def test_json_passes_the_tweet_through_byte_for_byte_whatever_its_encoding(
    other_relay: str,
) -> None:
    with _demo_process("--json", other_relay) as proc:
        assert _lines_of(proc, 1) == [OTHER_TWEET.encode() + b"\n"]


@pytest.mark.parametrize("mode", ["--json", "--since=0"])
def test_a_reader_that_goes_away_ends_it_even_when_no_tweet_comes(
    pushed_relay: RelayServer, mode: str
) -> None:
    relay = pushed_relay
    relay.push(*(stream_line(i, f"tweet {i}") for i in range(1, 4)))
    relay.wait_seq(3)
    with _demo_process(mode, "--since", "0", relay.url) as proc:
        assert all(b"tweet " in line for line in _lines_of(proc, 3))
        assert proc.stdout is not None
        proc.stdout.close()  # the reader goes; no tweet comes after it
        assert proc.wait(timeout=3 * UNIT) == 0
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
    # It closed the connection as a client that is done does: 1000.
    wait_for(
        lambda: counted(relay.relay.metrics.closes, code="1000", by="client") == 1,
        UNIT,
        "the close",
    )


def test_since_past_the_newest_tweet_says_so_and_goes_on_live(
    pushed_relay: RelayServer,
) -> None:
    relay = pushed_relay
    relay.push(*(stream_line(i, f"tweet {i}") for i in range(1, 6)))
    relay.wait_seq(5)
    with _demo_process("--json", "--since", "1000", relay.url) as proc:
        assert proc.stderr is not None
        said: list[str] = []
        while not any("subscribed" in line for line in said):
            said.append(proc.stderr.readline().decode())
            assert said[-1], said  # not the end of its output
        relay.push(stream_line(6, "after"))
        assert b'"after"' in _lines_of(proc, 1)[0]  # live from the head, not from seq 1000
    reset = [line for line in said if "1000" in line]
    assert reset == ["relay-demo: --since 1000 is past the relay's newest tweet (seq 5): "
                     "showing new tweets from here\n"], said  # fmt: skip
    assert not any("store changed" in line for line in said), said
