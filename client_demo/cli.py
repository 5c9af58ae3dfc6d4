"""``relay-demo``: watch a relay's stream live in the terminal, or pipe it as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import orjson
from rich.console import Console
from rich.live import Live

from client_demo.stream import DemoError, ResumingStream
from client_demo.view import LiveView

console = Console(stderr=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay-demo",
        description="Show a tweet-relay stream live; resumes without gaps across reconnects.",
        epilog="examples: relay-demo | relay-demo --channel rule:cats | "
        "relay-demo --json > tweets.jsonl",
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
    parser.add_argument("--token", help="access token, when the relay is not public")
    parser.add_argument(
        "--since", type=int, metavar="SEQ", help="start after this seq of the relay's current epoch"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one tweet object a line on stdout, nothing else"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.since is not None and args.since < 0:
        console.print("[bold red]relay-demo:[/] --since must be 0 or more")
        return 2
    stream = ResumingStream(
        args.url, args.channels or ["tweets"], token=args.token, since=args.since
    )
    try:
        asyncio.run(_print_json(stream) if args.json else _show(stream))
    except DemoError as exc:
        console.print(f"[bold red]relay-demo:[/] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


async def _print_json(stream: ResumingStream) -> None:
    out = sys.stdout.buffer
    async for event in stream.events():
        if event.kind == "tweet":
            out.write(orjson.dumps(event.tweet) + b"\n")
            out.flush()
        elif event.kind in ("status", "reset", "error"):
            console.print(f"[dim]relay-demo: {event.message}[/]", highlight=False)


async def _show(stream: ResumingStream) -> None:
    view = LiveView()
    with Live(view.render(), console=Console(), refresh_per_second=8, screen=False) as live:
        async for event in stream.events():
            view.update(event)
            live.update(view.render())


if __name__ == "__main__":
    sys.exit(main())
