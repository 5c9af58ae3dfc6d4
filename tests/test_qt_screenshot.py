"""``relay-qt --screenshot``: the command writes a PNG of its window and exits 0; the
picture has rows drawn, and text in Arabic, CJK and emoji has a glyph for every
character (no empty boxes) in the fonts the client draws with."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.testing import RelayServer
from tests.qt_support import need_fonts, qt_application
from tests.support import ROOT, UNIT, stream_line

SAMPLES = {
    "Arabic": "لا أصدق ما حدث اليوم",
    "Hebrew": "סוף סוף",
    "CJK": "みんな見て 猫が好き 我爱猫 고양이",
    "Devanagari": "आज का दिन शानदार था",
    "emoji": "🐱🚀😂🇧🇷👍🏽",
}
BACKGROUND = (0xF4, 0xF5, 0xF7)  # Main.qml's root colour
CARD = (0xFF, 0xFF, 0xFF)


def relay_qt(*args: str, screen: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
    """The command, offscreen; with ``screen`` False as on a machine with no display and
    nothing said about Qt's platform (the command must choose, or say why it cannot)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RELAY_DEMO_TOKEN": "", **extra}
    env.update(QT_QUICK_BACKEND="software")
    if screen:
        env.update(QT_QPA_PLATFORM="offscreen")
    else:
        for name in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
            env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "client_demo.qt.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=12 * UNIT,
    )


def test_a_screenshot_is_written_with_rows_drawn(
    start_relay: Callable[..., RelayServer], tmp_path: Path
) -> None:
    qt_application()
    need_fonts()
    from PySide6.QtGui import QImage

    relay = start_relay()
    relay.push(*(stream_line(n, text) for n, text in enumerate(SAMPLES.values(), 1)))
    relay.wait_seq(len(SAMPLES))
    shot = tmp_path / "window.png"
    done = relay_qt("--screenshot", str(shot), "--after", "0.5", relay.url)
    assert done.returncode == 0, done.stderr
    assert "relay-qt: live on tweets" in done.stderr
    image = QImage(str(shot))
    assert (image.width(), image.height()) == (900, 700)
    # Down the left edge of the list: a white card for each row, the background between.
    x, cards, inside, inked = 30, 0, False, 0
    for y in range(150, image.height()):
        colour = image.pixelColor(x, y)
        white = (colour.red(), colour.green(), colour.blue()) == CARD
        if white and not inside:
            cards += 1
        inside = white
    assert cards >= len(SAMPLES), f"{cards} rows drawn"
    # Text in them: dark pixels inside the list area.
    for y in range(135, image.height()):
        for x in range(20, image.width() - 20):
            colour = image.pixelColor(x, y)
            inked += colour.red() + colour.green() + colour.blue() < 450
    assert inked > 2000, f"rows without text ({inked} dark pixels)"


@pytest.mark.parametrize("script", SAMPLES)
def test_every_script_has_a_glyph_for_every_character(script: str) -> None:
    app = qt_application()
    need_fonts()
    from PySide6.QtGui import QTextLayout

    layout = QTextLayout(SAMPLES[script], app.font())
    layout.beginLayout()
    layout.createLine()
    layout.endLayout()
    runs = layout.glyphRuns()
    assert runs
    for run in runs:
        # Glyph 0 is every font's .notdef: the empty box drawn for a missing character.
        assert 0 not in list(run.glyphIndexes()), (
            f"{script}: a missing glyph in {run.rawFont().familyName()}"
        )


def test_emoji_are_drawn_in_colour() -> None:
    app = qt_application()
    need_fonts()
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QColor, QFont, QImage, QPainter

    image = QImage(200, 60, QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    font = QFont(app.font())
    font.setPixelSize(32)
    painter.setFont(font)
    painter.setPen(QColor("black"))
    painter.drawText(image.rect(), Qt.AlignmentFlag.AlignLeft, "🐱🚀")
    painter.end()
    coloured = sum(
        image.pixelColor(x, y).hsvSaturation() > 80
        for x in range(image.width())
        for y in range(image.height())
    )
    assert coloured > 100, "emoji drawn as outlines or boxes, not in colour"


def test_with_no_display_a_window_is_one_line_and_exit_2() -> None:
    """Qt would abort looking for a screen (SIGABRT, a page of plugin messages); a
    screenshot needs none (the other tests here take theirs so)."""
    qt_application()
    done = relay_qt("http://127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("relay-qt: no display") and "--screenshot" in line


def test_without_a_window_system_a_bad_url_is_one_line_and_exit_2() -> None:
    done = relay_qt("ftp://example.org")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "http(s)://" in done.stderr


def test_the_command_on_a_private_relay_says_why_then_takes_the_token_from_the_environment(
    start_relay: Callable[..., RelayServer], tmp_path: Path
) -> None:
    import time

    from relay.core.auth import issue_token
    from tests.test_auth import SECRET

    qt_application()
    relay = start_relay(secret=SECRET, public_channels=[])
    shot = tmp_path / "locked.png"
    locked = relay_qt("--screenshot", str(shot), "--after", "0.2", relay.url)
    assert locked.returncode == 0 and shot.is_file()
    assert "relay-qt: the relay needs a token: give --token or set RELAY_DEMO_TOKEN" in (
        locked.stderr.splitlines()
    )
    token = issue_token(SECRET, subject="qt", channels=["tweets"], ttl=600, now=time.time())
    opened = relay_qt(
        "--screenshot", str(shot), "--after", "0.2", relay.url, RELAY_DEMO_TOKEN=token
    )
    assert opened.returncode == 0 and "relay-qt: live on tweets" in opened.stderr.splitlines()
