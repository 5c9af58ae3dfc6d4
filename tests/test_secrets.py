"""Secrets over time: a previous secret accepted for a set time, and tokens revoked by id."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.access.revocation import RevocationList, parse_revoked
from relay.app.cli import main
from relay.config import Settings
from relay.core.auth import Secrets, issue_token, verify_token
from relay.errors import ConfigError, Unauthorized
from relay.testing import RelayServer
from tests.fake_x import FakeTime
from tests.support import ROOT, UNIT, receive_tweets, stream_line, subscribe, wait_for, ws_connect

NEW = "the-new-secret-after-the-rotation-0123456789"
OLD = "the-old-secret-before-the-rotation-987654321"
NOW = 1_800_000_000.0


def make_token(secret: str, now: float, sub: str = "alice", **extra: Any) -> str:
    return issue_token(secret, subject=sub, channels=["tweets"], ttl=3600, now=now, **extra)


def bearer(token: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


def close_code(ws: Any) -> tuple[int, str]:
    """Read until the server closes; the close code and reason it sent."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=2 * UNIT)
    assert closed.value.rcvd is not None, "the connection ended without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def refused(url: str, token: str) -> int:
    with pytest.raises(InvalidStatus) as refusal:
        ws_connect(url, **bearer(token))
    return int(refusal.value.response.status_code)


# The previous-secret window, pure.


def test_a_token_of_the_previous_secret_verifies_until_its_end_and_expires_there() -> None:
    keys = Secrets(NEW, OLD, previous_until=NOW + 100)
    grant = verify_token(keys, make_token(OLD, NOW), now=NOW + 100)
    assert grant.subject == "alice" and grant.retiring
    assert grant.expires_at == NOW + 100  # the token's own exp is an hour later


def test_after_its_end_a_token_of_the_previous_secret_is_refused_as_retired() -> None:
    keys = Secrets(NEW, OLD, previous_until=NOW + 100)
    with pytest.raises(Unauthorized, match="retired secret"):
        verify_token(keys, make_token(OLD, NOW), now=NOW + 101)


def test_a_token_of_the_current_secret_is_untouched_by_the_window() -> None:
    grant = verify_token(Secrets(NEW, OLD, NOW + 100), make_token(NEW, NOW), now=NOW + 500)
    assert not grant.retiring and grant.expires_at == NOW + 3600


def test_a_token_of_neither_secret_is_refused_as_forged_not_as_retired() -> None:
    other = make_token("yet-another-secret-that-is-long-enough-x", NOW)
    for now in (NOW, NOW + 500):
        with pytest.raises(Unauthorized, match="signature is not valid"):
            verify_token(Secrets(NEW, OLD, NOW + 100), other, now=now)
    with pytest.raises(Unauthorized, match="signature is not valid"):
        verify_token(NEW, make_token(OLD, NOW), now=NOW)  # no previous secret configured


def test_the_previous_secret_never_lifts_the_other_checks() -> None:
    keys = Secrets(NEW, OLD, previous_until=NOW + 10_000)
    expired = make_token(OLD, NOW - 7200)
    with pytest.raises(Unauthorized, match="expired"):
        verify_token(keys, expired, now=NOW)


def test_every_issued_token_carries_its_own_random_jti() -> None:
    ids = {
        jwt.decode(make_token(NEW, NOW), options={"verify_signature": False})["jti"]
        for _ in range(20)
    }
    assert len(ids) == 20 and all(len(i) >= 20 for i in ids)
    assert verify_token(NEW, make_token(NEW, NOW, token_id="abc"), now=NOW).jti == "abc"


def test_secrets_never_show_in_a_repr() -> None:
    settings = Settings.from_mapping(
        {"secret": NEW, "previous_secret": OLD, "previous_secret_until": NOW}
    )
    assert NEW not in repr(settings) and OLD not in repr(settings)
    assert OLD not in repr(settings.secrets())


# Settings.


def test_the_end_of_the_previous_secret_reads_iso_8601_or_unix_seconds() -> None:
    base = {"secret": NEW, "previous_secret": OLD}
    iso = Settings.from_mapping({**base, "previous_secret_until": "2027-01-15T08:00:00Z"})
    unix = Settings.load(environ={"RELAY_PREVIOUS_SECRET_UNTIL": "1800000000", **_env(base)})
    assert iso.previous_secret_until == 1_800_000_000.0 == unix.previous_secret_until


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"previous_secret": OLD}, "needs RELAY_PREVIOUS_SECRET_UNTIL"),
        ({"previous_secret": "short", "previous_secret_until": NOW}, "at least 32 bytes"),
        ({"previous_secret": NEW, "previous_secret_until": NOW}, "same as RELAY_SECRET"),
        ({"previous_secret": OLD, "previous_secret_until": "next week"}, "ISO 8601"),
        ({"previous_secret": OLD, "previous_secret_until": "2027-01-15T08:00"}, "needs a zone"),
        ({"revoked_tokens_interval": 0}, "must be positive"),
    ],
)
def test_a_bad_rotation_setting_is_one_clear_error(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_mapping({"secret": NEW, **values})


def test_a_previous_secret_without_a_current_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="RELAY_SECRET is not"):
        Settings.from_mapping({"previous_secret": OLD, "previous_secret_until": NOW})


def _env(values: dict[str, str]) -> dict[str, str]:
    return {"RELAY_SECRET": values["secret"], "RELAY_PREVIOUS_SECRET": values["previous_secret"]}


# The revocation list file.


def test_a_revocation_list_reads_one_id_a_line_with_comments_and_blanks() -> None:
    text = "# lost laptops\nabc\n\n  def  # alice, 2026-11-23\n#ghi\n"
    assert parse_revoked(text) == {"abc", "def"}


def test_a_vanished_list_keeps_the_last_good_ids_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "revoked.txt"
    path.write_text("abc\n")
    revoked = RevocationList.open(path)
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="relay.access.revocation"):
        assert not revoked.check() and not revoked.check()
    assert "abc" in revoked and revoked.stale
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    path.write_text("abc\ndef\n")
    assert revoked.check() and "def" in revoked


def test_a_list_in_a_folder_that_does_not_exist_stops_the_start_with_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RELAY_REVOKED_TOKENS": str(tmp_path / "no-such-folder" / "revoked.txt"),
        "RELAY_DB": str(tmp_path / "relay.db"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "relay", "run", "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=4 * UNIT,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "revocation list" in lines[0], done.stderr
    assert "folder does not exist" in lines[0]
    assert not (tmp_path / "relay.db").exists()  # refused before anything was created


def test_a_list_not_created_yet_is_empty_and_read_once_it_appears(
    private: Callable[..., RelayServer], tmp_path: Path
) -> None:
    listing = tmp_path / "revoked.txt"  # not there: the first revocation will create it
    time = FakeTime()
    relay = private(time, revoked_tokens_file=str(listing), revoked_tokens_interval=0.05)
    lost = make_token(NEW, time.now, token_id="lost-laptop")
    doomed, _ = subscribe(relay.ws_url, **bearer(lost))
    with listing.open("a") as handle:  # echo lost-laptop >> revoked.txt
        handle.write("lost-laptop\n")
    code, reason = close_code(doomed)
    assert code == 4001 and orjson.loads(reason)["reason"] == "revoked"
    assert refused(relay.ws_url, lost) == 401
    assert not _checked_missing(relay)  # never "unreadable": it was not there, then it was


def test_relay_token_prints_the_token_alone_on_stdout_and_its_jti_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_SECRET", NEW)
    assert main(["token", "--sub", "alice", "--channel", "tweets"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert "\n" not in token
    claims = jwt.decode(token, NEW, algorithms=["HS256"])
    assert f"jti: {claims['jti']}" in err


# On a live relay.


@pytest.fixture
def private(start_relay: Callable[..., RelayServer]) -> Callable[..., RelayServer]:
    """A private relay on a fake clock whose source the test feeds."""

    def start(time: FakeTime, **values: Any) -> RelayServer:
        relay = start_relay(secret=NEW, public_channels=[], **values, wall_clock=time.clock)
        relay.push(stream_line(1))
        relay.wait_seq(1)
        return relay

    return start


def test_the_previous_secret_works_until_its_end_then_every_path_answers_retired(
    private: Callable[..., RelayServer],
) -> None:
    time = FakeTime()
    relay = private(time, previous_secret=OLD, previous_secret_until=time.now + 100)
    old = make_token(OLD, time.now)
    ws, _ = subscribe(relay.ws_url, **bearer(old))
    assert relay.get(f"/v1/objects/tweets?token={old}")[0] == 200
    time.now += 101  # the previous secret retires
    assert refused(relay.ws_url, old) == 401
    status, body = relay.get(f"/v1/objects/tweets?token={old}")
    assert status == 401 and "retired secret" in body["errors"][0]["message"]
    ws.send(orjson.dumps({"op": "refresh", "token": old, "id": 1}).decode())
    answer = orjson.loads(ws.recv(timeout=UNIT))
    assert answer["type"] == "error" and answer["code"] == "unauthorized"
    ws.send(orjson.dumps({"op": "refresh", "token": make_token(NEW, time.now)}).decode())
    assert orjson.loads(ws.recv(timeout=UNIT))["type"] == "refreshed"
    relay.push(stream_line(2))
    assert receive_tweets(ws, 1)[0]["seq"] == 2
    ws.close()


def test_open_connections_on_the_previous_secret_must_refresh_when_it_retires(
    private: Callable[..., RelayServer],
) -> None:
    # The fake clock stands still, so the retirement comes half a second (real) after connecting.
    time = FakeTime()
    until = time.now + 0.5
    relay = private(time, previous_secret=OLD, previous_secret_until=until, refresh_grace=0.5)
    old = make_token(OLD, time.now)
    refreshing, _ = subscribe(relay.ws_url, **bearer(old))
    idle, _ = subscribe(relay.ws_url, **bearer(make_token(OLD, time.now, sub="bob")))
    notice = orjson.loads(refreshing.recv(timeout=2 * UNIT))
    assert notice["type"] == "refresh_required" and notice["expires_at"] == int(until)
    refreshing.send(orjson.dumps({"op": "refresh", "token": make_token(NEW, time.now)}).decode())
    assert orjson.loads(refreshing.recv(timeout=UNIT))["type"] == "refreshed"
    code, reason = close_code(idle)
    # Not "expired": the token's own lifetime is not over; its secret is retired.
    assert code == 4001
    fields = orjson.loads(reason)
    assert isinstance(fields.pop("seq"), int)
    assert fields == {
        "reason": "invalid",
        "message": "the token is signed with a retired secret: get a new token",
    }
    relay.push(stream_line(2))
    assert receive_tweets(refreshing, 1)[0]["seq"] == 2
    refreshing.close()


def test_a_revoked_token_is_refused_everywhere_and_its_connections_close_with_4001(
    private: Callable[..., RelayServer], tmp_path: Path
) -> None:
    listing = tmp_path / "revoked.txt"
    listing.write_text("# nothing revoked yet\n")
    time = FakeTime()
    relay = private(time, revoked_tokens_file=str(listing), revoked_tokens_interval=0.05)
    lost = make_token(NEW, time.now, token_id="lost-laptop")
    kept = make_token(NEW, time.now, token_id="desktop")
    doomed, _ = subscribe(relay.ws_url, **bearer(lost))
    other, _ = subscribe(relay.ws_url, **bearer(kept))
    staged = tmp_path / "revoked.new"
    staged.write_text("# lost on the train\nlost-laptop\n")
    staged.replace(listing)  # how an operator should write it: whole, at once
    code, reason = close_code(doomed)
    assert code == 4001
    fields = orjson.loads(reason)
    assert isinstance(fields.pop("seq"), int)
    assert fields == {"reason": "revoked", "message": "the token was revoked"}
    assert refused(relay.ws_url, lost) == 401
    status, body = relay.get(f"/v1/objects/tweets?token={lost}")
    assert status == 401 and "revoked" in body["errors"][0]["message"]
    other.send(orjson.dumps({"op": "refresh", "token": lost, "id": 7}).decode())
    answer = orjson.loads(other.recv(timeout=UNIT))
    assert answer["type"] == "error" and answer["code"] == "unauthorized"
    relay.push(stream_line(2))
    assert receive_tweets(other, 1)[0]["seq"] == 2  # the other token is untouched
    metrics = relay.relay.metrics.render().decode()
    assert 'relay_refused_total{reason="revoked"} 4.0' in metrics  # close, upgrade, API, refresh
    assert 'reason="unauthorized"' not in metrics  # each refusal counted once, as revoked
    other.close()


def test_a_revocation_list_that_goes_missing_keeps_refusing_its_tokens(
    private: Callable[..., RelayServer], tmp_path: Path
) -> None:
    listing = tmp_path / "revoked.txt"
    listing.write_text("lost-laptop\n")
    time = FakeTime()
    relay = private(time, revoked_tokens_file=str(listing), revoked_tokens_interval=0.05)
    lost = make_token(NEW, time.now, token_id="lost-laptop")
    assert refused(relay.ws_url, lost) == 401
    listing.unlink()
    assert relay.relay.server is not None
    wait_for(lambda: _checked_missing(relay), 2 * UNIT, "the watcher to see the file gone")
    assert refused(relay.ws_url, lost) == 401


def _checked_missing(relay: RelayServer) -> bool:
    access = relay.relay.server.access if relay.relay.server else None
    revoked = getattr(access, "revoked", None)
    return isinstance(revoked, RevocationList) and revoked.stale
