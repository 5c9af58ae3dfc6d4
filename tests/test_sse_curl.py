"""A real ``curl -N`` follows ``GET /v1/events`` and resumes with ``Last-Event-ID`` across
a relay restart on the same SQLite file: no gap, no duplicate (docs/protocol.md, "Server-
sent events")."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.testing import RelayServer
from tests.support import UNIT, stream_line

Event = dict[str, Any]


def _curl() -> str:
    curl = shutil.which("curl")
    if curl is None:
        message = "curl is not installed (apt-get install curl)"
        if os.environ.get("CI") == "true":  # CI must run these tests, never skip them quietly
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return curl


class Curl:
    """``curl -N`` on a URL: its output parsed into events as they come (a reader thread)."""

    def __init__(self, url: str, *headers: str) -> None:
        args = [_curl(), "-sN", url]
        for header in headers:
            args += ["-H", header]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE)
        self.events: queue.Queue[Event | None] = queue.Queue()
        self.raw: list[bytes] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            self._parse(self.proc.stdout)
        self.events.put(None)  # the stream ended

    def _parse(self, lines: Iterable[bytes]) -> None:
        event: Event = {}
        for line in lines:
            self.raw.append(line)
            line = line.rstrip(b"\n")
            if not line:
                if "data" in event:  # a block without data (the retry hint) is no event
                    self.events.put(event)
                event = {}
            elif not line.startswith(b":"):
                name, _, value = line.partition(b":")
                event[name.decode()] = value.removeprefix(b" ").decode()

    def next(self, until: Callable[[Event], bool] = lambda e: True) -> Event:
        deadline = time.monotonic() + 4 * UNIT
        while True:
            event = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            assert event is not None, f"the stream ended; it said: {b''.join(self.raw)[-400:]!r}"
            if until(event):
                return event

    def tweets(self, count: int) -> list[Event]:
        return [self.next(lambda e: e.get("event") == "tweet") for _ in range(count)]

    def ended(self) -> list[Event]:
        """The events up to the end of the stream (curl exits when the relay ends it)."""
        assert self.proc.wait(timeout=4 * UNIT) == 0
        out: list[Event] = []
        while (event := self.events.get(timeout=UNIT)) is not None:
            out.append(event)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=UNIT)


def _events_url(relay: RelayServer, query: str) -> str:
    return relay.ws_url.replace("ws://", "http://").replace("/v1/stream", "/v1/events?") + query


def test_curl_follows_live_tweets_and_resumes_by_last_event_id_across_a_restart(
    tmp_path: Path,
) -> None:
    db = tmp_path / "relay.db"
    with RelayServer(store=db, sse_keepalive=0) as relay:
        curl = Curl(_events_url(relay, "channel=tweets"))
        try:
            hello = curl.next()
            assert hello["event"] == "subscribed"
            epoch = orjson.loads(hello["data"])["epoch"]
            relay.push(*(stream_line(n, f"live {n}") for n in range(1, 6)))
            before = curl.tweets(5)
        finally:
            relay.stop()  # SIGTERM's path: each stream ends with a last event saying why
        (close,) = [e for e in curl.ended() if e.get("event") == "close"]
        assert orjson.loads(close["data"]) == {
            "type": "close",
            "reason": "shutdown",
            "seq": 5,
            "code": 1001,
        }
    last_id = before[-1]["id"]
    assert last_id == f"{epoch}:5"

    with RelayServer(store=db, sse_keepalive=0) as relay:
        relay.push(*(stream_line(n, f"while away {n}") for n in range(6, 9)))
        relay.wait_seq(8)
        curl = Curl(_events_url(relay, "channel=tweets"), f"Last-Event-ID: {last_id}")
        try:
            hello = orjson.loads(curl.next()["data"])
            assert (hello["type"], hello["epoch"], hello["recovered"]) == ("subscribed", epoch, 3)
            after = curl.tweets(3)
            relay.push(*(stream_line(n, f"live again {n}") for n in range(9, 11)))
            after += curl.tweets(2)
        finally:
            curl.stop()
    events = before + after
    ids = [e["id"] for e in events]
    assert ids == [f"{epoch}:{seq}" for seq in range(1, 11)], "a gap or a duplicate"
    data = [orjson.loads(e["data"]) for e in events]
    assert [d["tweet"]["id"] for d in data] == [str(n) for n in range(1, 11)]
    assert all(d["type"] == "tweet" and d["channels"] == ["tweets"] for d in data)
    assert [d["seq"] for d in data] == list(range(1, 11))
