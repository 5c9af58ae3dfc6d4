"""The event loop of ``relay-qt``: a Session, its window, and the screenshot timer."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from PySide6.QtCore import QTimer

from client_demo.qt.app import application, close, screenshot, window
from client_demo.qt.session import Session


def run(base: str, args: argparse.Namespace, token: str, say: Callable[[str], None]) -> int:
    app = application()
    session = Session(base, args.channel, token, keep=args.keep, batch_ms=args.batch_ms, say=say)
    try:
        view = window(session)
    except RuntimeError as exc:
        say(str(exc))
        return 1
    view.show()
    session.start()
    if args.screenshot is not None:

        def take() -> None:
            written = False
            try:
                written = screenshot(view, args.screenshot)
            finally:  # whatever happened, the command ends (an error in a slot would not)
                if not written:
                    say(f"cannot write the screenshot to {args.screenshot}")
                session.stop()
                app.exit(0 if written else 1)

        # Counted from the window's first word about the relay (live, or why not), so a
        # slow start is not pictured as an empty window.
        timer = QTimer(app)
        timer.setSingleShot(True)
        timer.setInterval(int(args.after * 1000))
        timer.timeout.connect(take)
        started: list[bool] = []

        def first_word() -> None:
            if not started:
                started.append(True)
                timer.start()

        session.statusChanged.connect(first_word)
    code = app.exec()
    session.stop()
    close(view)
    return code
