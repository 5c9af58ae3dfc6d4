"""The Qt client in tests: one application per process, offscreen with the software
renderer, and waits that run Qt's event loop until a condition holds.

The tests skip where Qt cannot run (the PySide6 wheel or the Debian libraries it links
to are missing, or the fonts), naming the command that installs what is missing, and fail
instead under ``CI=true``: ``make test`` installs both (``.[dev]``, tools/system-deps).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

QT_LIBRARIES = (
    "libegl1 libgl1 libfontconfig1 libfreetype6 libglib2.0-0 libxkbcommon0 libx11-6 "
    "libdbus-1-3 libgssapi-krb5-2"
)
FONTS = "fonts-noto-core fonts-noto-cjk fonts-noto-color-emoji"
FONT_FAMILIES = ("Noto Sans", "Noto Sans Arabic", "Noto Sans CJK JP", "Noto Color Emoji")


def missing(message: str) -> None:
    if os.environ.get("CI") == "true":  # CI must run these tests, never skip them quietly
        pytest.fail(f"Qt tests must run in CI: {message}", pytrace=False)
    pytest.skip(message)


def qt_application() -> Any:
    """The process's QGuiApplication, offscreen, drawn by the software renderer."""
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ["QT_QUICK_BACKEND"] = "software"
    try:
        import PySide6  # noqa: F401
    except ImportError:
        missing("PySide6 is not installed: pip install -e '.[dev]' (or '.[qt]')")
    try:
        from client_demo.qt.app import application
    except ImportError as exc:  # a library the Qt wheels link to
        missing(f"Qt cannot load ({exc}): sudo apt-get install {QT_LIBRARIES}")
    return application()


def need_fonts() -> None:
    from PySide6.QtGui import QFontDatabase

    families = set(QFontDatabase.families())
    absent = [family for family in FONT_FAMILIES if family not in families]
    if absent:
        missing(f"fonts {', '.join(absent)} not installed: sudo apt-get install {FONTS}")


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Run Qt's event loop until ``condition()`` holds; AssertionError after ``timeout``."""
    from PySide6.QtTest import QTest

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        QTest.qWait(20)
