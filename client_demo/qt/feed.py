"""The Qt client's logic, without Qt: what a row shows, which tweets the list keeps, and
where the stream resumes. Everything here is plain Python, tested on its own; the list
model (:mod:`client_demo.qt.model`) and the network (:mod:`client_demo.qt.link`) only
carry it out.

The list shows the newest tweets first. Tweets coming from the stream wait in
``pending`` until :meth:`TweetList.take_batch` moves them in (the window does so every
50 ms): at 250 tweets/s the view then inserts a dozen rows at a time instead of redrawing
for each, and never more than ``keep`` rows are held.
"""

from __future__ import annotations

import html
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Any

KEEP = 500
"""Rows the list keeps by default (``--keep``)."""
HISTORY = 20
"""Stored tweets a channel opens with, from the object API, before the live ones."""

# Unicode's first-strong isolate and its end: a hashtag or a mention inside a
# right-to-left tweet keeps its # and @ in front, as the page's dir="auto" does.
ISOLATE, END_ISOLATE = "\u2068", "\u2069"
LINK_KINDS = ("urls", "hashtags", "mentions", "cashtags")


@dataclass(frozen=True, slots=True)
class Row:
    """One tweet as the list draws it."""

    seq: int
    tweet_id: str
    author: str
    text: str
    """The text as Qt's styled text: escaped, with its links as ``<a href>``."""
    time: str
    media: int
    rules: str
    right_to_left: bool


def row_of(tweet: dict[str, Any]) -> Row:
    """A tweet object (the stream's or the object API's: the same object) as a row."""
    author = tweet.get("author") or {}
    username = author.get("username") if isinstance(author, dict) else None
    rules = tweet.get("rules") or []
    media = tweet.get("media") or []
    text = str(tweet.get("text", ""))
    return Row(
        seq=int(tweet.get("seq") or 0),
        tweet_id=str(tweet.get("id", "")),
        author=str(username or tweet.get("author_id") or "?"),
        text=styled_text(text, tweet.get("entities")),
        time=clock_time(str(tweet.get("created_at") or tweet.get("createdAt") or "")),
        media=len(media) if isinstance(media, list) else 0,
        rules=" ".join(f"#{rule}" for rule in rules if isinstance(rule, str)),
        right_to_left=is_right_to_left(_without_entities(text, tweet.get("entities"))),
    )


def styled_text(text: str, entities: Any) -> str:
    """``text`` escaped for Qt's styled text, each entity (code-point offsets, as the API
    gives them) a link isolated in its own direction; a link goes only to http(s)."""
    spans: list[tuple[int, int, str, str]] = []
    if isinstance(entities, dict):
        for kind in LINK_KINDS:
            for entity in entities.get(kind) or []:
                if not isinstance(entity, dict):
                    continue
                start, end = entity.get("start"), entity.get("end")
                if isinstance(start, int) and isinstance(end, int) and 0 <= start < end:
                    target = _target(kind, entity, text[start:end])
                    display = str(entity.get("display_url") or "") if kind == "urls" else ""
                    spans.append((start, end, target, display))
    spans.sort()
    pieces: list[str] = []
    at = 0
    for start, end, target, display in spans:
        if start < at or end > len(text):
            continue  # overlapping or past the text: shown as plain text
        pieces.append(_plain(text[at:start]))
        shown = _plain(display or text[start:end])
        if target:
            pieces.append(f'{ISOLATE}<a href="{html.escape(target)}">{shown}</a>{END_ISOLATE}')
        else:
            pieces.append(f"{ISOLATE}{shown}{END_ISOLATE}")
        at = end
    pieces.append(_plain(text[at:]))
    return "".join(pieces)


def _without_entities(text: str, entities: Any) -> str:
    """The text less its hashtags, mentions and links: its direction is its words' (an
    isolated span does not count for the first strong letter, as in the page)."""
    if not isinstance(entities, dict):
        return text
    chars = list(text)
    for kind in LINK_KINDS:
        for entity in entities.get(kind) or []:
            start, end = (
                (entity.get("start"), entity.get("end"))
                if isinstance(entity, dict)
                else (None, None)
            )
            if isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(chars):
                chars[start:end] = [" "] * (end - start)
    return "".join(chars)


def _plain(text: str) -> str:
    return html.escape(text, quote=False).replace("\n", "<br>")


def _target(kind: str, entity: dict[str, Any], shown: str) -> str:
    if kind == "urls":
        url = str(entity.get("expanded_url") or entity.get("url") or "")
        return url if url.startswith(("https://", "http://")) else ""
    if kind == "mentions":
        return "https://x.com/" + (str(entity.get("username") or shown.lstrip("@")))
    return "https://x.com/search?q=" + shown.replace("#", "%23").replace("$", "%24")


def clock_time(iso: str) -> str:
    """``2026-01-01T12:03:04.000Z`` as ``12:03:04`` in this computer's time zone, as the
    page shows it."""
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
        return moment.astimezone().strftime("%H:%M:%S")
    except ValueError:
        return ""


def is_right_to_left(text: str) -> bool:
    """Whether the first strong letter of ``text`` is right-to-left (Arabic, Hebrew, ...)."""
    for char in text:
        kind = unicodedata.bidirectional(char)
        if kind in ("R", "AL"):
            return True
        if kind == "L":
            return False
    return False


@dataclass
class Position:
    """Where the stream resumes: the store's epoch and the last seq the list received."""

    epoch: str = ""
    seq: int | None = None

    def since(self) -> str | None:
        """The ``since`` of an event stream (``<epoch>:<seq>``), or None to start live."""
        if self.epoch and self.seq is not None:
            return f"{self.epoch}:{self.seq}"
        return None


class TweetList:
    """The rows of a channel, newest first, at most ``keep``, and the tweets waiting."""

    def __init__(self, keep: int = KEEP) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self.rows: list[Row] = []
        self.pending: list[Row] = []
        self.position = Position()

    def set_keep(self, keep: int) -> int:
        """Keep ``keep`` rows from now on; the number of rows to drop at the end."""
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        return max(0, len(self.rows) - keep)

    def receive(self, tweet: dict[str, Any]) -> bool:
        """A tweet from the stream: waits for the next batch unless the list already has
        its seq (a resume never shows a tweet twice). Whether it was taken."""
        seq = tweet.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return False
        if self.position.seq is not None and seq <= self.position.seq:
            return False
        self.position.seq = seq
        self.pending.append(row_of(tweet))
        return True

    def subscribed(self, epoch: str, seq: int) -> None:
        """The relay's ``subscribed``: a list that holds no position starts from its head."""
        if self.position.seq is None or not self.position.epoch:
            self.position = Position(epoch, seq)

    def reset(self, epoch: str, seq: int) -> None:
        """The relay's ``reset``: what the list holds no longer names the relay's tweets."""
        self.rows.clear()
        self.pending.clear()
        self.position = Position(epoch, seq)

    def start(self, epoch: str, history: list[dict[str, Any]], head: int) -> None:
        """A channel opened: its newest stored tweets (the object API's, any order) and
        the position the stream goes on from (the newest of them, else the head)."""
        rows = sorted((row_of(t) for t in history), key=lambda row: row.seq, reverse=True)
        self.rows = rows[: self.keep]
        self.pending.clear()
        self.position = Position(epoch, rows[0].seq if rows else head)

    def take_batch(self) -> list[Row]:
        """The waiting tweets, newest first, no more than ``keep`` of them: what goes on
        top of the list now (then :meth:`insert`, then :meth:`overflow` rows drop)."""
        batch = self.pending[::-1][: self.keep]
        self.pending.clear()
        return batch

    def insert(self, batch: list[Row]) -> None:
        self.rows[:0] = batch

    def overflow(self) -> int:
        """How many of the oldest rows are past ``keep``."""
        return max(0, len(self.rows) - self.keep)

    def trim(self) -> None:
        del self.rows[self.keep :]

    def index_of(self, tweet_id: str) -> int | None:
        """The row showing tweet ``tweet_id``; a deleted tweet still waiting is dropped."""
        self.pending = [row for row in self.pending if row.tweet_id != tweet_id]
        for index, row in enumerate(self.rows):
            if row.tweet_id == tweet_id:
                return index
        return None


def stats_line(stats: dict[str, Any]) -> str:
    """The ``$stats`` sample as one line, as the page's panel shows it."""
    try:
        store = stats.get("store") or {}
        size, wal = int(store.get("size_bytes") or 0), int(store.get("wal_bytes") or 0)
        disk = human_bytes(size - wal) + (f" + {human_bytes(wal)} WAL" if wal else "")
        return (
            f"{float(stats['tweets_in_per_second']):.1f} tweets/s in · "
            f"{float(stats['frames_out_per_second']):.1f} frames/s out · "
            f"{int(stats['connections'])} connections · head #{int(stats['head_seq'])} · "
            f"store {disk}"
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        return ""


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover - the loop always returns
