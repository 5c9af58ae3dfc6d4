from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from relay.config import Settings  # noqa: E402
from relay.testing import RelayServer  # noqa: E402
from tests.fake_x import RULES_TOML, TOKEN, FakeTime, FakeX  # noqa: E402
from tests.support import RelayProcess  # noqa: E402

pytest_plugins = [
    "tests.pg_server",  # pg_server, pg_url, make_store: a real PostgreSQL
    "tests.redis_server",  # redis_server, make_redis_server: a real redis-server
    "tests.s3_server",  # s3_server, make_s3_server: a real S3-compatible server (moto)
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


AS_DEPLOYED: dict[str, Any] = {
    "batch_size": Settings().batch_size,
    "send_buffer": Settings().send_buffer,
    "epoch": None,
    "clock": time.time,
}
"""What the project's tests change of a RelayServer's deterministic defaults: the relay
under test runs as deployed (batches, the send buffer, a random epoch, the wall clock)."""


@pytest.fixture
def start_relay(
    relay_server_factory: Callable[..., RelayServer], tmp_path: Path
) -> Callable[..., RelayServer]:
    """Start a RelayServer (any of its arguments), as deployed, on ``tmp_path/relay.db``;
    stopped after the test."""

    def start(replay: str | Path | None = None, **options: Any) -> RelayServer:
        defaults = {**AS_DEPLOYED, "store": tmp_path / "relay.db"}
        return relay_server_factory(replay, **{**defaults, **options})

    return start


@pytest.fixture
def pushed(start_relay: Callable[..., RelayServer]) -> RelayServer:
    """A relay whose source the test feeds line by line (``push``)."""
    return start_relay(send_buffer=256 * 1024)


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
    rules_file: Path, fake: FakeX, start_relay: Callable[..., RelayServer]
) -> Callable[..., RelayServer]:
    """Start a relay on a live X source pointed at ``fake``; waits use a FakeTime."""

    def start(source: str = "x-stream", time: FakeTime | None = None, **values: Any) -> RelayServer:
        time = time or FakeTime()
        base = {
            "x_bearer_token": TOKEN,
            "x_api_base_url": fake.url,
            "rules_file": str(rules_file),
            "stall_timeout": 0.5,
            "source": source,
        }
        return start_relay(**{**base, **values}, wall_clock=time.clock, sleep=time.sleep)

    return start
