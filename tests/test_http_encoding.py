"""Answers as browsers and HTTP clients expect them: gzip, ETags, a favicon."""

from __future__ import annotations

import gzip
import urllib.request
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from relay.sources.synth import write_stream
from relay.testing import RelayServer
from relay.web.encoding import accepts_gzip


@pytest.fixture
def relay(tmp_path: Path, start_relay: Callable[..., RelayServer]) -> RelayServer:
    path = tmp_path / "stream.jsonl"
    write_stream(path, 50, seed=3)
    running = start_relay(replay=path)
    running.wait_seq(50)
    return running


def fetch(
    relay: RelayServer, path: str, method: str = "GET", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(relay.url + path, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_object_api_answers_over_1_kb_are_gzipped_when_the_client_accepts_it(
    relay: RelayServer,
) -> None:
    status, plain_headers, plain = fetch(relay, "/v1/objects/tweets?limit=50")
    assert status == 200 and "Content-Encoding" not in plain_headers
    assert plain_headers["Vary"] == "Accept-Encoding"
    status, headers, packed = fetch(
        relay, "/v1/objects/tweets?limit=50", **{"Accept-Encoding": "br;q=1, gzip;q=0.5"}
    )
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(packed) < len(plain) / 2
    assert orjson.loads(gzip.decompress(packed))["count"] == 50
    assert gzip.decompress(packed) == plain
    # HEAD: the same headers, the gzipped length, no body.
    status, head_headers, body = fetch(
        relay, "/v1/objects/tweets?limit=50", "HEAD", **{"Accept-Encoding": "gzip"}
    )
    assert (status, body) == (200, b"")
    assert head_headers["Content-Length"] == headers["Content-Length"]


def test_small_answers_and_refused_gzip_stay_plain(relay: RelayServer) -> None:
    status, headers, _ = fetch(relay, "/healthz", **{"Accept-Encoding": "gzip"})
    assert status == 200 and "Content-Encoding" not in headers
    status, headers, _ = fetch(
        relay, "/v1/objects/tweets?limit=50", **{"Accept-Encoding": "gzip;q=0, identity"}
    )
    assert status == 200 and "Content-Encoding" not in headers


def test_static_files_carry_an_etag_and_a_matching_request_gets_304(relay: RelayServer) -> None:
    status, headers, body = fetch(relay, "/app.js")
    assert status == 200 and body and headers["ETag"].startswith('"')
    status, again, body = fetch(relay, "/app.js", **{"If-None-Match": headers["ETag"]})
    assert (status, body) == (304, b"")
    assert again["ETag"] == headers["ETag"] and "Content-Length" not in again
    status, _, body = fetch(relay, "/app.js", **{"If-None-Match": '"something-else"'})
    assert status == 200 and body


def test_the_favicon_is_served_not_a_logged_404(relay: RelayServer) -> None:
    for path in ("/favicon.ico", "/favicon.svg"):
        status, headers, body = fetch(relay, path)
        assert status == 200 and headers["Content-Type"] == "image/svg+xml"
        assert body.startswith(b"<svg")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("deflate, gzip;q=0.8", True),
        ("GZIP", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip;q=0.0", False),
        ("gzip;q=nonsense", False),
        ("br, deflate", False),
        ("", False),
    ],
)
def test_accept_encoding_is_read_with_its_qualities(header: str, expected: bool) -> None:
    assert accepts_gzip({"accept-encoding": header}) is expected
