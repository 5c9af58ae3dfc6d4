"""``relay-qt URL``: the relay's stream live in a Qt Quick window (the ``[qt]`` extra).

Exit status: 0 when the window is closed (or the screenshot is written), 1 when the
screenshot could not be written or the window cannot open, 2 for a usage error or when
the extra is not installed. Nothing of Qt is imported before the arguments are read, so
``--help`` and the missing extra's line work without it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from client_demo.errors import DemoError
from client_demo.qt.feed import KEEP
from client_demo.stream import http_base

TOKEN_ENV = "RELAY_DEMO_TOKEN"
INSTALL = "pip install 'tweet-relay[qt]'"


def say(message: str) -> None:
    sys.stderr.write(f"relay-qt: {' '.join(message.split())}\n")
    sys.stderr.flush()


def positive(text: str) -> int:
    value = int(text)
    if value < 1 or value > 100_000:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and 100000")
    return value


def batch(text: str) -> int:
    value = int(text)
    if value < 0 or value > 5000:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 5000")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 3600")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay-qt",
        description="Show a tweet-relay stream live in a Qt Quick window; resumes without "
        "gaps across relay restarts.",
        epilog="examples: relay-qt http://localhost:8080 | relay-qt --channel rule:cats URL | "
        "QT_QPA_PLATFORM=offscreen relay-qt --screenshot shot.png --after 3 URL",
    )
    parser.add_argument("url", nargs="?", default="http://localhost:8080", help="the relay")
    parser.add_argument("--channel", default="tweets", help="channel to follow (default: tweets)")
    parser.add_argument(
        "--token", help=f"access token, when the relay is not public (or {TOKEN_ENV})"
    )
    parser.add_argument(
        "--keep", type=positive, default=KEEP, help=f"newest tweets the list keeps (default {KEEP})"
    )
    parser.add_argument(
        "--batch-ms",
        type=batch,
        default=50,
        help="ms between two insertions into the list (default 50; 0: each tweet at once)",
    )
    parser.add_argument(
        "--screenshot", type=Path, metavar="FILE", help="write a PNG of the window and exit"
    )
    parser.add_argument(
        "--after", type=seconds, default=3.0, metavar="SECONDS", help="when to take it (default 3)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        base = http_base(args.url)
    except DemoError as exc:
        say(str(exc))
        return 2
    try:
        import PySide6.QtQuick  # noqa: F401
    except ImportError as exc:
        say(f"needs Qt, which is not installed ({exc.name or exc}): {INSTALL}")
        return 2
    if not os.environ.get("QT_QPA_PLATFORM") and not _has_display():
        if not args.screenshot:
            say(
                "no display to open a window on (DISPLAY and WAYLAND_DISPLAY are unset): "
                "run it on a desktop, or take a picture with --screenshot FILE"
            )
            return 2
        # A picture needs no screen: Qt draws offscreen (else it aborts looking for one).
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from client_demo.qt.run import run

    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV, "")
    return run(base, args, token, say)


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


if __name__ == "__main__":
    sys.exit(main())
