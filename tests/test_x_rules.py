"""Stream rules as configuration: ``relay rules list|sync`` and the sync on start.

The CLI runs in-process against the fake X API; the environment it reads is the
test's (``monkeypatch``), and what it prints is checked as a user would read it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from relay.app.cli import main
from relay.testing import RelayServer
from tests.fake_x import TOKEN, FakeX, x_lines


@pytest.fixture
def x_env(monkeypatch: pytest.MonkeyPatch, fake: FakeX, rules_file: Path) -> None:
    monkeypatch.setenv("X_BEARER_TOKEN", TOKEN)
    monkeypatch.setenv("X_API_BASE_URL", fake.url)
    monkeypatch.setenv("RELAY_RULES", str(rules_file))


def rule_values(fake: FakeX) -> dict[str, str]:
    """tag -> value of the rules the fake API holds."""
    return {rule.get("tag", ""): rule["value"] for rule in fake.rules.values()}


def rule_posts(fake: FakeX) -> list[dict[str, list[str]]]:
    return [p for m, path, p in fake.requests if m == "POST" and path.endswith("/rules")]


@pytest.fixture
def drifted(fake: FakeX) -> dict[str, str]:
    """The API holds one configured rule, one unknown rule, and lacks one; tag -> id."""
    return {
        "cats": fake.add_rule("cats OR kitten", "cats"),
        "old": fake.add_rule("dogs", "old"),
    }


@pytest.mark.usefixtures("x_env")
def test_sync_adds_missing_deletes_unknown_and_keeps_the_rest(
    fake: FakeX, drifted: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rules", "sync"]) == 0
    assert rule_values(fake) == {"cats": "cats OR kitten", "python": "python"}
    assert fake.rules[drifted["cats"]]["tag"] == "cats"  # kept, not deleted and re-added
    out = capsys.readouterr().out
    assert "add    python: python" in out
    assert "delete old: dogs" in out
    assert "keep   cats: cats OR kitten" in out
    assert "1 added, 1 deleted, 1 kept" in out
    assert main(["rules", "sync"]) == 0  # in sync now: nothing to add or delete
    assert "0 added, 0 deleted, 2 kept" in capsys.readouterr().out


@pytest.mark.usefixtures("x_env")
def test_a_dry_run_has_the_api_validate_and_changes_nothing(
    fake: FakeX, drifted: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = dict(fake.rules)
    assert main(["rules", "sync", "--dry-run"]) == 0
    assert fake.rules == before
    posts = rule_posts(fake)
    assert posts and all(p.get("dry_run") == ["true"] for p in posts)
    out = capsys.readouterr().out
    assert "add    python" in out and "delete old" in out and "nothing changed" in out


@pytest.mark.usefixtures("x_env")
def test_a_rejected_rule_is_named_with_the_api_reason_and_nothing_is_deleted(
    fake: FakeX, drifted: dict[str, str], rules_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules_file.write_text(
        rules_file.read_text() + '\n[[rule]]\nvalue = "-INVALID"\ntag = "broken"\n'
    )
    before = dict(fake.rules)
    assert main(["rules", "sync"]) == 2
    err = capsys.readouterr().err
    assert "rule '-INVALID'" in err and "Rules must contain a non-negation term" in err
    assert "Traceback" not in err
    assert fake.rules == before


@pytest.mark.usefixtures("x_env")
def test_list_shows_the_api_rules_and_which_sync_would_delete(
    drifted: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rules", "list"]) == 0
    rows = {
        line.split("│")[2].strip(): line
        for line in capsys.readouterr().out.splitlines()
        if line.count("│") == 5
    }
    assert set(rows) == {"cats", "old"}
    assert "yes" in rows["cats"] and "sync deletes" in rows["old"]


@pytest.mark.usefixtures("x_env")
def test_list_with_no_rules_on_the_api_is_one_line_naming_sync(
    fake: FakeX, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not fake.rules
    assert main(["rules", "list"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    assert "no stream rules" in out and "relay rules sync" in out and "2 rule(s)" in out


@pytest.mark.parametrize(
    "command", [["rules", "list"], ["rules", "sync"], ["run", "--source", "x-poll"]]
)
def test_no_token_is_one_line_naming_x_bearer_token_and_the_sample(
    command: list[str],
    monkeypatch: pytest.MonkeyPatch,
    rules_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("X_BEARER_TOKEN", raising=False)
    monkeypatch.setenv("RELAY_RULES", str(rules_file))
    monkeypatch.setenv("RELAY_DB", str(tmp_path / "relay.db"))
    monkeypatch.setenv("RELAY_PORT", "0")
    assert main([*command]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "X_BEARER_TOKEN" in err and "relay run --source replay" in err


@pytest.mark.usefixtures("x_env")
def test_a_bad_token_on_rules_is_one_clear_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("X_BEARER_TOKEN", "revoked")
    assert main(["rules", "list"]) == 2
    err = capsys.readouterr().err
    assert "401" in err and "X_BEARER_TOKEN" in err and "Traceback" not in err


def test_the_stream_source_syncs_the_rules_before_it_connects(
    x_relay: Callable[..., RelayServer], fake: FakeX, drifted: dict[str, str]
) -> None:
    fake.scripts.append([("lines", x_lines(5, seed=3))])
    relay = x_relay()
    relay.wait_seq(5)
    assert rule_values(fake) == {"cats": "cats OR kitten", "python": "python"}
    first_stream = next(
        n for n, (_, path, _) in enumerate(fake.requests) if path == "/2/tweets/search/stream"
    )
    assert len(rule_posts(fake)) == 3  # validate, add, delete
    assert all(
        n < first_stream
        for n, (m, path, _) in enumerate(fake.requests)
        if m == "POST" and path.endswith("/rules")
    )
