"""``relay-qt`` as a command where Qt is not installed: one line naming the install
command and exit 2; its help and its usage errors need no Qt."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT

# Runs relay-qt's main with PySide6 unimportable, as on an install without the extra.
WITHOUT_QT = """
import sys
class NoQt:
    def find_spec(self, name, path=None, target=None):
        if name == "PySide6" or name.startswith("PySide6."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoQt())
from client_demo.qt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def without_qt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_QT, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_without_the_extra_it_names_the_install_command_and_exits_2() -> None:
    done = without_qt("http://localhost:8080")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "pip install 'tweet-relay[qt]'" in lines[0], done.stderr
    assert lines[0].startswith("relay-qt: ") and "Traceback" not in done.stderr


def test_help_and_usage_errors_need_no_qt() -> None:
    helped = without_qt("--help")
    assert helped.returncode == 0 and "--screenshot" in helped.stdout
    for args in (["--keep", "0"], ["--after", "-1"], ["--batch-ms", "x"], ["ftp://host"]):
        done = without_qt(*args)
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr and "pip install" not in done.stderr


def test_every_flag_of_relay_qt_is_in_the_command_docs() -> None:
    from client_demo.qt.cli import build_parser

    docs = (ROOT / "docs" / "cli.md").read_text()
    assert "## `relay-qt`" in docs
    flags = [f for a in build_parser()._actions for f in a.option_strings if f.startswith("--")]
    assert len(flags) >= 7
    for flag in flags:
        if flag != "--help":
            assert flag in docs, f"`relay-qt {flag}` is not in docs/cli.md"
    assert "relay-qt" in (ROOT / "docs" / "clients.md").read_text()
    assert "relay-qt" in (ROOT / "README.md").read_text()
