"""The window: the Session behind ``Main.qml`` in a ``QQuickView``, and the screenshot.

Headless (``QT_QPA_PLATFORM=offscreen``, ``QT_QUICK_BACKEND=software``) it runs the same
way, without a display or a GPU: that is how the tests, the benchmark and the docs'
screenshot run it.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QUrl
from PySide6.QtGui import QFont, QFontDatabase, QGuiApplication
from PySide6.QtQuick import QQuickView

from client_demo.qt.session import Session

QML = Path(__file__).with_name("Main.qml")
FONT = "Noto Sans"
"""The text font when installed (system-deps installs the Noto families); the fonts of
Arabic, CJK and colour emoji come from the system's fallback (fontconfig)."""
SIZE = (900, 700)


def application(argv: list[str] | None = None) -> QGuiApplication:
    """The one application object of the process (made once, reused after)."""
    os.environ.setdefault("QT_QUICK_CONTROLS_STYLE", "Basic")  # the same look everywhere
    existing = QGuiApplication.instance()
    if isinstance(existing, QGuiApplication):
        return existing
    app = QGuiApplication(argv or ["relay-qt"])
    app.setApplicationName("relay-qt")
    if FONT in QFontDatabase.families():
        font = QFont(FONT)
        font.setPointSizeF(app.font().pointSizeF())
        app.setFont(font)
    return app


def window(session: Session) -> QQuickView:
    """The window bound to ``session``; raises RuntimeError when the QML does not load."""
    view = QQuickView()
    view.setTitle("tweet-relay")
    view.setResizeMode(QQuickView.ResizeMode.SizeRootObjectToView)
    view.rootContext().setContextProperty("relay", session)
    view.setSource(QUrl.fromLocalFile(str(QML)))
    if view.status() != QQuickView.Status.Ready:
        errors = "; ".join(error.toString() for error in view.errors())
        raise RuntimeError(f"the window's QML did not load: {errors}")
    view.resize(*SIZE)
    return view


def screenshot(view: QQuickView, path: Path) -> bool:
    """The window as it is drawn now, as a PNG at ``path``."""
    image = view.grabWindow()
    # PySide6 takes the format as text; its type stubs say bytes.
    return bool(image.save(str(path), "PNG"))  # type: ignore[call-overload]


def close(view: QQuickView) -> None:
    """Drop the window's QML before its Session goes: no binding reads a deleted object."""
    view.close()
    view.setSource(QUrl())
    view.deleteLater()
