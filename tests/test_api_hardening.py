"""The object API and the HTTP side under hostile requests: a clear 4xx, one log line, no
token in the log, no oracle, a time limit, a fair share of readers, HTTP methods."""

from __future__ import annotations

import http
import json
import logging
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from relay.core.auth import issue_token
from relay.obs.sampling import LogSampler
from relay.testing import RelayServer
from relay.web.access_lines import redact
from tests.support import UNIT, counted, stream_line, wait_for
from tests.test_auth import SECRET

Start = Callable[..., RelayServer]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**65), max_value=2**65)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(["lang", "seq", "createdAt", "rules", "has_media", "id", "$in", "$gt"])
            | st.text(max_size=8),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@pytest.fixture
def relay_with(start_relay: Callable[..., RelayServer]) -> Start:
    """A relay with these settings, holding ``count`` tweets (ids 1.., rule cats or dogs)."""

    def start(count: int = 4, **values: Any) -> RelayServer:
        relay = start_relay(**values)
        relay.push(
            *(
                stream_line(i, f"tweet {i}", tags=("cats" if i % 2 else "dogs",), author=f"a{i}")
                for i in range(1, count + 1)
            )
        )
        relay.wait_seq(count)
        return relay

    return start


def token(channels: list[str], sub: str = "alice", **extra: Any) -> str:
    return issue_token(SECRET, subject=sub, channels=channels, ttl=600, now=time.time(), **extra)


def fetch(relay: RelayServer, path: str) -> tuple[int, dict[str, str], Any]:
    """GET with the response headers too."""
    try:
        with urllib.request.urlopen(relay.url + path, timeout=2 * UNIT) as response:
            return response.status, dict(response.headers), orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), orjson.loads(error.read())


def raw(relay: RelayServer, data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send raw bytes; read until the relay closes: status line, headers, the rest."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=2 * UNIT) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for header in lines:
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


# -- no oracle, no reading past the grant -------------------------------------------


def test_on_a_private_relay_a_missing_and_a_present_id_answer_alike_without_a_token(
    relay_with: Start,
) -> None:
    relay = relay_with(secret=SECRET, public_channels=[])
    present, missing = relay.get("/v1/objects/tweets/1"), relay.get("/v1/objects/tweets/999")
    assert present[0] == missing[0] == 401
    assert present == missing
    assert relay.get("/v1/objects/users/a1") == relay.get("/v1/objects/users/nobody")
    assert relay.get("/v1/objects/users/a1")[0] == 401


def test_a_token_for_a_channel_that_does_not_exist_reads_no_tweet_and_no_user(
    relay_with: Start,
) -> None:
    relay = relay_with(secret=SECRET, public_channels=[])
    nothing = token(["rule:nope"])
    assert relay.get(f"/v1/objects/tweets?token={nothing}") == (200, {"results": [], "count": 0})
    assert relay.get(f"/v1/objects/tweets/1?token={nothing}")[0] == 404
    assert relay.get(f"/v1/objects/users/a1?token={nothing}")[0] == 404
    # A token that reads the rule sees the author of one of its tweets, not of the others.
    cats = token(["rule:cats"])
    assert relay.get(f"/v1/objects/users/a1?token={cats}")[0] == 200
    assert relay.get(f"/v1/objects/users/a2?token={cats}")[0] == 404


# -- 400/404 where a 500 used to be, one log line each -------------------------------

HOSTILE = {
    "offset 2^63": ("/v1/objects/tweets?offset=9223372036854775808", 400),
    "since_seq 2^63": ("/v1/objects/tweets?since_seq=9223372036854775808", 400),
    "q seq 2^63": ("/v1/objects/tweets?q=" + quote('{"seq": 9223372036854775808}'), 400),
    "q seq 2^64-1": (
        "/v1/objects/tweets?q=" + quote('{"seq": {"$gt": 18446744073709551615}}'),
        400,
    ),
    "q createdAt out of range": (
        "/v1/objects/tweets?q=" + quote('{"createdAt": "0001-01-01T00:00:00+14:00"}'),
        400,
    ),
    "q createdAt far future": (
        "/v1/objects/tweets?q=" + quote('{"createdAt": {"$lt": "9999-12-31T23:59:59-14:00"}}'),
        400,
    ),
    "$in 1000 items": (
        "/v1/objects/tweets?q=" + quote(json.dumps({"seq": {"$in": [1] * 1000}})),
        400,
    ),
    "sort 2000 terms": ("/v1/objects/tweets?sort=" + ",".join(["id"] * 2000), 400),
    "sort repeated": ("/v1/objects/tweets?sort=id,-id", 400),
    "search NUL": ("/v1/objects/tweets?search=%00", 400),
    "search control": ("/v1/objects/tweets?search=a%01b", 400),
    "static 300 characters": ("/" + "a" * 300, 404),
    "static NUL": ("/a%00b", 404),
    "id NUL": ("/v1/objects/tweets/%00", 404),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_is_a_clear_4xx_with_one_log_line(
    relay_with: Start, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    relay = relay_with()
    path, expected = HOSTILE[case]
    caplog.set_level(logging.INFO)
    caplog.clear()
    status, body = relay.get(path)
    assert status == expected, body
    assert list(body) == ["errors"] and body["errors"][0]["reason"] in ("badRequest", "notFound")
    lines = [r for r in caplog.records if r.name.startswith("relay")]
    assert len(lines) == 1, [r.getMessage()[:120] for r in lines]
    assert lines[0].exc_info is None and len(lines[0].getMessage()) < 500
    assert relay.get("/v1/objects/tweets?count=1") == (200, {"count": 4})


def test_in_and_sort_caps_are_settings(relay_with: Start) -> None:
    relay = relay_with(max_in_items=3, max_sort_terms=2, max_offset=10)
    three = quote(json.dumps({"lang": {"$in": ["en", "ja", "es"]}}))
    four = quote(json.dumps({"lang": {"$in": ["en", "ja", "es", "fr"]}}))
    assert relay.get("/v1/objects/tweets?q=" + three)[0] == 200
    assert relay.get("/v1/objects/tweets?q=" + four)[0] == 400
    assert relay.get("/v1/objects/tweets?sort=-createdAt,id")[0] == 200
    assert relay.get("/v1/objects/tweets?sort=-createdAt,id,seq")[0] == 400
    assert relay.get("/v1/objects/tweets?offset=10")[0] == 200
    status, body = relay.get("/v1/objects/tweets?offset=11")
    assert status == 400 and "since_seq" in body["errors"][0]["message"]


# -- tokens never in the log ---------------------------------------------------------


def test_redact_hides_every_token_and_truncates() -> None:
    secret = token(["tweets"])
    for target in (
        f"/v1/objects/tweets?token={secret}&limit=x",
        f"/v1/objects/tweets?limit=x&tok%65n={secret}",
        f"/v1/objects/tweets/{secret}",
        f"/{secret[:60]}",  # a cut token still has the shape of one
    ):
        logged = redact(target)
        assert secret[:40] not in logged and secret[-40:] not in logged, logged
        assert "[redacted]" in logged
    assert len(redact("/x?" + "a" * 5000)) <= 203


def test_a_4xx_and_a_500_with_a_valid_token_never_log_it(
    relay_with: Start, caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    relay = relay_with(secret=SECRET, public_channels=[])
    secret = token(["tweets"])
    caplog.set_level(logging.INFO)
    assert relay.get(f"/v1/objects/tweets?token={secret}&limit=0" + "&x=1" * 300)[0] == 400
    # A genuine fault: the full-text index is gone. One traceback, no token.
    with sqlite3.connect(tmp_path / "relay.db") as db:
        db.execute("DROP TABLE tweets_fts")
    padding = quote(json.dumps({"lang": "x" * 3000}))
    status, body = relay.get(f"/v1/objects/tweets?search=cat&token={secret}&q={padding}")
    assert status == 500 and body["errors"][0]["reason"] == "internal"
    text = caplog.text
    assert secret[:30] not in text and secret[-30:] not in text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None
    assert len(errors[0].getMessage()) < 300
    assert all(len(r.getMessage()) < 500 for r in caplog.records)


# -- a time limit and a fair share of readers ----------------------------------------


def test_a_query_past_the_time_limit_answers_503_with_retry_after(relay_with: Start) -> None:
    relay = relay_with(count=2000, query_timeout=1e-6)
    status, headers, body = fetch(relay, "/v1/objects/tweets?sort=id&limit=1000")
    assert status == 503 and body["errors"][0]["reason"] == "queryTimeout"
    assert int(headers["Retry-After"]) >= 1
    assert fetch(relay, "/v1/info")[0] == 200  # the stream side's readers are not touched


def test_one_client_cannot_hold_every_reader_and_info_never_waits_behind_queries(
    relay_with: Start,
) -> None:
    relay = relay_with(query_readers=1, queries_per_client=1)
    store, api = relay.relay.store, relay.relay.server.api  # type: ignore[union-attr]
    # Occupy the object API's only reader, as a long query would.
    release = threading.Event()
    store._query_readers.submit(release.wait, 4 * UNIT)  # type: ignore[union-attr]
    first: list[tuple[int, Any]] = []
    waiting = threading.Thread(target=lambda: first.append(relay.get("/v1/objects/tweets")))
    waiting.start()
    try:
        wait_for(lambda: bool(api._in_flight), 2 * UNIT, "the first query in flight")
        status, headers, body = fetch(relay, "/v1/objects/tweets?limit=1")
        assert status == 429 and body["errors"][0]["reason"] == "tooManyRequests"
        assert int(headers["Retry-After"]) >= 1
        # Discovery, readiness and health answer while the query readers are busy.
        assert fetch(relay, "/v1/info")[0] == 200
        assert fetch(relay, "/readyz")[0] == 200
    finally:
        release.set()
        waiting.join(2 * UNIT)
    assert first and first[0][0] == 200 and first[0][1]["count"] == 4
    assert not api._in_flight
    assert relay.get("/v1/objects/tweets?limit=1")[0] == 200


# -- HTTP methods, HEAD, bodies, pipelining ------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "TRACE", "get"])
def test_methods_other_than_get_and_head_answer_405_with_allow(
    relay_with: Start, method: str
) -> None:
    relay = relay_with()
    allow = "GET, HEAD, OPTIONS"  # OPTIONS: a browser's preflight (tests/test_cors.py)
    for path in ("/v1/info", "/v1/objects/tweets"):
        status, headers, body = raw(relay, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert status.startswith("HTTP/1.1 405"), status
        assert headers["allow"] == allow and headers["connection"] == "close"
        assert orjson.loads(body)["errors"][0]["reason"] == "methodNotAllowed"
    status, headers, _ = raw(relay, f"{method} /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status.startswith("HTTP/1.1 405") and headers["allow"] == "GET, OPTIONS"


def test_head_answers_the_headers_of_get_without_a_body(relay_with: Start) -> None:
    relay = relay_with()
    _, get_headers, get_body = raw(relay, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = raw(relay, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.startswith("HTTP/1.1 200")
    assert body == b"" and get_body == b'{"status":"ok"}'
    assert headers["content-length"] == get_headers["content-length"] == str(len(get_body))
    assert headers["content-type"] == get_headers["content-type"]


def test_a_request_with_a_body_is_answered_and_closed(relay_with: Start) -> None:
    relay = relay_with()
    status, headers, body = raw(
        relay, b"POST /v1/info HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert status.startswith("HTTP/1.1 405") and headers["connection"] == "close"
    status, headers, body = raw(
        relay, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    )
    assert status.startswith("HTTP/1.1 200") and body == b'{"status":"ok"}'
    status, _, _ = raw(
        relay, b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    assert status.startswith("HTTP/1.1 200")


def test_pipelined_requests_get_the_first_answer_and_a_close(relay_with: Start) -> None:
    relay = relay_with()
    status, headers, rest = raw(
        relay,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert status.startswith("HTTP/1.1 200") and headers["connection"] == "close"
    assert rest == b'{"status":"ok"}'  # one answer, then the connection closed


# -- fuzzing: any parameter text is a 200 or a 4xx, never a 500 ----------------------

PARAMETER_TEXT = st.one_of(
    st.text(max_size=60),
    st.text(alphabet='"*-^:()[]{}$\\0 .,+@#~%&=?', max_size=30),
    st.builds(lambda v: json.dumps(v), JSON_VALUES),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
)


def test_no_query_parameter_text_is_a_500(
    relay_with: Start, caplog: pytest.LogCaptureFixture
) -> None:
    relay = relay_with()
    caplog.set_level(logging.INFO)

    @hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        name=st.sampled_from(["q", "search", "sort", "offset", "since_seq", "limit", "rule"]),
        value=PARAMETER_TEXT,
    )
    def fuzz(name: str, value: str) -> None:
        status, body = relay.get(f"/v1/objects/tweets?{name}={quote(value)}")
        assert status in (200, 400, 403), (name, value, status, body)

    fuzz()
    problems = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage()[:200] for r in problems]


def test_client_error_lines_are_sampled() -> None:
    sampler = LogSampler(burst=3, window=10.0)
    assert [sampler.allow(t) for t in (0, 1, 2, 3, 4)] == [True, True, True, False, False]
    assert sampler.allow(10.5) and sampler._skipped == 0


# -- requests that are not HTTP/1.x: an answer, never 0 bytes -------------------------

MALFORMED = {
    "HTTP/0.9 (no version)": (b"GET /healthz\r\n", 400),
    "an unknown version": (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 505),
    "HTTP/2 as text": (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "not a version": (b"GET /healthz HTTQ/1.1\r\nHost: x\r\n\r\n", 400),
    "bare LF line endings": (b"GET /healthz HTTP/1.1\nHost: x\n\n", 400),
    "a bare LF after the headers": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\n", 400),
    "a header without a colon": (b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n", 400),
    "obs-fold": (b"GET /healthz HTTP/1.1\r\nX-A: b\r\n  c\r\nHost: x\r\n\r\n", 400),
    "a raw 0xFF in the target": (b"GET /heal\xffthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "an escape in the target": (b"GET /\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "two spaces": (b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "a method that is no token": (b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "a blank line for a request": (b"\r\n", 400),
    "a request cut in its line": (b"GET /healthz HT", 400),
    "a request cut in its headers": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", 400),
    "a request line past 8 KiB": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    "a header past 8 KiB": (b"GET / HTTP/1.1\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", 431),
}


def raw_eof(relay: RelayServer, data: bytes) -> bytes:
    """Send raw bytes, then end our side; everything the relay sends until it closes."""
    with socket.create_connection(("127.0.0.1", relay.port), timeout=2 * UNIT) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_request_that_is_not_http_gets_a_400_or_505_that_closes(
    relay_with: Start, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    relay = relay_with(count=1)
    caplog.set_level(logging.INFO)
    data, expected = MALFORMED[case]
    answer = raw_eof(relay, data)
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *headers = head.decode("latin-1").split("\r\n")
    assert status.startswith(f"HTTP/1.1 {expected} "), answer[:200]
    assert "Connection: close" in headers
    assert body.startswith(http.HTTPStatus(expected).phrase.encode() + b": ")
    # Counted and logged like any answered request, never as a failure of the relay.
    assert counted(relay.relay.metrics.http_requests, route="malformed", status=str(expected)) == 1
    lines = [r for r in caplog.records if r.name == "relay.access"]
    assert [r.__dict__["status"] for r in lines] == [expected]
    assert lines[0].__dict__["reason"] in body.decode()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    # And the relay goes on answering.
    assert relay.get("/healthz") == (200, {"status": "ok"})


def test_a_connection_closed_before_its_first_byte_gets_nothing_and_no_line(
    relay_with: Start, caplog: pytest.LogCaptureFixture
) -> None:
    relay = relay_with(count=1)
    caplog.set_level(logging.INFO)
    assert raw_eof(relay, b"") == b""
    assert relay.get("/v1/objects/tweets?count=1")[0] == 200  # the line of this one only
    lines = [r.__dict__["path"] for r in caplog.records if r.name == "relay.access"]
    assert lines == ["/v1/objects/tweets?count=1"]


def test_http_1_0_and_a_later_http_1_minor_are_served(relay_with: Start) -> None:
    relay = relay_with(count=1)
    for version in (b"HTTP/1.0", b"HTTP/1.2"):
        answer = raw_eof(relay, b"GET /healthz " + version + b"\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"status":"ok"}')


@pytest.mark.parametrize("target", [b"//[x", b"http://[/v1/info", b"//[::1/healthz"])
def test_a_target_the_url_parser_refuses_is_a_400_never_a_500(
    relay_with: Start, target: bytes
) -> None:
    relay = relay_with(count=1)
    status, headers, body = raw(relay, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.startswith("HTTP/1.1 400") and headers["connection"] == "close"
    assert orjson.loads(body)["errors"][0]["reason"] == "badRequest"
