from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relay.config import Settings  # noqa: E402
from tests.fake_x import RULES_TOML, TOKEN, FakeTime, FakeX  # noqa: E402
from tests.support import PushSource, RelayProcess, RunningRelay  # noqa: E402

pytest_plugins = [
    "tests.pg_server",  # pg_server, pg_url, make_store: a real PostgreSQL
    "tests.redis_server",  # redis_server, make_redis_server: a real redis-server
]

CAPTURES = Path(os.environ.get("RELAY_CAPTURES") or ROOT.parent / "shared" / "data" / "twarc-csv")
"""The real X API captures; ``RELAY_CAPTURES`` points elsewhere (a worktree, a CI cache)."""


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**values: Any) -> Settings:
        base: dict[str, Any] = {"port": 0, "db": str(tmp_path / "relay.db"), "speed": "max"}
        base.update(values)
        return Settings.from_mapping(base)

    return make


@pytest.fixture
def start_relay() -> Iterator[Callable[..., RunningRelay]]:
    started: list[RunningRelay] = []

    def start(settings: Settings, source: Any = None, **relay_args: Any) -> RunningRelay:
        relay = RunningRelay(settings, source, **relay_args)
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def pushed(
    make_settings: Callable[..., Settings], start_relay: Callable[..., RunningRelay]
) -> tuple[RunningRelay, PushSource]:
    """A relay whose source the test feeds line by line."""
    source = PushSource()
    return start_relay(make_settings(send_buffer=256 * 1024), source), source


@pytest.fixture
def captures() -> Path:
    if not CAPTURES.is_dir():
        message = f"real X API captures not found at ../shared/data/twarc-csv ({CAPTURES})"
        if os.environ.get("CI") == "true":  # CI must run these tests, never skip them quietly
            pytest.fail(message + "; set RELAY_CAPTURES", pytrace=False)
        pytest.skip(message)
    return CAPTURES


@pytest.fixture
def processes() -> Iterator[list[RelayProcess]]:
    """Relay subprocesses a test starts; any still running at the end are killed."""
    started: list[RelayProcess] = []
    yield started
    for relay in started:
        relay.close()


@pytest.fixture
def fake() -> Iterator[FakeX]:
    """A fake X API on loopback."""
    server = FakeX()
    yield server
    server.stop()


@pytest.fixture
def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(RULES_TOML)
    return path


@pytest.fixture
def x_relay(
    rules_file: Path,
    fake: FakeX,
    make_settings: Callable[..., Settings],
    start_relay: Callable[..., RunningRelay],
) -> Callable[..., RunningRelay]:
    """Start a relay on a live X source pointed at ``fake``; waits use a FakeTime."""

    def start(
        source: str = "x-stream", time: FakeTime | None = None, **values: Any
    ) -> RunningRelay:
        time = time or FakeTime()
        base = {
            "x_bearer_token": TOKEN,
            "x_api_base_url": fake.url,
            "rules_file": str(rules_file),
            "stall_timeout": 0.5,
            "source": source,
        }
        settings = make_settings(**{**base, **values})
        return start_relay(settings, clock=time.clock, sleep=time.sleep)

    return start
