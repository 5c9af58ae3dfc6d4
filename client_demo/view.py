"""The terminal view of the demo client: a live table of the newest tweets and a status line."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from client_demo.stream import Event


class LiveView:
    """Keeps the newest tweets and renders them with rich."""

    def __init__(self, keep: int = 15) -> None:
        self.tweets: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=keep)
        self.status = "connecting"
        self.seq = 0
        self.count = 0
        self._arrivals: deque[float] = deque(maxlen=500)

    def update(self, event: Event) -> None:
        if event.kind == "tweet":
            self.tweets.appendleft((event.seq, event.channel, event.tweet))
            self.seq = max(self.seq, event.seq)
            self.count += 1
            self._arrivals.append(time.monotonic())
        elif event.kind == "reset":
            self.tweets.clear()
            self.status = f"reset: {event.message}"
        else:
            self.status = event.message

    def rate(self) -> float:
        now = time.monotonic()
        recent = [t for t in self._arrivals if now - t <= 5]
        return len(recent) / 5

    def render(self) -> RenderableType:
        table = Table(expand=True, show_lines=False, header_style="bold cyan")
        table.add_column("seq", justify="right", width=7)
        table.add_column("author", width=18, overflow="ellipsis", no_wrap=True)
        table.add_column("tweet", ratio=1, overflow="fold")
        table.add_column("rules", width=14, overflow="ellipsis", no_wrap=True)
        for seq, _, tweet in self.tweets:
            author = (tweet.get("author") or {}).get("username") or tweet.get("author_id") or "?"
            table.add_row(
                str(seq), "@" + author, tweet_text(tweet), ", ".join(tweet.get("rules") or [])
            )
        status = Text.assemble(
            ("● ", "green" if self.status.startswith("subscribed") else "yellow"),
            (self.status, "bold"),
            f"   seq {self.seq}   {self.count} received   {self.rate():.1f} tweets/s",
        )
        return Group(status, table)


def tweet_text(tweet: dict[str, Any]) -> Text:
    """The text with hashtags, mentions and links highlighted (as markup-free rich Text)."""
    text = Text(str(tweet.get("text", "")))
    entities = tweet.get("entities") or {}
    styles = {
        "hashtags": "magenta",
        "mentions": "cyan",
        "urls": "underline blue",
        "cashtags": "green",
    }
    for kind, style in styles.items():
        for entity in entities.get(kind) or []:
            start, end = entity.get("start"), entity.get("end")
            if isinstance(start, int) and isinstance(end, int):
                text.stylize(style, start, end)
    if tweet.get("media"):
        text.append(f"  [{len(tweet['media'])} media]", style="dim")
    return text
