"""The window's state, as QML sees it: the channel followed, its tweets, the stats line,
search, and one status line that always says what the client is doing.

A channel opens with ``GET /v1/info`` (the channels, the event stream's URL, the epoch),
then its newest stored tweets from the object API, then the event stream from the seq of
the newest of them (``since=<epoch>:<seq>``): no gap and no duplicate between the two.
Whenever the stream ends for a reason another try may fix (the relay restarted, the
network went away) it is opened again after a backoff with jitter, from the last tweet
received. What no retry fixes (no token, a refused one, a channel the relay does not
have) is said once and waits for the person.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Property, QObject, QTimer, Signal, Slot

from client_demo.qt.events import (
    STATS,
    Info,
    Step,
    backoff,
    read_event,
    read_info,
    read_listing,
    refusal,
    unreachable,
)
from client_demo.qt.feed import HISTORY, KEEP, stats_line
from client_demo.qt.link import Answer, EventStream, Link
from client_demo.qt.model import TweetModel
from client_demo.sse import ServerEvent

BATCH_MS = 50
"""How often waiting tweets go into the list (``--batch-ms``; 0: each at once)."""
SEARCH_LIMIT = 50


class Session(QObject):
    statusChanged = Signal()
    statsChanged = Signal()
    channelsChanged = Signal()
    tokenNeededChanged = Signal()
    liveChanged = Signal()
    searchChanged = Signal()

    def __init__(
        self,
        base: str,
        channel: str = "tweets",
        token: str = "",
        keep: int = KEEP,
        batch_ms: int = BATCH_MS,
        say: Callable[[str], None] | None = None,
        rng: random.Random | None = None,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.link = Link(base, token, self)
        self.model = TweetModel(keep, self)
        self.results = TweetModel(SEARCH_LIMIT, self)
        self._channel = channel
        self._status = "connecting to " + base
        self._stats = ""
        self._channels: list[str] = [channel]
        self._token_needed = False
        self._live = False
        self._search = ""
        self._info: Info | None = None
        self._stream: EventStream | None = None
        self._attempt = 0
        self._say = say or _stderr
        self._rng = rng or random.Random()
        self._generation = 0  # a newer start makes the answers of an older one stale
        self.batch_ms = batch_ms
        self.flush_timer = QTimer(self)
        self.flush_timer.setInterval(max(1, batch_ms))
        self.flush_timer.timeout.connect(self.model.flush)
        self.retry_timer = QTimer(self)
        self.retry_timer.setSingleShot(True)
        self.retry_timer.timeout.connect(self._reconnect)

    # -- what QML reads -----------------------------------------------------------------

    def _get_status(self) -> str:
        return self._status

    def _get_stats(self) -> str:
        return self._stats

    def _get_channels(self) -> list[str]:
        return self._channels

    def _get_channel(self) -> str:
        return self._channel

    def _get_token_needed(self) -> bool:
        return self._token_needed

    def _get_live(self) -> bool:
        return self._live

    def _get_search(self) -> str:
        return self._search

    def _get_tweets(self) -> TweetModel:
        return self.model

    def _get_results(self) -> TweetModel:
        return self.results

    status = Property(str, _get_status, notify=statusChanged)
    stats = Property(str, _get_stats, notify=statsChanged)
    channels = Property(list, _get_channels, notify=channelsChanged)
    channel = Property(str, _get_channel, notify=channelsChanged)
    tokenNeeded = Property(bool, _get_token_needed, notify=tokenNeededChanged)
    live = Property(bool, _get_live, notify=liveChanged)
    searchStatus = Property(str, _get_search, notify=searchChanged)
    tweets = Property(QObject, _get_tweets, constant=True)
    searchResults = Property(QObject, _get_results, constant=True)

    # -- what QML does ------------------------------------------------------------------

    @Slot()
    def start(self) -> None:
        """Open the channel from scratch: info, its stored tweets, then the stream."""
        self._generation += 1
        generation = self._generation
        self._close_stream()
        self.retry_timer.stop()
        if self.batch_ms > 0:
            self.flush_timer.start()
        self.link.get(
            self.link.base + "/v1/info", None, lambda answer: self._got_info(generation, answer)
        )

    @Slot(str)
    def openChannel(self, channel: str) -> None:
        if channel and channel != self._channel:
            self._channel = channel
            self.channelsChanged.emit()
            self.model.start("", [], 0)
            self.start()

    @Slot(str)
    def giveToken(self, token: str) -> None:
        """A token typed in: go on from the last tweet shown (or open the channel)."""
        self.link.token = token.strip()
        self._set_token_needed(False)
        self._attempt = 0
        if self._info and self.model.tweets.position.since():
            self._set_status("opening the stream with the new token")
            self._open_stream(self._generation)
        else:
            self.start()

    @Slot()
    def reconnect(self) -> None:
        """Open the stream again now, from the last tweet shown (the window's button
        after the client stopped: too many connections, a channel refused)."""
        self._attempt = 0
        self.retry_timer.stop()
        self._reconnect()

    @Slot(str, bool)
    def search(self, text: str, all_channels: bool) -> None:
        text = text.strip()
        if not text:
            self.results.show([])
            self._set_search("")
            return
        where = "all channels" if all_channels or self._channel == "tweets" else self._channel
        params: dict[str, Any] = {"search": text, "limit": SEARCH_LIMIT}
        if where != "all channels":
            params["rule"] = where.removeprefix("rule:")
        url = self._info.objects_url if self._info else self.link.base + "/v1/objects/tweets"
        self._set_search(f"searching {where}…")

        def done(answer: Answer) -> None:
            listing = read_listing(answer.body) if answer.status == 200 else None
            if listing is not None:
                self.results.show(listing[0])
                self._set_search(f"{listing[1]} found in {where}")
            elif answer.status == 200:
                self._set_search(f"{url} answered something other than a listing")
            elif answer.status:
                self._set_search(refusal(answer.status, answer.body, self.link.token).message)
            else:
                self._set_search(unreachable(self.link.base, answer.error).message)

        self.link.get(url, params, done)

    # -- the steps ----------------------------------------------------------------------

    def _got_info(self, generation: int, answer: Answer) -> None:
        if generation != self._generation:
            return
        if answer.status != 200:
            self._do(self._failure(answer))
            return
        info = read_info(answer.body, self.link.base)
        if info is None:
            self._do(Step("retry", f"{self.link.base}/v1/info is not a relay's answer"))
            return
        self._info = info
        channels = info.channels
        self._channels = channels if self._channel in channels else [*channels, self._channel]
        self.channelsChanged.emit()
        params: dict[str, Any] = {"limit": min(HISTORY, self.model.tweets.keep), "sort": "-seq"}
        if self._channel.startswith("rule:"):
            params["rule"] = self._channel.removeprefix("rule:")

        def history(answer: Answer) -> None:
            if generation != self._generation:
                return
            listing = read_listing(answer.body) if answer.status == 200 else None
            if listing is None:
                failed = Step(
                    "retry", f"{info.objects_url} answered something other than a listing"
                )
                self._do(self._failure(answer) if answer.status != 200 else failed)
                return
            self.model.start(info.epoch, listing[0], info.head)
            self._open_stream(generation)

        self.link.get(info.objects_url, params, history)

    def _open_stream(self, generation: int) -> None:
        self._close_stream()
        if self.batch_ms > 0 and not self.flush_timer.isActive():
            self.flush_timer.start()
        params: dict[str, Any] = {"channel": [self._channel, STATS]}
        since = self.model.tweets.position.since()
        if since:
            params["since"] = since
        url = self._info.events_url if self._info else self.link.base + "/v1/events"
        self._stream = self.link.stream(
            url,
            params,
            lambda event: self._event(generation, event),
            lambda answer: self._ended(generation, answer),
        )

    def _event(self, generation: int, event: ServerEvent) -> None:
        if generation != self._generation:
            return
        step = read_event(event, self._channel)
        if step is not None:
            self._do(step)

    def _ended(self, generation: int, answer: Answer) -> None:
        if generation != self._generation:
            return
        self._stream = None
        self._set_live(False)
        if answer.status == 200:
            self._do(Step("retry", "the relay ended the stream"))
        else:
            self._do(self._failure(answer))

    def _failure(self, answer: Answer) -> Step:
        if answer.status:
            return refusal(answer.status, answer.body, self.link.token)
        return unreachable(self.link.base, answer.error)

    def _do(self, step: Step) -> None:
        kind, frame = step.kind, step.frame
        if kind == "tweet":
            if self.model.receive(frame) and self.batch_ms <= 0:
                self.model.flush()
        elif kind == "subscribed":
            self.model.subscribed(frame["epoch"], frame["seq"])
            self._attempt = 0
            self._set_live(True)
            self._set_status(step.message)
        elif kind == "reset":
            self.model.reset(frame["epoch"], frame["seq"])
            self._set_status(step.message)
        elif kind == "deleted":
            self.model.delete(step.message)
        elif kind == "stats":
            self._stats = stats_line(frame)
            self.statsChanged.emit()
        elif kind == "say":
            self._set_status(step.message)
        elif kind == "retry":
            self._close_stream()
            self._set_live(False)
            delay = backoff(self._attempt, self._rng)
            self._attempt += 1
            self._set_status(f"{step.message}; retrying in {delay:.1f} s")
            self.retry_timer.start(int(delay * 1000))
        elif kind == "token":
            self._close_stream()
            self._set_live(False)
            self._set_status(step.message)
            self._set_token_needed(True)
        elif kind == "stop":
            self._close_stream()
            self._set_live(False)
            self._set_status(step.message)

    def _reconnect(self) -> None:
        if self._info and self.model.tweets.position.since():
            self._set_status(f"reconnecting to {self.link.base}")
            self._open_stream(self._generation)
        else:
            self.start()

    def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def stop(self) -> None:
        """Close the stream and try nothing more (until :meth:`reconnect` or a token)."""
        self._generation += 1
        self._close_stream()
        self.retry_timer.stop()
        self.flush_timer.stop()
        self._set_live(False)

    def _set_status(self, text: str) -> None:
        if text != self._status:
            self._status = text
            self.statusChanged.emit()
            self._say(text)

    def _set_token_needed(self, needed: bool) -> None:
        if needed != self._token_needed:
            self._token_needed = needed
            self.tokenNeededChanged.emit()

    def _set_live(self, live: bool) -> None:
        if live != self._live:
            self._live = live
            self.liveChanged.emit()

    def _set_search(self, text: str) -> None:
        self._search = text
        self.searchChanged.emit()


def _stderr(text: str) -> None:
    try:
        sys.stderr.write(f"relay-qt: {' '.join(text.split())}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
