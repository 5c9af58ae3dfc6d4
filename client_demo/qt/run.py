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
            written = screenshot(view, args.screenshot)
            if not written:
                say(f"cannot write the screenshot to {args.screenshot}")
            session.stop()
            app.exit(0 if written else 1)

        QTimer.singleShot(int(args.after * 1000), take)
    code = app.exec()
    session.stop()
    close(view)
    return code
