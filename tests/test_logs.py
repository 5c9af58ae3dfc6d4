"""Log output: one line an event off a terminal, JSON for a drain, secrets never shown."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest

from relay.config import Settings
from relay.errors import ConfigError
from relay.obs.logs import REDACTED, QueueFront, resolve_timestamps, setup_logging
from relay.testing import RelayServer
from tests.fake_x import TOKEN, FakeX, x_lines
from tests.support import (
    ROOT,
    UNIT,
    RelayProcess,
    counted,
    receive_tweets,
    stream_line,
    subscribe,
    wait_for,
    ws_connect,
)

SECRET = "s" * 40


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def emit(fmt: str) -> list[str]:
    out = io.StringIO()
    assert setup_logging("info", fmt, secrets=[SECRET], stream=out) in ("plain", "json")
    log = logging.getLogger("relay.test")
    log.info("closing %s:\nslow", "1.2.3.4:5", extra={"peer": "1.2.3.4:5", "code": 4008})
    try:
        raise ValueError("multi\nline")
    except ValueError:
        log.exception("it failed")
    log.debug("not at info")
    log.warning("token %s leaked", SECRET)
    return out.getvalue().splitlines()


@pytest.mark.usefixtures("restore_logging")
def test_off_a_terminal_auto_is_one_plain_line_an_event_with_its_fields() -> None:
    lines = emit("auto")  # a StringIO is not a terminal
    assert len(lines) == 3
    first, failure, leak = lines
    assert " INFO relay.test: closing 1.2.3.4:5:\\nslow " in first
    assert first.endswith("peer=1.2.3.4:5 code=4008")
    assert " ERROR " in failure and "exc=" in failure and "ValueError: multi\\nline" in failure
    assert SECRET not in leak and REDACTED in leak


@pytest.mark.usefixtures("restore_logging")
def test_json_is_one_object_a_line_with_time_level_logger_message_and_fields() -> None:
    events = [orjson.loads(line) for line in emit("json")]
    assert [e["level"] for e in events] == ["info", "error", "warning"]
    assert events[0]["logger"] == "relay.test"
    assert events[0]["message"] == "closing 1.2.3.4:5:\nslow"
    assert (events[0]["peer"], events[0]["code"]) == ("1.2.3.4:5", 4008)
    assert events[0]["time"].endswith("Z")
    assert "ValueError: multi" in events[1]["exc"]
    assert SECRET not in events[2]["message"]


HOSTILE = "\x1b[31mred\x1b[2J\x1b]0;pwned\x07\r\x9b1m\x7f\u2028\u202eevil"
A_JWT = jwt.encode({"sub": "alice", "exp": 2_000_000_000}, SECRET, "HS256")


def emit_hostile(fmt: str, **options: Any) -> str:
    out = io.StringIO()
    setup_logging("info", fmt, stream=out, **options)
    log = logging.getLogger("relay.test")
    log.info(
        "refused %s: %s",
        HOSTILE,
        A_JWT[:64],
        extra={"path": "/v1/stream/" + A_JWT, "list": [HOSTILE, {HOSTILE: A_JWT}], "n": 3},
    )
    try:
        raise ValueError(f"{HOSTILE} {A_JWT}")
    except ValueError:
        log.exception("failed with %s", "/x?token%3D" + A_JWT)
    return out.getvalue()


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["plain", "json", "rich"])
def test_control_characters_are_escapes_and_jwts_are_redacted_in_every_field_of_every_format(
    fmt: str,
) -> None:
    text = emit_hostile(fmt)
    lines = text.splitlines()
    for char in "\x1b\x07\r\x9b\x7f\u2028\u202e":
        assert char not in text, (char, text)
    assert "eyJ" not in text and REDACTED in text
    shown = "\\x1b[31mred\\x1b[2J\\x1b]0;pwned\\x07\\r\\x9b1m\\x7f\\u2028\\u202eevil"
    if fmt == "plain":
        assert shown in text
        assert len(lines) == 2  # one line an event, the traceback's included
        assert " path=/v1/stream/[redacted] " in lines[0]
    if fmt == "json":
        first, failure = (orjson.loads(line) for line in lines)
        assert first["message"] == f"refused {shown}: {REDACTED}"
        assert first["path"] == "/v1/stream/[redacted]" and first["n"] == 3
        assert first["list"][0].startswith("\\x1b[31m")
        assert "ValueError: \\x1b[31m" in failure["exc"] and "Traceback" in failure["exc"]
    if fmt == "rich":  # rich wraps at its width; the traceback is shown, on its own lines
        words = " ".join(text.split())
        assert "refused \\x1b[31mred\\x1b[2J" in words and "ValueError: \\x1b[31m" in words


@pytest.mark.usefixtures("restore_logging")
def test_without_timestamps_a_line_carries_only_the_platforms() -> None:
    plain = emit_hostile("plain", timestamps=False)
    assert plain.startswith("INFO relay.test: refused ")
    first = orjson.loads(emit_hostile("json", timestamps=False).splitlines()[0])
    assert "time" not in first and first["level"] == "info"
    assert orjson.loads(emit_hostile("json").splitlines()[0])["time"].endswith("Z")


@pytest.mark.parametrize(
    ("choice", "environ", "stamped"),
    [
        ("auto", {}, True),
        ("auto", {"DYNO": "web.1"}, False),
        ("auto", {"DYNO": ""}, True),
        ("on", {"DYNO": "web.1"}, True),
        ("OFF", {}, False),
    ],
)
def test_log_timestamps_auto_leaves_them_to_a_platform_that_stamps_lines(
    choice: str, environ: dict[str, str], stamped: bool
) -> None:
    assert resolve_timestamps(choice, environ) is stamped


def test_a_bad_log_timestamps_choice_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"RELAY_LOG_TIMESTAMPS.*auto, on, off"):
        Settings.load(environ={"RELAY_LOG_TIMESTAMPS": "sometimes"})


@pytest.mark.usefixtures("restore_logging")
def test_a_line_whose_output_has_closed_is_dropped_without_a_logging_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    setup_logging("info", "plain", stream=out)
    out.close()
    logging.getLogger("relay.test").warning("nobody reads this")
    assert "Logging error" not in capsys.readouterr().err


LATE_TEST = """
import atexit, logging
from relay.obs.logs import setup_logging

def test_a_relay_that_logs_after_the_session():
    setup_logging("info", "plain", background=True)
    logging.getLogger("relay.test").info("during the test")
    # Runs after pytest closed its capture, before the log thread's own exit handler.
    atexit.register(lambda: logging.getLogger("relay.test").warning("after the session"))
"""


def test_the_log_thread_outliving_pytests_capture_prints_no_logging_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "test_late.py").write_text(LATE_TEST)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:relay_testing"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Logging error" not in result.stderr and "closed file" not in result.stderr
    assert "WARNING relay.test: after the session" in result.stderr  # where stderr is now


@pytest.mark.usefixtures("restore_logging")
def test_a_bad_level_or_format_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="debug, info, warning, error, critical"):
        setup_logging("loud", "plain", stream=io.StringIO())
    with pytest.raises(ConfigError, match="auto, plain, json"):
        setup_logging("info", "xml", stream=io.StringIO())


def test_the_bearer_token_never_reaches_the_log_even_at_debug(
    tmp_path: Path, fake: FakeX, rules_file: Path
) -> None:
    messages = [orjson.loads(line) for line in x_lines(5, seed=3)]
    fake.search = {"python": messages}
    log = tmp_path / "relay.log"
    env = {
        "X_BEARER_TOKEN": TOKEN,
        "X_API_BASE_URL": fake.url,
        "RELAY_RULES": str(rules_file),
        "RELAY_LOG_FORMAT": "json",
    }
    relay = RelayProcess(
        log, "--source", "x-poll", "--log-level", "debug", "--db", str(tmp_path / "x.db"), env=env
    )
    try:
        wait_for(lambda: relay.count() == 5, 8 * UNIT, "the polled tweets")
    finally:
        assert relay.stop() == 0
    events = [orjson.loads(line) for line in log.read_text().splitlines()]
    requests = [e for e in events if e["message"].startswith("Making API request")]
    assert requests, "tweepy's debug line is the one that carried the token"
    assert all(f"Bearer {REDACTED}" in e["message"] for e in requests)
    assert TOKEN not in log.read_text()


def test_every_http_request_gets_an_access_line_without_its_token(
    pushed: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    relay = pushed
    relay.push(stream_line(1))
    relay.wait_seq(1)
    caplog.set_level(logging.INFO, logger="relay.access")
    assert relay.get("/v1/objects/tweets?limit=1&token=abc.def.ghi")[0] == 401  # bad token
    assert relay.get("/v1/objects/tweets?limit=1")[0] == 200
    assert relay.get("/nope")[0] == 404
    lines = [r for r in caplog.records if r.name == "relay.access"]
    assert [(r.__dict__["method"], r.__dict__["status"]) for r in lines] == [
        ("GET", 401),
        ("GET", 200),
        ("GET", 404),
    ]
    first = lines[0].__dict__
    assert first["path"] == "/v1/objects/tweets?limit=1&token=[redacted]"
    assert first["reason"] == "this relay accepts no tokens (RELAY_SECRET is not set)"
    assert lines[1].__dict__["bytes"] > 0 and first["duration_ms"] >= 0
    assert first["client"] == "127.0.0.1"
    assert "reason" not in lines[1].__dict__
    # The fields say it all; the message only names the kind of line.
    assert {line.getMessage() for line in lines} == {"request"}
    assert "abc.def.ghi" not in caplog.text


def _status(url: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=UNIT):
            return 200
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def test_probes_scrapes_and_info_polls_are_access_logged_at_debug_unless_they_fail(
    pushed: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    relay = pushed
    caplog.set_level(logging.DEBUG, logger="relay.access")
    polled = ["/healthz", "/readyz", "/v1/info", "/metrics", "/v1/info?x=1"]
    assert [_status(relay.url + path) for path in polled] == [200] * len(polled)
    assert _status(relay.url + "/healthz", "HEAD") == 200
    assert _status(relay.url + "/healthz", "POST") == 405
    assert _status(relay.url + "/v1/objects/tweets?limit=1") == 200
    lines = [(r.levelno, r.__dict__["path"]) for r in caplog.records if r.name == "relay.access"]
    assert lines == [
        *[(logging.DEBUG, path) for path in polled],
        (logging.DEBUG, "/healthz"),
        (logging.INFO, "/healthz"),  # a failed probe is worth reading
        (logging.INFO, "/v1/objects/tweets?limit=1"),
    ]


def test_every_websocket_connection_gets_an_access_line_and_its_close_is_counted(
    pushed: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    relay = pushed
    caplog.set_level(logging.INFO, logger="relay.access")
    ws, _ = subscribe(relay.ws_url, "tweets")
    relay.push(stream_line(1), stream_line(2))
    assert len(receive_tweets(ws, 2)) == 2
    ws.close(1000)
    # A client that closes with another code, and a server close: each counted by code.
    other, _ = subscribe(relay.ws_url, "tweets")
    other.close(4321)
    wait_for(
        lambda: len([r for r in caplog.records if r.name == "relay.access"]) == 2,
        UNIT,
        "two access lines",
    )
    first, second = (r.__dict__ for r in caplog.records if r.name == "relay.access")
    assert first["message"] == "websocket"
    assert (first["method"], first["path"], first["status"]) == ("WS", "/v1/stream", 1000)
    assert first["closed_by"] == "client" and first["last_seq"] == 2
    assert first["bytes"] > 0 and first["duration_ms"] > 0 and first["client"] == "127.0.0.1"
    assert second["status"] == 4321 and second["last_seq"] == 0
    metrics = relay.relay.metrics
    assert counted(metrics.closes, code="1000", by="client") == 1
    assert counted(metrics.closes, code="4321", by="client") == 1


class BlockedHandler(logging.Handler):
    """An output that does not take anything until released (a stuck log drain)."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.released.wait(4 * UNIT)
        self.lines.append(record.getMessage())


def test_a_stuck_log_output_never_blocks_the_caller_and_drops_are_counted() -> None:
    output = BlockedHandler()
    front = QueueFront(output, size=5)
    log = logging.getLogger("relay.test.queue")
    log.addHandler(front)
    log.propagate = False
    try:
        started = time.monotonic()
        for n in range(50):
            log.warning("line %d", n)
        assert time.monotonic() - started < UNIT  # nothing waited for the stuck output
        assert front.dropped > 0
        output.released.set()
        wait_for(front.queue.empty, UNIT, "the writer to catch up")
        log.warning("after")
    finally:
        front.close()
        log.removeHandler(front)
        log.propagate = True
    assert output.lines[0] == "line 0"
    assert any("log records dropped" in line for line in output.lines)
    assert output.lines[-1] == "after"
    assert len(output.lines) < 50


def test_a_relays_plain_log_shows_no_terminal_escape_and_no_token_whatever_clients_send(
    tmp_path: Path,
) -> None:
    secret = "a-test-secret-that-is-long-enough-for-hs256"
    env = {"RELAY_LOG_FORMAT": "plain", "RELAY_SECRET": secret, "DYNO": "web.1"}
    relay = RelayProcess(tmp_path / "relay.log", "--db", str(tmp_path / "r.db"), env=env)
    a_jwt = jwt.encode({"sub": "alice", "exp": time.time() + 600}, secret, "HS256")
    crit = jwt.encode({"sub": "x"}, "k" * 32, "HS256", headers={"crit": ["\x1b]0;pwned\x07"]})
    try:
        assert _status(f"{relay.url}/v1/stream/{a_jwt}") == 404  # the token as a path
        request = urllib.request.Request(
            relay.url + "/v1/objects/tweets", headers={"Authorization": f"Bearer {crit}"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=UNIT)
        refused.value.close()
        assert refused.value.code == 401  # its reason quotes the escape from the header
        with socket.create_connection(("127.0.0.1", relay.port), timeout=UNIT) as sock:
            sock.sendall(b"GET /\x1b[31mred\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
        ws = ws_connect(relay.ws_url)  # the bundled sample is public
        ws.send(orjson.dumps({"op": "subscribe", "channel": a_jwt}).decode())
        assert orjson.loads(ws.recv(timeout=UNIT))["type"] == "error"
        ws.close()
    finally:
        assert relay.stop() == 0
    text = (tmp_path / "relay.log").read_text()
    assert "\x1b" not in text and "\x07" not in text
    assert a_jwt[:20] not in text and crit[:20] not in text and "eyJ" not in text
    lines = text.splitlines()
    assert all(line.startswith(("INFO ", "WARNING ", "DEBUG ")) for line in lines), lines[0]
    access = [line for line in lines if line.startswith("INFO relay.access: request ")]
    assert any("path=/v1/stream/[redacted] status=404" in line for line in access), access
    assert any(
        "status=401" in line and "Unsupported critical extension: \\x1b]0;pwned\\x07" in line
        for line in access
    ), access
    assert any('path="/\\x1b[31mred\\x1b[2J" status=400' in line for line in access), access
    assert any("refused a frame" in line and REDACTED in line for line in lines)
