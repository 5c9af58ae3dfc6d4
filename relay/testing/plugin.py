"""The pytest plugin of :mod:`relay.testing`, found through the ``pytest11`` entry point.

Fixtures:

- ``relay_server``: a started :class:`~relay.testing.RelayServer`, configured by
  ``@pytest.mark.relay(replay="tests/data/cats.jsonl", speed="max", ...)`` (any
  ``RelayServer`` argument; a relative ``replay`` is looked up from the working
  directory, the test file's directory, then the rootdir; ``replay="sample"`` is the
  bundled sample). Stopped after the test.
- ``relay_server_factory``: ``relay_server_factory(replay, **options)`` starts more.
- ``relay_client``: a :class:`~relay.testing.RelayClient` connected to ``relay_server``.
- ``relay_client_factory``: ``relay_client_factory(token=..., server=...)`` for more.
- ``fake_x_api``: a :class:`~relay.testing.FakeXApi`; ``@pytest.mark.fake_x_api(
  recording="...")`` serves a recording on its first stream connection.

Only this module of :mod:`relay.testing` imports pytest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.testing.client import RelayClient
from relay.testing.fake_x import FakeXApi
from relay.testing.server import RelayServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "relay(replay=None, speed='max', **options): how the relay_server fixture starts "
        "(any relay.testing.RelayServer argument)",
    )
    config.addinivalue_line(
        "markers", "fake_x_api(recording=None, token=...): how the fake_x_api fixture starts"
    )


def _find(request: pytest.FixtureRequest, name: str | Path) -> Path:
    """A recording named by a test: absolute, or relative to the working directory, the
    test file's directory or the rootdir; ``"sample"`` is the bundled sample."""
    if str(name) == "sample":
        from relay.sources.synth import sample_path

        return Path(sample_path())
    path = Path(name)
    candidates = [path, request.path.parent / path, request.config.rootpath / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise pytest.UsageError(
        f"recording {name} not found (looked in {', '.join(map(str, candidates))})"
    )


@pytest.fixture
def relay_server_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., RelayServer]]:
    started: list[RelayServer] = []

    def start(replay: str | Path | None = None, **options: Any) -> RelayServer:
        server = RelayServer(_find(request, replay) if replay is not None else None, **options)
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def relay_server(
    request: pytest.FixtureRequest, relay_server_factory: Callable[..., RelayServer]
) -> RelayServer:
    marker = request.node.get_closest_marker("relay")
    args: tuple[Any, ...] = marker.args if marker is not None else ()
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    if args:
        options.setdefault("replay", args[0])
    return relay_server_factory(**options)


@pytest.fixture
def relay_client_factory(
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., RelayClient]]:
    opened: list[RelayClient] = []

    def connect(server: RelayServer | None = None, **options: Any) -> RelayClient:
        target = server or request.getfixturevalue("relay_server")
        client = RelayClient(target.ws_url, **options)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


@pytest.fixture
def relay_client(relay_client_factory: Callable[..., RelayClient]) -> RelayClient:
    return relay_client_factory()


@pytest.fixture
def fake_x_api(request: pytest.FixtureRequest) -> Iterator[FakeXApi]:
    marker = request.node.get_closest_marker("fake_x_api")
    options: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    recording = options.pop("recording", None)
    fake = (
        FakeXApi.from_recording(_find(request, recording), **options)
        if recording is not None
        else FakeXApi(**options)
    )
    yield fake
    fake.stop()
