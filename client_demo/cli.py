"""``relay-demo``: watch a relay's stream live in the terminal, or pipe it as JSON lines.

Exit status: 0 when stopped (Ctrl-C, or the reader of its output went away), 1 when the
relay cannot be reached or refuses the token, 2 for a usage error or a channel that does
not exist or is not granted. Every error is one line on stderr, never wrapped.

Off a terminal, what it writes is made for the reader: ``--json`` writes each tweet
object exactly as the relay sent it, and plain lines keep every character of the text but
line breaks and control characters. A reader that goes away ends it, even while no tweet
comes: as ``tail -f`` does, it checks every :data:`OUTPUT_CHECK` seconds whether its
output is still read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import select
import stat
import sys
from collections.abc import Coroutine, Sequence
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import orjson
from rich.console import Console
from rich.live import Live

from client_demo.stream import DemoError, ResumingStream, member_text
from client_demo.view import NO_WRAP, WRAP, FitScreen, LiveView, plain_line

try:  # from the installed distribution's metadata: a client imports nothing of the relay
    __version__ = version("tweet-relay")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

TOKEN_ENV = "RELAY_DEMO_TOKEN"
"""The client's own name for its token (the server's settings are ``RELAY_*`` too, but
none is named so)."""
OUTPUT_CHECK = 0.5
"""Seconds between two checks that the output is still read (a closed pipe ends the client
when no tweet comes to find it out)."""


def say(message: str) -> None:
    """One line on stderr, whatever the terminal width (never wrapped, no markup)."""
    try:
        sys.stderr.write(f"relay-demo: {' '.join(message.split())}\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay-demo",
        description="Show a tweet-relay stream live; resumes without gaps across reconnects.",
        epilog="examples: relay-demo | relay-demo --channel rule:cats | "
        "relay-demo --json > tweets.jsonl | relay-demo --since-time -15m --sse",
    )
    parser.add_argument(
        "url",
        nargs="?",
        default="http://localhost:8080",
        help="the relay (http:// or ws://), default http://localhost:8080",
    )
    parser.add_argument(
        "--channel",
        action="append",
        dest="channels",
        metavar="C",
        help="channel to follow, repeatable (default: tweets)",
    )
    parser.add_argument(
        "--token", help=f"access token, when the relay is not public (or set {TOKEN_ENV})"
    )
    parser.add_argument(
        "--token-command",
        metavar="CMD",
        help="command that prints a fresh token; run when the relay asks for a refresh",
    )
    parser.add_argument("--version", action="version", version=f"relay-demo {__version__}")
    parser.add_argument(
        "--since", type=int, metavar="SEQ", help="start after this seq of the relay's current epoch"
    )
    parser.add_argument(
        "--since-time",
        metavar="TIME",
        help="start at the tweets the relay received since TIME: ISO 8601 "
        "(2026-12-07T06:00:00Z; no zone means UTC) or a time back (-30s, -15m, -1h, -7d)",
    )
    parser.add_argument(
        "--sse",
        action="store_true",
        help="read the stream as server-sent events (GET /v1/events) instead of WebSocket",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one tweet object a line on stdout, nothing else"
    )
    return parser


_TIME_BACK = re.compile(r"-\d{1,9}[smhd]", re.ASCII)


def since_time_problem(value: str) -> str | None:
    """Why ``value`` is no ``--since-time`` (the relay's own rule: an ISO 8601 time or a
    time back like ``-15m``), or None when it is one."""
    if _TIME_BACK.fullmatch(value):
        return None
    if len(value) <= 64 and value[:1].isdigit():
        try:
            datetime.fromisoformat(value)
            return None
        except ValueError:
            pass
    return (
        f"--since-time must be an ISO 8601 time (2026-12-07T06:00:00Z) or a time back "
        f"(-30s, -15m, -1h, -7d), not {value[:40]!r}"
    )


def _time_back_values(argv: Sequence[str]) -> list[str]:
    """``--since-time -15m`` as ``--since-time=-15m``: argparse would take a value that
    starts with a dash for an option of its own."""
    joined: list[str] = []
    args = iter(argv)
    for arg in args:
        value = next(args, None) if arg == "--since-time" else None
        joined.append(arg if value is None else f"{arg}={value}")
    return joined


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_time_back_values(sys.argv[1:] if argv is None else argv))
    if args.since is not None and args.since < 0:
        say("--since must be 0 or more")
        return 2
    if args.since_time is not None:
        problem = since_time_problem(args.since_time)
        if args.since is not None:
            problem = "give --since or --since-time, not both"
        if problem:
            say(problem)
            return 2
    token = args.token or os.environ.get(TOKEN_ENV) or None
    try:
        stream = ResumingStream(
            args.url,
            args.channels or ["tweets"],
            token=token,
            token_command=args.token_command,
            since=args.since,
            since_time=args.since_time,
            transport="sse" if args.sse else "ws",
        )
        asyncio.run(_print_json(stream) if args.json else _show(stream))
    except _OutputClosed:
        return _reader_gone()
    except DemoError as exc:
        say(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return _reader_gone()
    return 0


class _OutputClosed(Exception):
    """The reader of stdout went away while nothing was written."""


def _reader_gone() -> int:
    """The reader went away (``relay-demo | head``): a normal end. Point stdout at
    /dev/null so that the interpreter's last flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 0


async def _output_closed(fd: int, every: float) -> None:
    """Returns once ``fd`` reports an error or a hang-up (the read end of a pipe closed, a
    socket shut, a terminal gone), checked every ``every`` seconds; never for a file."""
    if not hasattr(select, "poll") or stat.S_ISREG(os.fstat(fd).st_mode):
        await asyncio.Event().wait()  # nothing to watch: a file is never closed by a reader
        return
    poller = select.poll()
    poller.register(fd, 0)  # no event asked: only what poll always reports (ERR, HUP, NVAL)
    while not poller.poll(0):
        await asyncio.sleep(every)


async def _while_read(job: Coroutine[Any, Any, None]) -> None:
    """Runs ``job`` until it ends or the output's reader goes away (:class:`_OutputClosed`)."""
    work = asyncio.create_task(job)
    watch = asyncio.create_task(_output_closed(sys.stdout.fileno(), OUTPUT_CHECK))
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work  # its result, or its error
    if watch.done() and not watch.cancelled():
        raise _OutputClosed


async def _print_json(stream: ResumingStream) -> None:
    await _while_read(_write_lines(stream, json=True))


async def _write_lines(stream: ResumingStream, *, json: bool) -> None:
    """One line a tweet on stdout, as it comes: the object as the relay sent it
    (``json``), or :func:`plain_line`; what else happens, on stderr."""
    # Buffered whatever PYTHONUNBUFFERED says: its raw file may write part of a line to a
    # pipe when Ctrl-Z stops the client, and the rest would be lost.
    out = open(sys.stdout.fileno(), "wb", closefd=False)  # noqa: SIM115
    async with contextlib.aclosing(stream.events()) as events:
        async for event in events:
            if event.kind == "tweet":
                if json:
                    text = member_text(event.frame, "tweet") if event.frame else None
                    line = text.encode() if text is not None else orjson.dumps(event.tweet)
                else:
                    line = plain_line(event.seq, event.tweet).encode(errors="replace")
                out.write(line + b"\n")
                out.flush()
            elif event.kind in ("status", "reset", "error"):
                say(event.message)


async def _show(stream: ResumingStream) -> None:
    view = LiveView()
    console = Console()
    if not console.is_terminal:  # not a terminal: one line a tweet, as it comes
        await _while_read(_write_lines(stream, json=False))
        return
    console.file.write(NO_WRAP)
    try:
        with Live(
            FitScreen(view), console=console, refresh_per_second=8, screen=True, transient=True
        ):
            async with contextlib.aclosing(stream.events()) as events:
                async for event in events:
                    view.update(event)
    finally:
        console.file.write(WRAP)
        console.file.flush()


if __name__ == "__main__":
    sys.exit(main())
