"""The terminal view of the demo client: a live table of the newest tweets and a status line.

Terminals and rich do not always agree on how wide a character is (joined emoji, skin
tones, flags, Indic vowel signs: rich draws a Devanagari vowel sign in no cell of its
own, tmux, xterm and VTE give it one): a line rich thinks fits may wrap in the terminal
and push every line below it down, or end short of the right edge and leave what the
last frame had there. So the view never relies on the two agreeing: it is drawn on the
alternate screen, one tweet a line (line breaks and control characters out), as many
lines as the terminal has, each line is erased before it is drawn, line wrapping is off
while it runs (:data:`NO_WRAP`): a line the terminal finds too long is cut at the edge
instead of wrapping, and every column border is drawn at the column rich chose for it
(the cursor is moved there first), so a cell the terminal draws wider or narrower than
rich measured it never moves the borders after it: its text is cut at the border, or
ends short of it.
"""

from __future__ import annotations

import time
import unicodedata
from collections import deque
from collections.abc import Iterator
from typing import Any

from rich.box import HEAVY_HEAD
from rich.console import Console, ConsoleOptions, Group, RenderableType
from rich.control import Control
from rich.segment import ControlType, Segment
from rich.table import Table
from rich.text import Text

from client_demo.stream import Event

NO_WRAP = "\x1b[?7l"
"""DECAWM off: a line too long for the terminal is cut at the edge, never wrapped."""
WRAP = "\x1b[?7h"
"""DECAWM back on, as the terminal had it."""
CHROME_LINES = 5
"""Lines of the view that are not tweets: the status line and the table's borders and header."""
KEEP = 1000
"""Tweets the view keeps: more than any terminal has lines; what the screen shows is cut
to its height at each frame."""
BOX = HEAVY_HEAD
BORDERS = frozenset(
    (BOX.head_left, BOX.head_vertical, BOX.head_right, BOX.mid_left, BOX.mid_vertical,
     BOX.mid_right)
)  # fmt: skip
"""The characters of the table's vertical borders, as rich emits them (one a segment)."""
# Escapes, not the characters: invisible ones in the source would hide what is there.
LINE_BREAKS = frozenset("\n\r\t\v\f\x1c\x1d\x1e\x85\u2028\u2029")
"""Characters that end a line or move to a tab stop: each becomes a space."""
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""Marks, embeddings, overrides and isolates: a terminal that applies them would reorder
the rest of the table's line, so the live view leaves them out (piped output keeps them)."""


class LiveView:
    """Keeps the newest tweets and renders them with rich."""

    def __init__(self, keep: int = KEEP) -> None:
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
        elif event.kind == "deleted":
            kept = [row for row in self.tweets if str(row[2].get("id")) != event.message]
            self.tweets.clear()
            self.tweets.extend(kept)
        elif event.kind == "reset":
            self.tweets.clear()
            self.status = f"reset: {event.message}"
        else:
            self.status = event.message

    def rate(self) -> float:
        now = time.monotonic()
        recent = [t for t in self._arrivals if now - t <= 5]
        return len(recent) / 5

    def render(self, height: int | None = None, width: int = 120) -> RenderableType:
        """The status line and the table, with as many tweets as ``height`` lines hold;
        on a narrow terminal the author column shrinks and the rules go, so the text
        keeps room."""
        table = Table(box=BOX, expand=True, show_lines=False, header_style="bold cyan")
        table.add_column("seq", justify="right", width=7, no_wrap=True)
        table.add_column(
            "author", width=18 if width >= 90 else 10, overflow="ellipsis", no_wrap=True
        )
        table.add_column("tweet", ratio=1, overflow="ellipsis", no_wrap=True)
        with_rules = width >= 70
        if with_rules:
            table.add_column("rules", width=14, overflow="ellipsis", no_wrap=True)
        rows = list(self.tweets)
        if height is not None:
            rows = rows[: max(0, height - CHROME_LINES)]
        for seq, _, tweet in rows:
            author = author_of(tweet)
            cells: list[RenderableType] = [
                str(seq),
                "@" + one_line(str(author)),
                tweet_text(tweet),
            ]
            if with_rules:
                cells.append(one_line(", ".join(str(rule) for rule in tweet.get("rules") or [])))
            table.add_row(*cells)
        # The numbers first: on a narrow terminal the status text is what gets cut.
        status = Text.assemble(
            ("● ", "green" if self.status.startswith("subscribed") else "yellow"),
            f"seq {self.seq}  {self.count} received  {self.rate():.1f}/s  ",
            (one_line(self.status), "bold"),
            no_wrap=True,
            overflow="ellipsis",
        )
        return Group(status, table)


class FitScreen:
    """The view cut to the screen: at most its height in lines, each line padded to the
    width and erased before it is drawn (see the module's docstring)."""

    def __init__(self, view: LiveView) -> None:
        self.view = view

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        height = options.height or console.size.height
        lines = console.render_lines(
            self.view.render(height, options.max_width), options.update(height=None), pad=True
        )[:height]
        # Erase the whole line before drawing it, not after: with wrapping off, the cursor
        # stays on the last column after a full line, and erasing from there would take
        # that column's character away.
        erase = Control((ControlType.ERASE_IN_LINE, 2)).segment
        for number, line in enumerate(lines):
            yield erase
            column = 0
            for segment in line:
                if segment.text in BORDERS and not segment.control:
                    yield Control.move_to_column(column).segment
                yield segment
                column += segment.cell_length
            if number < len(lines) - 1:
                yield Segment.line()


def plain_text(text: str) -> str:
    """``text`` on one line, every character kept but these: line breaks and tabs become
    spaces, other C0 and C1 control characters (escape sequences start with one) go.
    Zero-width joiners, variation selectors and bidi marks stay: ``👩🏽‍💻`` stays one
    person at a laptop."""
    out: list[str] = []
    for char in text:
        if char in LINE_BREAKS:
            out.append(" ")
        elif unicodedata.category(char) != "Cc":
            out.append(char)
    return "".join(out)


def one_line(text: str) -> str:
    """``text`` for the live view: :func:`plain_text` without bidi controls (see
    :data:`BIDI_CONTROLS`). Joined emoji stay joined: rich measures a grapheme as one."""
    return "".join(char for char in plain_text(text) if char not in BIDI_CONTROLS)


def plain_line(seq: int, tweet: dict[str, Any]) -> str:
    """One tweet on one line, for output that is not a terminal: seq, author, text."""
    line = f"{seq}  @{plain_text(str(author_of(tweet)))}  {plain_text(str(tweet.get('text', '')))}"
    if tweet.get("media"):
        line += f"  [{len(tweet['media'])} media]"
    return line


def author_of(tweet: dict[str, Any]) -> Any:
    return (tweet.get("author") or {}).get("username") or tweet.get("author_id") or "?"


def tweet_text(tweet: dict[str, Any]) -> Text:
    """The text with hashtags, mentions and links highlighted (as markup-free rich Text)."""
    raw = str(tweet.get("text", ""))
    # Where each character of the text lands once cleaned (entities give offsets in it).
    where: list[int] = []
    pieces: list[str] = []
    offset = 0
    for char in raw:
        where.append(offset)
        pieces.append(one_line(char))
        offset += len(pieces[-1])
    where.append(offset)
    text = Text("".join(pieces))
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
            if isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(raw):
                text.stylize(style, where[start], where[end])
    if tweet.get("media"):
        text.append(f"  [{len(tweet['media'])} media]", style="dim")
    return text
