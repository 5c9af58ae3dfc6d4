"""A small blocking client of the relay's stream, for tests (``docs/protocol.md``).

It keeps every frame it gets, in order (:attr:`RelayClient.frames`), so a test can assert
exact output; the helpers read tweets out of them. Every wait has a timeout and fails
with a :class:`RelayClientError` saying what came instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from relay.testing.errors import RelayClientError as RelayClientError  # its home before
from relay.testing.source import UNIT
from relay.testing.waiting import Frame, TweetWaits


class RelayClient(TweetWaits):
    """One WebSocket connection to ``ws_url`` (``token`` as ``Authorization: Bearer``)."""

    def __init__(
        self,
        ws_url: str,
        *,
        token: str | None = None,
        timeout: float = 4 * UNIT,
        **connect_args: Any,
    ) -> None:
        self.ws_url = ws_url
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else None
        # ``__enter__``: the way in that websockets does not deprecate; :meth:`close` exits.
        self.ws: ClientConnection = connect(
            ws_url, open_timeout=timeout, additional_headers=headers, **connect_args
        ).__enter__()
        self.frames: list[Frame] = []
        """Every frame received, in order."""
        self.subscribed: dict[str, Frame] = {}
        """The ``subscribed`` frame of each channel."""
        self.resets: list[Frame] = []
        """``reset`` frames: the store was replaced, or ``since`` was ahead of it."""
        self.last_seq: dict[str, int] = {}
        """The last tweet seq received on each channel (what to resume ``since``)."""
        self.history_starts: dict[str, int] = {}
        """Per channel, where kept history starts when a resume asked for older seqs
        (``history_start``: retention deleted them)."""
        self.deleted: list[Frame] = []
        """``deleted`` frames: tweets removed on request (``relay delete``)."""

    # -- operations

    def send(self, op: Mapping[str, Any]) -> None:
        self.ws.send(orjson.dumps(dict(op)).decode())

    def subscribe(
        self,
        channel: str = "tweets",
        *,
        since: Mapping[str, Any] | tuple[str, int] | None = None,
        filters: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Frame:
        """Subscribe and return the ``subscribed`` frame (frames before it are kept:
        a ``reset`` comes first when ``since`` is from another epoch or ahead)."""
        op: dict[str, Any] = {"op": "subscribe", "channel": channel}
        if since is not None:
            op["since"] = (
                {"epoch": since[0], "seq": since[1]} if isinstance(since, tuple) else dict(since)
            )
        if filters is not None:
            op["filters"] = dict(filters)
        self.send(op)
        frame = self.next_frame(
            timeout, until=lambda f: f["type"] == "subscribed" and f.get("channel") == channel
        )
        return frame

    def unsubscribe(self, channel: str = "tweets", timeout: float | None = None) -> Frame:
        self.send({"op": "unsubscribe", "channel": channel})
        return self.next_frame(timeout, until=lambda f: f["type"] == "unsubscribed")

    def next_frame(self, timeout: float | None = None, until: Any = None) -> Frame:
        """The next frame (or the next one ``until(frame)`` accepts); an ``error`` frame
        raises."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            frame = self._receive(deadline)
            if until is None or until(frame):
                return frame

    def ping(self, timeout: float | None = None) -> Frame:
        self.send({"op": "ping"})
        return self.next_frame(timeout, until=lambda f: f["type"] == "pong")

    def close(self) -> None:
        self.ws.close()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals

    def _next_tweet(self, deadline: float) -> Frame:
        while True:
            frame = self._receive(deadline)
            if frame["type"] == "tweet":
                return frame

    def _receive(self, deadline: float) -> Frame:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RelayClientError("timed out")
        try:
            raw = self.ws.recv(timeout=remaining)
        except TimeoutError:
            raise RelayClientError(f"timed out after {len(self.frames)} frames") from None
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            reason = exc.rcvd.reason if exc.rcvd is not None else ""
            raise RelayClientError(
                f"the connection closed ({code} {reason})".rstrip(), code=code
            ) from None
        frame: Frame = orjson.loads(raw)
        self.frames.append(frame)
        kind = frame.get("type")
        if kind == "tweet":
            self.last_seq[frame["channel"]] = frame["seq"]
        elif kind == "subscribed":
            self.subscribed[frame["channel"]] = frame
        elif kind == "reset":
            self.resets.append(frame)
            self.last_seq.pop(frame["channel"], None)
        elif kind == "history_start":
            self.history_starts[frame["channel"]] = frame["seq"]
        elif kind == "deleted":
            self.deleted.append(frame)
        elif kind == "error":
            raise RelayClientError(
                f"error frame {frame.get('code')}: {frame.get('message')}", frame=frame
            )
        return frame


def tweets_of(frames: list[Frame]) -> list[Frame]:
    """The tweet objects of tweet frames."""
    return [frame["tweet"] for frame in frames if frame.get("type") == "tweet"]
