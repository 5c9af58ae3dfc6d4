"""Log output: one line an event off a terminal, JSON for a drain, secrets never shown."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from relay.errors import ConfigError
from relay.logs import REDACTED, QueueFront, setup_logging
from tests.fake_x import TOKEN, FakeX, x_lines
from tests.support import (
    UNIT,
    PushSource,
    RelayProcess,
    RunningRelay,
    counted,
    receive_tweets,
    stream_line,
    subscribe,
    wait_for,
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
    pushed: tuple[RunningRelay, PushSource], caplog: pytest.LogCaptureFixture
) -> None:
    relay, source = pushed
    source.push(stream_line(1))
    relay.wait_stored(1)
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
    assert lines[1].__dict__["bytes"] > 0 and first["duration_ms"] >= 0
    assert first["client"] == "127.0.0.1"
    assert "abc.def.ghi" not in caplog.text


def test_every_websocket_connection_gets_an_access_line_and_its_close_is_counted(
    pushed: tuple[RunningRelay, PushSource], caplog: pytest.LogCaptureFixture
) -> None:
    relay, source = pushed
    caplog.set_level(logging.INFO, logger="relay.access")
    ws, _ = subscribe(relay.ws_url, "tweets")
    source.push(stream_line(1), stream_line(2))
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
