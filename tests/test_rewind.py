"""Rewind by time, end to end on both stores: a WebSocket subscribe with ``since: {time}``
gets every tweet (its filters holding) the relay received at or after the moment, in seq
order, then live with no gap and no duplicate; before the oldest kept tweet it hears
``history_start``; a moment after the newest goes live at once; a bad moment is an
error frame; ``since_time`` on the object API means the same; a paced rewind keeps the
recorded gaps divided by its pace, goes live once it has caught up, waits holding no
store read slot, and stops on unsubscribe and on close."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.core.times import time_from_unix
from relay.stream.session import Session, Subscription
from relay.testing import RelayClient, RelayClientError, RelayServer
from tests.pg_server import StoreMaker
from tests.support import UNIT, counted, stream_line, wait_for

Frame = dict[str, Any]

T0 = 1_796_619_600.0
"""2026-12-07T05:00:00Z: the first receive time of the tweets below."""
AT_6 = "2026-12-07T06:00:00Z"
TWEETS = [
    # (tweet id, receive time, rule, lang)
    (101, T0, "cats", "en"),
    (102, T0 + 600, "cats", "ja"),
    (103, T0 + 1200, "dogs", "en"),
    (104, T0 + 3600, "cats", "en"),  # 06:00:00, the moment itself
    (105, T0 + 3600, "dogs", "ja"),
    (106, T0 + 3900, "cats", "ja"),
]


class Clock:
    """The receive time the relay gives the next pushed line."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stocked(
    start_relay: Callable[..., RelayServer], make_store: StoreMaker
) -> Iterator[tuple[RelayServer, Clock]]:
    """A relay on SQLite and on PostgreSQL holding :data:`TWEETS`, each received at its
    time; pushed lines afterwards are received at 06:10, and the relay's own clock (what
    ``-15m`` counts back from) says 06:10 too."""
    clock = Clock(T0)
    server = start_relay(
        store=make_store.url(),
        clock=clock,
        wall_clock=lambda: T0 + 4200,
        batch_size=1,  # each line its own append: its own receive time
    )
    for seq, (tweet_id, received, tag, lang) in enumerate(TWEETS, 1):
        clock.now = received
        server.push(stream_line(tweet_id, f"tweet {tweet_id}", tags=(tag,), lang=lang))
        server.wait_seq(seq)
    clock.now = T0 + 4200
    yield server, clock


def _ids(frames: list[Frame]) -> list[str]:
    return [frame["tweet"]["id"] for frame in frames]


def test_a_rewind_gives_every_tweet_received_since_the_moment_then_live(
    stocked: tuple[RelayServer, Clock],
) -> None:
    server, _ = stocked
    with RelayClient(server.ws_url) as client:
        hello = client.subscribe("tweets", since={"time": AT_6})
        assert (hello["epoch"], hello["seq"], hello["recovered"]) == (server.epoch, 6, 3)
        rewound = client.tweets(3)
        assert [f["seq"] for f in rewound] == [4, 5, 6]
        assert _ids(rewound) == ["104", "105", "106"]
        server.push(stream_line(107, "live"))
        (live,) = client.tweets(1)
        assert (live["seq"], live["tweet"]["id"]) == (7, "107")
        assert [f["type"] for f in client.frames] == ["subscribed"] + ["tweet"] * 4
    # A time back from the relay's clock (06:10): -15m is 05:55.
    with RelayClient(server.ws_url) as client:
        hello = client.subscribe("tweets", since={"time": "-15m"})
        assert hello["recovered"] == 4
        assert [f["seq"] for f in client.until_seq(7)] == [4, 5, 6, 7]


def test_a_filtered_rewind_gives_only_what_its_filters_and_channel_pass(
    stocked: tuple[RelayServer, Clock],
) -> None:
    server, _ = stocked
    with RelayClient(server.ws_url) as client:
        client.subscribe(
            "rule:cats", since={"time": "2026-12-07T05:05:00Z"}, filters={"lang": "ja"}
        )
        rewound = client.tweets(2)
        assert [(f["seq"], f["channel"]) for f in rewound] == [(2, "rule:cats"), (6, "rule:cats")]
        server.push(
            stream_line(107, "live en", tags=("cats",), lang="en"),
            stream_line(108, "live ja", tags=("cats",), lang="ja"),
        )
        (live,) = client.tweets(1)
        assert live["tweet"]["id"] == "108"
        pong = client.ping()
        assert pong["type"] == "pong"
        assert _ids([f for f in client.frames if f["type"] == "tweet"]) == ["102", "106", "108"]


def test_a_time_before_the_oldest_kept_tweet_gives_history_start(
    stocked: tuple[RelayServer, Clock],
) -> None:
    server, _ = stocked
    assert server.relay is not None
    trimmed = server.call(server.relay.store.trim(through_seq=2, received_before=None, limit=10))
    assert trimmed.oldest_seq == 3
    with RelayClient(server.ws_url) as client:
        hello = client.subscribe("tweets", since={"time": "2026-12-06T00:00:00Z"})
        assert client.history_starts == {"tweets": 3}
        assert [f["type"] for f in client.frames] == ["history_start", "subscribed"]
        assert hello["recovered"] == 4
        assert [f["seq"] for f in client.tweets(4)] == [3, 4, 5, 6]
    # A moment after the oldest kept tweet: nothing is missing, no history_start.
    with RelayClient(server.ws_url) as client:
        client.subscribe("tweets", since={"time": "2026-12-07T05:30:00Z"})
        assert [f["seq"] for f in client.tweets(3)] == [4, 5, 6]
        assert client.history_starts == {}


def test_a_time_after_the_newest_tweet_goes_live_from_now(
    stocked: tuple[RelayServer, Clock],
) -> None:
    server, _ = stocked
    with RelayClient(server.ws_url) as client:
        hello = client.subscribe("tweets", since={"time": "2030-01-01T00:00:00Z"})
        assert (hello["seq"], hello["recovered"]) == (6, 0)
        server.push(stream_line(107, "live"))
        (live,) = client.tweets(1)
        assert live["seq"] == 7
        assert [f["type"] for f in client.frames] == ["subscribed", "tweet"]


@pytest.mark.parametrize(
    ("since", "words"),
    [
        ({"time": "yesterday"}, "since.time must be an ISO 8601 time"),
        ({"time": 1796616000}, "since.time must be an ISO 8601 time"),
        ({"time": "2026-13-01T00:00:00Z"}, "since.time must be an ISO 8601 time"),
        ({"time": "-15m", "pace": 1}, "since.pace must be above 1"),
        ({"time": "-15m", "pace": "fast"}, "since.pace must be a number above 1"),
    ],
)
def test_a_bad_rewind_is_an_error_frame_and_the_connection_goes_on(
    start_relay: Callable[..., RelayServer], since: dict[str, Any], words: str
) -> None:
    server = start_relay()
    with RelayClient(server.ws_url) as client:
        client.send({"op": "subscribe", "channel": "tweets", "since": since, "id": 9})
        with pytest.raises(RelayClientError) as refused:
            client.next_frame()
        frame = refused.value.frame
        assert frame is not None
        assert (frame["code"], frame["op"], frame["id"]) == ("bad_request", "subscribe", 9)
        assert words in frame["message"]
        assert counted(server.relay.metrics.bad_frames, code="bad_request") == 1  # type: ignore[union-attr]
        assert client.ping()["type"] == "pong"
        assert client.subscribe("tweets")["recovered"] == 0


def test_since_time_on_the_object_api_means_the_same(stocked: tuple[RelayServer, Clock]) -> None:
    server, _ = stocked

    def ids(**params: str) -> list[str]:
        return [t["id"] for t in server.all_tweets(**params)]

    assert ids(since_time=AT_6) == ["104", "105", "106"]
    assert ids(since_time="2026-12-07T06:00:00.001Z") == ["106"]
    assert ids(since_time="-15m") == ["104", "105", "106"]  # from the relay's 06:10
    assert ids(since_time="2030-01-01T00:00:00Z") == []
    assert ids(since_time="2026-12-07T05:05:00Z", rule="cats") == ["102", "104", "106"]
    for bad in ("soon", "-15 minutes", "2026-02-30T00:00:00Z"):
        answer = server.get("/v1/objects/tweets?since_time=" + urllib.parse.quote(bad))
        assert answer.status == 400
        (error,) = answer.body["errors"]
        assert "since_time" in error["message"]


# -- paced rewind ------------------------------------------------------------------------

GAPS = [0.0, 0.0, 1.6, 0.4, 2.0]
"""Seconds between the recorded receive times of the paced recording's tweets."""
PACE = 4.0


def _recording(path: Path, gaps: list[float], *, start: float = T0) -> Path:
    """A recording whose tweets were received ``gaps`` apart (its own recorded times)."""
    lines, moment = [], start
    for n, gap in enumerate(gaps):
        moment += gap
        payload = orjson.loads(
            stream_line(201 + n, f"paced {n}", lang="ja" if n % 2 else "en", tags=("cats",))
        )
        payload["__relay"] = {"received_at": moment}
        lines.append(orjson.dumps(payload))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _arrivals(client: RelayClient, count: int) -> list[tuple[int, float]]:
    """The next ``count`` tweet frames: (seq, when each arrived)."""
    out = []
    for _ in range(count):
        (frame,) = client.tweets(1, timeout=4 * UNIT)
        out.append((frame["seq"], time.monotonic()))
    return out


def test_a_paced_rewind_keeps_the_recorded_gaps_divided_by_its_pace_then_goes_live(
    start_relay: Callable[..., RelayServer], make_store: StoreMaker, tmp_path: Path
) -> None:
    recording = _recording(tmp_path / "paced.jsonl", GAPS)
    # Pushed lines are received at the recording's last moment (T0 + 4 s).
    clock = Clock(T0 + sum(GAPS))
    server = start_relay(
        recording, store=make_store.url(), batch_size=1, keep_open=True, clock=clock
    )
    server.wait_seq(len(GAPS))
    with RelayClient(server.ws_url) as client:
        hello = client.subscribe("tweets", since={"time": time_from_unix(T0), "pace": PACE})
        assert hello["recovered"] == len(GAPS)
        started = time.monotonic()
        server.push(stream_line(301, "live while pacing"))  # held until the replay is done
        arrived = _arrivals(client, len(GAPS) + 1)
        assert [seq for seq, _ in arrived] == list(range(1, len(GAPS) + 2))
        # Each tweet came no sooner than its recorded offset divided by the pace after
        # the first (generous bounds: a loaded machine is late, never early).
        first = arrived[0][1]
        for (seq, at), recorded in zip(arrived, [*_offsets(GAPS), sum(GAPS)], strict=True):
            assert at - first >= recorded / PACE - 0.05, (seq, at - first, recorded / PACE)
        whole = sum(GAPS) / PACE
        assert whole - 0.05 <= arrived[-1][1] - started <= whole + 3 * UNIT
        # Caught up with the head: the replay went live, and a new tweet comes at once.
        server.push(stream_line(302, "live"))
        (live,) = client.tweets(1, timeout=UNIT)
        assert live["seq"] == len(GAPS) + 2
        assert [f["seq"] for f in client.frames if f["type"] == "tweet"] == list(
            range(1, len(GAPS) + 3)
        )


def test_live_tweets_past_the_hold_during_a_paced_rewind_come_from_the_store_in_order(
    start_relay: Callable[..., RelayServer], tmp_path: Path
) -> None:
    """More live tweets come while the replay paces than its session holds (a small send
    buffer): the held ones are dropped and read from the store when their turn comes."""
    recording = _recording(tmp_path / "paced.jsonl", [0.0, 8.0, 8.0])  # 2 s apart paced
    server = start_relay(
        recording, batch_size=1, keep_open=True, clock=Clock(T0 + 16.0), send_buffer=4096
    )
    server.wait_seq(3)
    with RelayClient(server.ws_url) as client:
        client.subscribe("tweets", since={"time": time_from_unix(T0), "pace": PACE})
        assert client.tweets(1)[0]["seq"] == 1  # the replay has started, and paces
        for n in range(60):
            server.push(stream_line(400 + n, f"live {n} " + "x" * 200))
        server.wait_seq(63)
        assert server.relay is not None and server.relay.hub is not None
        assert server.call(_overflowed(server))  # while the replay paces (4 s in all)
        got = client.until_seq(63, timeout=4 * UNIT)
    assert [f["seq"] for f in got] == list(range(2, 64))
    assert [f["tweet"]["id"] for f in got[2:]] == [str(400 + n) for n in range(60)]


async def _overflowed(server: RelayServer) -> bool:
    hub = server.relay.hub  # type: ignore[union-attr]
    (session,) = hub.sessions  # type: ignore[union-attr]
    (sub,) = session.subscriptions.values()
    return sub.overflowed and not sub.live


def _offsets(gaps: list[float]) -> list[float]:
    out, total = [], 0.0
    for gap in gaps:
        total += gap
        out.append(total)
    return out


def test_a_filtered_paced_rewind_paces_the_tweets_it_passes(
    start_relay: Callable[..., RelayServer], tmp_path: Path
) -> None:
    recording = _recording(tmp_path / "paced.jsonl", GAPS)  # odd tweets are in Japanese
    server = start_relay(recording, batch_size=1)
    server.wait_seq(len(GAPS))
    with RelayClient(server.ws_url) as client:
        client.subscribe(
            "rule:cats", since={"time": time_from_unix(T0), "pace": PACE}, filters={"lang": "ja"}
        )
        arrived = _arrivals(client, 2)
    assert [seq for seq, _ in arrived] == [2, 4]
    # Seq 2 at 0 s, seq 4 at 2.0 s recorded: 0.5 s apart at pace 4.
    assert arrived[1][1] - arrived[0][1] >= 2.0 / PACE - 0.05


def _subscription(server: RelayServer) -> tuple[Session, Subscription]:
    hub = server.relay.hub  # type: ignore[union-attr]
    assert hub is not None

    async def look() -> tuple[Session, Subscription]:
        (session,) = [s for s in hub.sessions if s.subscriptions]
        (sub,) = session.subscriptions.values()
        return session, sub

    return server.call(look())


@pytest.mark.parametrize("end", ["unsubscribe", "close"])
def test_a_paced_rewind_holds_no_read_slot_while_it_waits_and_stops_when_asked(
    start_relay: Callable[..., RelayServer], tmp_path: Path, end: str
) -> None:
    """One catch-up read at a time in the whole relay; the paced rewind waits 60 s for its
    second tweet, and meanwhile another client's resume of every tweet goes through."""
    recording = _recording(tmp_path / "slow.jsonl", [0.0, 120.0] + [0.0] * 50)
    server = start_relay(recording, batch_size=1, catch_ups_at_once=1)
    server.wait_seq(52)
    paced = RelayClient(server.ws_url)
    try:
        paced.subscribe("tweets", since={"time": time_from_unix(T0), "pace": 2})
        assert paced.tweets(1)[0]["seq"] == 1
        _, sub = _subscription(server)
        task = sub.task
        assert task is not None and not task.done()  # waiting its 60 s
        with RelayClient(server.ws_url) as other:
            hello = other.subscribe("tweets", since=(server.epoch, 0))
            assert hello["recovered"] == 52
            assert [f["seq"] for f in other.tweets(52, timeout=2 * UNIT)] == list(range(1, 53))
        assert not task.done()
        if end == "unsubscribe":
            paced.unsubscribe("tweets")
        else:
            paced.close()
        wait_for(task.done, UNIT, "the paced rewind to stop")
        assert task.cancelled()
        if end == "unsubscribe":
            assert paced.ping()["type"] == "pong"
            assert [f["type"] for f in paced.frames][-2:] == ["unsubscribed", "pong"]
    finally:
        paced.close()


def test_a_rewind_waits_for_no_store_read_while_another_paced_one_waits(
    start_relay: Callable[..., RelayServer], tmp_path: Path
) -> None:
    """A plain rewind on the same connection as a waiting paced one is not held up by it."""
    recording = _recording(tmp_path / "slow.jsonl", [0.0, 120.0, 0.0])
    server = start_relay(recording, batch_size=1, catch_ups_at_once=1)
    server.wait_seq(3)
    with RelayClient(server.ws_url) as client:
        client.subscribe("tweets", since={"time": time_from_unix(T0), "pace": 2})
        assert client.tweets(1)[0]["seq"] == 1
        hello = client.subscribe("rule:cats", since={"time": time_from_unix(T0)})
        assert hello["recovered"] == 3
        rewound = [f for f in client.tweets(3, timeout=2 * UNIT)]
        assert [(f["channel"], f["seq"]) for f in rewound] == [("rule:cats", n) for n in (1, 2, 3)]
