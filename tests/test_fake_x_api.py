"""The shipped fake X API: its fault script, read by plain HTTP as a user's code would."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import requests

from relay.sources.synth import write_stream
from relay.testing import OPERATIONAL_DISCONNECT, FakeXApi, RelayServer, recorded_payloads
from relay.testing.fake_x import TOKEN
from tests.support import UNIT

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def read_stream(fake: FakeXApi) -> tuple[bytes, bool]:
    """Everything one stream connection sent, and whether it ended cleanly."""
    response = requests.get(
        fake.url + "/2/tweets/search/stream", headers=AUTH, stream=True, timeout=UNIT
    )
    body = b""
    try:
        for chunk in response.raw.stream(1024, decode_content=False):
            body += chunk
    except requests.exceptions.ChunkedEncodingError:
        return body, False
    except Exception as exc:  # urllib3's ProtocolError: the connection ended in a chunk
        if "IncompleteRead" in repr(exc) or "ended" in str(exc) or "Connection broken" in str(exc):
            return body, False
        raise
    return body, True


@pytest.fixture
def fake() -> FakeXApi:
    with FakeXApi() as server:
        yield server


def test_lines_split_malformed_and_redelivered(fake: FakeXApi) -> None:
    one, two = b'{"data":{"id":"1","text":"a"}}', b'{"data":{"id":"2","text":"b"}}'
    fake.script(
        ("lines", [one]),
        ("split", two, 7),
        ("malformed", "{oops"),
        ("keepalive", 2),
        ("redeliver", 2),
    )
    body, clean = read_stream(fake)
    assert clean
    assert body.split(b"\r\n") == [one, two, b"{oops", b"", b"", one, two, b""]


def test_a_cut_ends_the_connection_inside_a_line(fake: FakeXApi) -> None:
    line = b'{"data":{"id":"1","text":"a"}}'
    fake.script(("lines", [line]), ("cut", line, 10))
    body, clean = read_stream(fake)
    assert body == line + b"\r\n" + line[:10]
    assert not clean


def test_an_operational_disconnect_then_a_clean_end(fake: FakeXApi) -> None:
    fake.script(("disconnect",))
    body, clean = read_stream(fake)
    assert clean and body == OPERATIONAL_DISCONNECT + b"\r\n"


def test_statuses_with_headers_and_the_token(fake: FakeXApi) -> None:
    fake.script(("status", 429, {"title": "Too Many Requests"}, {"x-rate-limit-reset": "99"}))
    fake.script(("status", 503, {"title": "Service Unavailable"}))
    url = fake.url + "/2/tweets/search/stream"
    first = requests.get(url, headers=AUTH, timeout=UNIT)
    assert (first.status_code, first.headers["x-rate-limit-reset"]) == (429, "99")
    assert requests.get(url, headers=AUTH, timeout=UNIT).status_code == 503
    assert requests.get(url, headers={"Authorization": "Bearer x"}, timeout=UNIT).status_code == 401
    with pytest.raises(ValueError, match="unknown fake X step"):
        fake.script(("nonsense",))
    with pytest.raises(ValueError, match="comes first"):
        fake.script(("keepalive",), ("status", 500, {}))


def test_a_script_can_be_json(fake: FakeXApi, tmp_path: Path) -> None:
    script = (
        '[["lines", ["{\\"data\\": {\\"id\\": \\"5\\", \\"text\\": \\"x\\"}}"]], ["keepalive"]]'
    )
    fake.script(*orjson.loads(script))
    body, clean = read_stream(fake)
    assert clean and body == b'{"data": {"id": "5", "text": "x"}}\r\n\r\n'


def test_served_from_a_recording_to_a_relay_on_the_x_stream(tmp_path: Path) -> None:
    recording = tmp_path / "rec.jsonl.gz"
    write_stream(recording, 40, 3)
    payloads = recorded_payloads(recording)
    assert len(payloads) == 40 and all(b"__relay" not in p for p in payloads)
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nvalue = "cats"\ntag = "cats"\n')
    with FakeXApi.from_recording(recording) as fake:
        search = requests.get(
            fake.url + "/2/tweets/search/recent", params={"query": "x"}, headers=AUTH, timeout=UNIT
        ).json()
        assert len(search["data"]) == 10 and "next_token" in search["meta"]
        server = RelayServer(
            source="x-stream",
            x_bearer_token=TOKEN,
            x_api_base_url=fake.url,
            rules_file=str(rules),
            keep_open=False,
        )
        with server:
            server.wait_seq(40)
            assert server.head == 40


@pytest.mark.fake_x_api(recording="sample", token="mine")
def test_the_plugin_fixture_serves_a_marked_recording(fake_x_api: FakeXApi) -> None:
    url = fake_x_api.url + "/2/tweets/search/recent"
    page = requests.get(
        url, params={"query": "any"}, headers={"Authorization": "Bearer mine"}, timeout=UNIT
    ).json()
    assert len(page["data"]) == 10 and page["meta"]["next_token"] == "10"
    assert len(fake_x_api.scripts) == 1  # the recording, for the first stream connection
    assert fake_x_api.scripts[0][0][0] == "lines" and len(fake_x_api.scripts[0][0][1]) == 3000
