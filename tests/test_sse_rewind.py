"""A rewind by time over server-sent events: ``?since_time=`` (and ``&pace=``) means what
``since: {"time", "pace"}`` means on a WebSocket subscribe, and ``Last-Event-ID`` wins over
it when EventSource reconnects. It runs once the hub answers a rewind
(``relay/stream/rewind.py``); until then the hub refuses one and this file is skipped.
"""

from __future__ import annotations

import pytest

pytest.importorskip("relay.stream.rewind", reason="the hub's rewind by time is not here yet")

from relay.testing import RelayServer, SseClient
from tests.support import stream_line
from tests.test_rewind import AT_6, Clock, stocked  # noqa: F401


def test_since_time_rewinds_an_event_stream_and_last_event_id_wins_over_it(
    stocked: tuple[RelayServer, Clock],  # noqa: F811
) -> None:
    server, _ = stocked
    with SseClient(server.events_url, params={"since_time": AT_6}) as client:
        assert client.next_frame()["recovered"] == 3
        assert [f["seq"] for f in client.tweets(3)] == [4, 5, 6]
        server.push(stream_line(107, "live"))
        assert client.tweets(1)[0]["seq"] == 7
        last_id = client.last_event_id
    # Several channels, a time back from the relay's clock (06:10): one pass, in seq order.
    with SseClient(
        server.events_url, ["rule:cats", "rule:dogs"], params={"since_time": "-15m"}
    ) as client:
        assert [f["seq"] for f in client.tweets(4)] == [4, 5, 6, 7]
    # EventSource reconnects to the same URL with Last-Event-ID: no rewind again.
    with SseClient(server.events_url, params={"since_time": AT_6}, last_event_id=last_id) as client:
        server.push(stream_line(108, "live"))
        assert [f["seq"] for f in client.tweets(1)] == [8]


def test_a_paced_rewind_over_an_event_stream_goes_live_once_caught_up(
    stocked: tuple[RelayServer, Clock],  # noqa: F811
) -> None:
    server, _ = stocked
    params = {"since_time": AT_6, "pace": "1000"}
    with SseClient(server.events_url, params=params) as client:
        assert [f["seq"] for f in client.tweets(3)] == [4, 5, 6]
        server.push(stream_line(107, "live"))
        assert client.tweets(1)[0]["seq"] == 7
