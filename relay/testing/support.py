"""The relay parts the project's own tests are built on, shipped for other people's tests.

``RunningRelay`` is a real relay on 127.0.0.1, port 0, with its own event loop in a
thread; ``PushSource`` is a real Source whose lines come from the test. The stream
helpers here are the plain functions under :class:`relay.testing.RelayClient`.
Nothing here imports pytest.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from typing import Any, TypeVar

import orjson
from websockets.sync.client import ClientConnection, connect

from relay.app.relay import Relay
from relay.config import Settings
from relay.sources import RawLine
from relay.testing.http import Response, get_json
from relay.testing.source import UNIT

T = TypeVar("T")


class PushSource:
    """A Source fed by the test: ``push(line)`` from any thread, ``end()`` to finish."""

    name = "push"

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    async def lines(self) -> AsyncIterator[RawLine]:
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._ready.set()
        while (data := await self._queue.get()) is not None:
            yield RawLine(data, time.time())

    def push(self, *lines: bytes) -> None:
        assert self._ready.wait(UNIT), "the relay never started reading its source"
        assert self._loop is not None and self._queue is not None
        queue = self._queue

        def arrive() -> None:  # the lines of one push arrive together: one batch
            for line in lines:
                queue.put_nowait(line)

        self._loop.call_soon_threadsafe(arrive)

    def end(self) -> None:
        assert self._loop is not None and self._queue is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)


class RunningRelay:
    """A relay on 127.0.0.1, port 0, running its own event loop in a thread."""

    def __init__(self, settings: Settings, source: Any = None, **relay_args: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.relay = Relay(settings, source=source, **relay_args)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.call(self.relay.start())
        self.port = self.relay.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1/stream"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 4 * UNIT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.call(self.relay.stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(UNIT)
        self.loop.close()

    def get(self, path: str) -> Response:
        """GET a path; the status and the decoded JSON body (as :meth:`RelayServer.get`)."""
        return get_json(self.url + path, timeout=UNIT)

    def wait_stored(self, count: int, timeout: float = 4 * UNIT) -> None:
        """Wait until ``count`` tweets are stored and published (whatever the access policy)."""
        wait_for(
            lambda: self.relay.hub is not None and self.relay.hub.head >= count,
            timeout,
            f"{count} tweets stored",
        )

    def stored_ids(self) -> list[str]:
        """The ids of every stored tweet, in seq order, read from the store itself."""
        from relay.core.query import parse_tweet_query

        assert self.relay.store is not None
        query = parse_tweet_query({"sort": ["seq"], "limit": ["1000"]})
        objects, _ = self.call(self.relay.store.query(query))
        return [orjson.loads(o)["id"] for o in objects]

    def all_tweets(self, **params: str) -> list[dict[str, Any]]:
        """Every stored tweet in seq order, paging through the object API."""
        out: list[dict[str, Any]] = []
        query = "&".join(f"{k}={v}" for k, v in params.items())
        while True:
            status, body = self.get(
                f"/v1/objects/tweets?sort=seq&limit=1000&offset={len(out)}&{query}"
            )
            assert status == 200, body
            out.extend(body["results"])
            if len(body["results"]) < 1000:
                return out


def counted(counter: Any, **labels: str) -> float:
    """A Prometheus counter's total, over every label value or the ones given."""
    total = 0.0
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def ws_connect(url: str, **connect_args: Any) -> ClientConnection:
    """A connected client; closed by the test (``__enter__`` is the non-deprecated way in)."""
    connection: ClientConnection = connect(url, open_timeout=UNIT, **connect_args).__enter__()
    return connection


def subscribe(
    ws_url: str, channel: str = "tweets", since: dict[str, Any] | None = None, **connect_args: Any
) -> tuple[ClientConnection, dict[str, Any]]:
    """Connect, subscribe, and return the connection and the ``subscribed`` frame."""
    ws = ws_connect(ws_url, **connect_args)
    op: dict[str, Any] = {"op": "subscribe", "channel": channel}
    if since is not None:
        op["since"] = since
    ws.send(orjson.dumps(op).decode())
    frames: list[dict[str, Any]] = []
    while True:
        frame = orjson.loads(ws.recv(timeout=UNIT))
        if frame["type"] == "subscribed":
            if frames:  # a reset comes before its subscribed frame
                frame["_before"] = frames
            return ws, frame
        frames.append(frame)


def receive_tweets(
    ws: ClientConnection, count: int, timeout: float = 4 * UNIT
) -> list[dict[str, Any]]:
    """The next ``count`` tweet frames (other frames are skipped)."""
    deadline = time.monotonic() + timeout
    tweets: list[dict[str, Any]] = []
    while len(tweets) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"got {len(tweets)} of {count} tweets")
        frame = orjson.loads(ws.recv(timeout=remaining))
        if frame["type"] == "tweet":
            tweets.append(frame)
    return tweets


def stream_line(
    tweet_id: int | str,
    text: str = "hello",
    *,
    tags: Iterable[str] = ("cats",),
    lang: str = "en",
    author: str = "u1",
) -> bytes:
    """A filtered-stream message in the shape the X API sends."""
    return orjson.dumps(
        {
            "data": {
                "id": str(tweet_id),
                "text": text,
                "lang": lang,
                "author_id": author,
                "created_at": "2026-01-01T00:00:00.000Z",
                "edit_history_tweet_ids": [str(tweet_id)],
            },
            "includes": {"users": [{"id": author, "username": f"user_{author}", "name": author}]},
            "matching_rules": [{"id": str(1000 + i), "tag": tag} for i, tag in enumerate(tags)],
        }
    )
