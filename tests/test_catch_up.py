"""Catch-up by pages: the stored tweets of a resume go out as pages of frames, each page
built where the store reads it and written in one write, also to a client that
negotiated compression (whose frames the library compresses one by one)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from relay.stream.session import Session
from relay.testing import RelayServer
from tests.support import UNIT, receive_tweets, stream_line, subscribe

COUNT = 300
SEND_BUFFER = 16 * 1024
"""Pages of at most 8 KiB of bodies: a catch-up of COUNT tweets takes dozens of pages."""


def _stored(relay: RelayServer) -> str:
    relay.push(*(stream_line(1000 + n, f"tweet {n} " + "x" * 200) for n in range(COUNT)))
    relay.wait_seq(COUNT)
    return relay.relay.store.epoch


def _session(relay: RelayServer) -> Session:
    hub = relay.relay.hub
    assert hub is not None

    async def look() -> Session:
        (session,) = hub.sessions
        return session

    return relay.call(look())


@pytest.mark.parametrize("compression", [False, True])
def test_a_catch_up_arrives_whole_and_in_order_in_a_write_a_page(
    start_relay: Callable[..., RelayServer],
    compression: bool,
) -> None:
    relay = start_relay(send_buffer=SEND_BUFFER, compression=compression)
    epoch = _stored(relay)
    ws, hello = subscribe(relay.ws_url, "tweets", since={"epoch": epoch, "seq": 0})
    extensions = ws.response.headers.get("Sec-WebSocket-Extensions") if ws.response else None
    assert (extensions is not None and "permessage-deflate" in extensions) is compression
    assert hello["recovered"] == COUNT
    frames = receive_tweets(ws, COUNT)
    assert [f["seq"] for f in frames] == list(range(1, COUNT + 1))
    assert [f["tweet"]["id"] for f in frames] == [str(1000 + n) for n in range(COUNT)]
    assert all(f["channel"] == "tweets" for f in frames)
    # Pages, not frames: about COUNT * 0.5 KB / 8 KiB of them, a write each (and the
    # subscribed frame's own write).
    session = _session(relay)
    assert 1 + COUNT * 500 // (SEND_BUFFER // 2) // 2 <= session.writes <= COUNT // 8
    assert session.last_seq == COUNT
    # Live again after the catch-up.
    relay.push(stream_line(5000))
    (live,) = receive_tweets(ws, 1, timeout=2 * UNIT)
    assert live["seq"] == COUNT + 1 and live["tweet"]["id"] == "5000"
    ws.close()
