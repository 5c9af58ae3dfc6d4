"""Pages on other origins: CORS headers by RELAY_CORS_ORIGINS, preflights answered."""

from __future__ import annotations

import http.client
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.config import Settings
from relay.errors import ConfigError
from relay.sources.synth import write_stream
from relay.testing import RelayServer
from relay.web.cors import ALLOWED_HEADERS, CrossOrigin

PAGE = "https://wall.example.org"


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "stream.jsonl"
    write_stream(path, 20, seed=5)
    return path


def ask(
    relay: RelayServer, method: str, path: str, **headers: str
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request on its own connection, the headers as sent (no library adds any)."""
    connection = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=5)
    try:
        connection.request(
            method, path, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_by_default_any_origin_reads_the_object_api(
    recording: Path, start_relay: Callable[..., RelayServer]
) -> None:
    relay = start_relay(replay=recording)
    relay.wait_seq(20)
    status, headers, _ = ask(relay, "GET", "/v1/objects/tweets?limit=5", Origin=PAGE)
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "ETag" in headers["Access-Control-Expose-Headers"]
    # A refusal carries them too, so the page can read why.
    status, headers, _ = ask(relay, "GET", "/v1/objects/tweets?limit=x", Origin=PAGE)
    assert status == 400 and headers["Access-Control-Allow-Origin"] == "*"


def test_a_preflight_says_what_a_page_may_send(
    recording: Path, start_relay: Callable[..., RelayServer], caplog: pytest.LogCaptureFixture
) -> None:
    relay = start_relay(replay=recording, access_log=True)
    with caplog.at_level(logging.INFO, logger="relay.access"):
        status, headers, body = ask(
            relay,
            "OPTIONS",
            "/v1/events?channel=tweets&token=secret-value",
            Origin=PAGE,
            Access_Control_Request_Method="GET",
            Access_Control_Request_Headers="authorization, last-event-id",
        )
    assert (status, body) == (204, b"")
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
    allowed = {name.strip().lower() for name in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "last-event-id"} <= allowed
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert headers["Allow"] == "GET, HEAD, OPTIONS"
    # Logged like any request, the token hidden.
    lines = [r for r in caplog.records if getattr(r, "method", "") == "OPTIONS"]
    assert lines and lines[0].status == 204  # type: ignore[attr-defined]
    assert "secret-value" not in lines[0].path  # type: ignore[attr-defined]
    # The object API's paths are preflighted the same way, the stream's too.
    for path in ("/v1/objects/tweets?q=x", "/v1/info", "/v1/stream"):
        assert ask(relay, "OPTIONS", path, Origin=PAGE)[0] == 204
    assert 'route="preflight"' in ask(relay, "GET", "/metrics")[2].decode()


def test_a_list_of_origins_allows_those_only(
    recording: Path, start_relay: Callable[..., RelayServer]
) -> None:
    relay = start_relay(replay=recording, cors_origins=(PAGE, "http://localhost:3000"))
    relay.wait_seq(20)
    status, headers, _ = ask(relay, "GET", "/v1/objects/tweets?limit=50", Origin=PAGE)
    assert status == 200
    assert headers["Access-Control-Allow-Origin"] == PAGE
    assert "Origin" in headers["Vary"]
    # Another origin: no permission (the browser refuses the page), the answer still varies.
    status, headers, _ = ask(relay, "GET", "/v1/info", Origin="https://evil.example")
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    assert "Origin" in headers["Vary"]
    status, headers, _ = ask(
        relay,
        "OPTIONS",
        "/v1/objects/tweets",
        Origin="https://evil.example",
        Access_Control_Request_Method="GET",
    )
    assert status == 204
    assert "Access-Control-Allow-Origin" not in headers
    assert "Access-Control-Allow-Headers" not in headers
    status, headers, _ = ask(relay, "OPTIONS", "/v1/objects/tweets", Origin=PAGE)
    assert headers["Access-Control-Allow-Origin"] == PAGE
    assert headers["Access-Control-Allow-Headers"] == ALLOWED_HEADERS


def test_empty_allows_no_other_origin(
    recording: Path, start_relay: Callable[..., RelayServer]
) -> None:
    relay = start_relay(replay=recording, cors_origins=())
    status, headers, _ = ask(relay, "GET", "/v1/info", Origin=PAGE)
    assert status == 200
    assert not [name for name in headers if name.lower().startswith("access-control-")]


@pytest.mark.parametrize(
    ("value", "origins"),
    [
        ("*", ("*",)),
        ("", ()),
        (
            "https://a.example, http://b.example:8080/",
            ("https://a.example", "http://b.example:8080"),
        ),
    ],
)
def test_the_setting_reads_origins(value: str, origins: tuple[str, ...]) -> None:
    settings = Settings.load(environ={"RELAY_CORS_ORIGINS": value})
    assert settings.cors_origins == origins


@pytest.mark.parametrize(
    "value",
    ["wall.example.org", "https://a.example/page", "ftp://a.example", "*, https://a.example"],
)
def test_a_bad_origin_is_refused_with_its_reason(value: str) -> None:
    with pytest.raises(ConfigError, match=r"origin|'\*'"):
        Settings.load(environ={"RELAY_CORS_ORIGINS": value})


def test_cross_origin_is_pure() -> None:
    cors = CrossOrigin(("https://a.example",))
    assert cors.headers(None) == [("Vary", "Origin")]
    assert dict(cors.headers("https://a.example"))["Access-Control-Allow-Origin"] == (
        "https://a.example"
    )
    assert cors.preflight({})[0] == 204
