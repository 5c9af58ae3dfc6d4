"""Every mistake a user can make before the relay runs: one line on stderr, exit 2.

Each case runs the real CLI in a subprocess, as a user would type it, and checks that
the answer is one line naming what to change, with no traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, free_port


def relay(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "X_"))}
    clean.pop("DATABASE_URL", None)
    clean.pop("REDIS_URL", None)
    clean.pop("PORT", None)
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def unreachable() -> str:
    return f"http://127.0.0.1:{free_port()}"


MISTAKES: dict[str, tuple[list[str], dict[str, str], str]] = {
    # name: (arguments, environment, what the line must name)
    "bad log level": (["run", "--log-level", "loud"], {}, "log level 'loud'"),
    "bad log format": (["run"], {"RELAY_LOG_FORMAT": "xml"}, "RELAY_LOG_FORMAT"),
    "bad speed": (["run", "--speed", "fast"], {}, "speed"),
    "bad port": (["run", "--port", "70000"], {}, "port"),
    "missing replay file": (["run", "--replay", "nope.jsonl"], {}, "cannot read replay file"),
    "missing config file": (["run", "--config", "nope.toml"], {}, "nope.toml"),
    "unknown source": (["run", "--source", "telepathy"], {}, "unknown source"),
    "live source without a token": (["run", "--source", "x-stream"], {}, "X_BEARER_TOKEN"),
    "short secret": (["run"], {"RELAY_SECRET": "short"}, "at least 32 bytes"),
    "bad database url": (["run"], {"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
    "bad redis url": (["serve"], {"REDIS_URL": "http://x"}, "REDIS_URL"),
    "rules without a token": (
        ["rules", "list"],
        {"RELAY_RULES": str(ROOT / "config" / "rules.toml")},
        "X_BEARER_TOKEN",
    ),
    "rules file missing": (["rules", "list"], {"RELAY_RULES": "nope.toml"}, "nope.toml"),
    "token without a secret": (["token", "--sub", "a", "--channel", "tweets"], {}, "RELAY_SECRET"),
    "synth count": (["synth", "--count", "0", "--out", "x.jsonl"], {}, "--count"),
    "synth into a missing folder": (
        ["synth", "--out", "no-such-folder/x.jsonl"],
        {},
        "cannot write no-such-folder/x.jsonl: No such file or directory",
    ),
    "record no tweet": (["record", "x.jsonl", "--max-tweets", "0"], {}, "--max-tweets"),
    "record no time": (["record", "x.jsonl", "--duration", "0"], {}, "--duration"),
    "record into a missing folder": (
        ["record", "no-such-folder/x.jsonl"],
        {},
        "cannot write no-such-folder/x.jsonl: No such file or directory",
    ),
}


@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_a_mistake_before_running_is_one_line_and_exit_2(name: str, tmp_path: Path) -> None:
    args, env, names = MISTAKES[name]
    if args[0] in ("run", "serve", "record"):
        args = [*args, "--db", str(tmp_path / "x.db")]
    result = relay(*args, env=env, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    if args[0] == "record":  # refused before anything was written
        assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "x.db").exists()


def test_a_port_in_use_names_the_port_and_how_to_pick_another(
    busy_port: int, tmp_path: Path
) -> None:
    result = relay("run", "--port", str(busy_port), "--db", str(tmp_path / "x.db"), cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"port {busy_port}" in lines[0] and "in use" in lines[0] and "--port" in lines[0]
    assert not (tmp_path / "x.db").exists()  # refused before touching the store


def test_rules_with_the_x_api_unreachable_is_one_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nvalue = "cats"\ntag = "cats"\n')
    env = {"X_BEARER_TOKEN": "a-token-of-some-length", "X_API_BASE_URL": unreachable()}
    for action in ("list", "sync"):
        result = relay("rules", action, env={**env, "RELAY_RULES": str(rules)}, cwd=tmp_path)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2, result.stderr
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert "cannot reach the X API" in lines[0] and "X_API_BASE_URL" in lines[0]


def test_rules_without_an_action_prints_its_own_usage(tmp_path: Path) -> None:
    result = relay("rules", cwd=tmp_path)
    assert result.returncode == 2
    assert "relay rules" in result.stderr and "list" in result.stderr and "sync" in result.stderr
