"""Plain helpers of a test against a relay: connect, subscribe, read tweet frames, wait,
build a filtered-stream line, read a counter. Lower level than
:class:`relay.testing.RelayClient`; nothing here imports pytest.

``RunningRelay`` and ``PushSource`` are still importable from here (deprecated:
:mod:`relay.testing.deprecated`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from websockets.sync.client import ClientConnection, connect

from relay.testing.deprecated import PushSource, RunningRelay
from relay.testing.source import UNIT

__all__ = [
    "PushSource",
    "RunningRelay",
    "counted",
    "receive_tweets",
    "stream_line",
    "subscribe",
    "wait_for",
    "ws_connect",
]


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
