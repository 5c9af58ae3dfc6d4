"""The live X sources against a fake X API on loopback: every fault, every tweet once.

The real tweepy clients talk to :class:`tests.fake_x.FakeX` through ``X_API_BASE_URL``.
Waits between reconnects go through an injected clock that advances when the source
sleeps, so the backoff schedule is checked exactly and no test waits it out.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import orjson
import pytest

from relay.errors import ConfigError
from relay.sources.backoff import Cause, ReconnectSchedule
from relay.testing import RelayServer
from tests.fake_x import FakeX, ids_of, x_lines
from tests.support import UNIT, counted, wait_for


@pytest.fixture
def lines() -> list[bytes]:
    """60 wire-accurate stream lines (no recording metadata)."""
    return x_lines(60, seed=9)


def waits(relay: RelayServer) -> list[tuple[Cause, float]]:
    assert relay.relay.ingest is not None
    return list(relay.relay.ingest.source.waits)  # type: ignore[attr-defined]


# -- the schedule itself ---------------------------------------------------------------------


def test_network_errors_back_off_linearly_to_16_seconds() -> None:
    schedule = ReconnectSchedule()
    got = [schedule.backoff(Cause.NETWORK) for _ in range(70)]
    assert got[:3] == [0.25, 0.5, 0.75] and got[63] == 16.0 and got[-1] == 16.0


def test_http_errors_back_off_exponentially_from_5_to_320_seconds() -> None:
    schedule = ReconnectSchedule()
    assert [schedule.backoff(Cause.HTTP) for _ in range(9)] == [
        5,
        10,
        20,
        40,
        80,
        160,
        320,
        320,
        320,
    ]


def test_429_backs_off_exponentially_from_a_minute_and_success_starts_over() -> None:
    schedule = ReconnectSchedule()
    assert [schedule.backoff(Cause.RATE_LIMITED) for _ in range(3)] == [60, 120, 240]
    schedule.connected()
    assert schedule.backoff(Cause.RATE_LIMITED) == 60


def test_clean_closes_keep_a_minimum_spacing_and_the_connect_budget() -> None:
    schedule = ReconnectSchedule(budget=50, window=900, min_delay=1.0)
    now = 0.0
    for _ in range(50):
        now += schedule.wait_before_connect(now, schedule.backoff(Cause.CLOSED))
        schedule.record_connect(now)
    assert now == 49.0  # one a second: the minimum spacing
    wait = schedule.wait_before_connect(now)
    assert now + wait == 900.0  # the 51st waits until the first leaves the 15-minute window


# -- faults on the stream ----------------------------------------------------------------------


def test_a_clean_close_reconnects_after_the_minimum_delay_and_stores_everything_once(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes]
) -> None:
    fake.scripts.extend(
        [[("lines", lines[:20])], [("lines", lines[10:40])], [("lines", lines[40:])]]
    )
    relay = x_relay()
    wait_for(lambda: len(relay.stored_ids()) == 60, 4 * UNIT, "all tweets stored")
    assert relay.stored_ids() == ids_of(lines)
    assert relay.relay.metrics.duplicates._value.get() == 10
    assert waits(relay)[:2] == [(Cause.CLOSED, 1.0), (Cause.CLOSED, 1.0)]


def test_the_stream_and_the_gap_filler_ask_for_everything_a_stored_tweet_holds(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes]
) -> None:
    fake.scripts.extend([[("lines", lines[:2])], [("lines", lines[2:4])]])
    relay = x_relay()
    relay.wait_seq(4)
    wait_for(
        lambda: any(p == "/2/tweets/search/recent" for _, p, _ in fake.requests), UNIT, "a search"
    )
    wanted = {
        "expansions": {"author_id", "referenced_tweets.id", "attachments.media_keys"},
        "tweet.fields": {
            "created_at",
            "lang",
            "entities",
            "public_metrics",
            "edit_history_tweet_ids",
            "referenced_tweets",
        },
        "user.fields": {"username", "name", "profile_image_url"},
        "media.fields": {"type", "url", "preview_image_url"},
    }
    for _, path, params in fake.requests:
        if path in ("/2/tweets/search/stream", "/2/tweets/search/recent"):
            for name, values in wanted.items():
                assert values <= set(params[name][0].split(",")), (path, name)


def test_a_disconnect_mid_line_counts_the_broken_line_and_backs_off_linearly(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes]
) -> None:
    fake.scripts.extend(
        [
            [("lines", lines[:5]), ("raw", lines[5][:40]), ("drop",)],
            [("raw", lines[5][:40]), ("drop",)],
            [("lines", lines[5:10])],
        ]
    )
    relay = x_relay()
    wait_for(lambda: len(relay.stored_ids()) == 10, 4 * UNIT, "10 tweets")
    got = waits(relay)
    assert [cause for cause, _ in got[:2]] == [Cause.NETWORK, Cause.NETWORK]
    assert got[1][1] == 1.0  # 0.5 of backoff, but never sooner than 1 s after the last connect
    assert counted(relay.relay.metrics.malformed) == 2


def test_a_stall_drops_the_connection_and_reconnects(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes]
) -> None:
    fake.scripts.extend([[("lines", lines[:3]), ("stall", 3.0)], [("lines", lines[3:6])]])
    relay = x_relay()
    wait_for(lambda: len(relay.stored_ids()) == 6, 4 * UNIT, "6 tweets")
    assert waits(relay)[0][0] is Cause.STALL


def test_429_then_503_follow_their_own_schedules(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes]
) -> None:
    too_many = {"title": "ConnectionException", "detail": "TooManyConnections"}
    fake.scripts.extend(
        [
            [("status", 429, too_many)],
            [("status", 429, too_many)],
            [("status", 503, {"title": "Service Unavailable"})],
            [("lines", lines[:4])],
        ]
    )
    relay = x_relay()
    wait_for(lambda: len(relay.stored_ids()) == 4, 4 * UNIT, "4 tweets")
    assert waits(relay)[:3] == [
        (Cause.RATE_LIMITED, 60.0),
        (Cause.RATE_LIMITED, 120.0),
        (Cause.HTTP, 5.0),
    ]


def test_409_syncs_the_rules_then_reconnects(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes]
) -> None:
    fake.scripts.extend([[("status", 409, {"title": "NoRules"})], [("lines", lines[:2])]])
    relay = x_relay()
    wait_for(lambda: len(relay.stored_ids()) == 2, 4 * UNIT, "2 tweets")
    fake.rules.clear()  # as if rules vanished: the next 409 must put them back
    fake.scripts.extend([[("status", 409, {"title": "NoRules"})], [("lines", lines[2:4])]])
    fake.release.set()
    wait_for(lambda: len(relay.stored_ids()) == 4, 4 * UNIT, "4 tweets")
    assert {r["tag"] for r in fake.rules.values()} == {"cats", "python"}
    assert (Cause.NO_RULES, 1.0) in waits(relay)


@pytest.mark.parametrize("kind", ["OperationalDisconnect", "UpstreamOperationalDisconnect"])
def test_operational_disconnect_messages_are_logged_and_reconnected(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes], kind: str
) -> None:
    message = orjson.dumps(
        {
            "errors": [
                {
                    "title": "operational-disconnect",
                    "disconnect_type": kind,
                    "detail": "x",
                    "type": "https://api.twitter.com/2/problems/operational-disconnect",
                }
            ]
        }
    )
    fake.scripts.extend([[("lines", [*lines[:3], message])], [("lines", lines[3:5])]])
    relay = x_relay()
    wait_for(lambda: len(relay.stored_ids()) == 5, 4 * UNIT, "5 tweets")
    assert waits(relay)[0] == (Cause.OPERATIONAL, 1.0)
    assert relay.relay.metrics.api_errors._value.get() == 1


def test_split_lines_split_crlf_malformed_lines_and_schema_drift_lose_nothing(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes]
) -> None:
    drift = orjson.dumps(
        {
            "data": {"id": 1377650090978992134, "text": "drift", "novel": 1},
            "matching_rules": [{"id": 7, "tag": None}, {"id": "8"}],
            "unknown": {"a": [1]},
        }
    )
    one, two = lines[0] + b"\r\n", lines[1] + b"\r\n"
    fake.scripts.append(
        [
            ("raw", one[:100]),
            ("raw", one[100:-1]),
            ("raw", one[-1:]),  # \r | \n across chunks
            ("raw", two[:-2]),
            ("raw", b"\r"),
            ("raw", b"\n"),
            ("keepalive",),
            ("lines", [b'{"data": {"id": "9", "te', b"not json", drift, lines[2]]),
            ("hold",),
        ]
    )
    relay = x_relay()
    wait_for(lambda: len(relay.stored_ids()) == 4, 4 * UNIT, "4 tweets")
    assert relay.stored_ids() == [*ids_of(lines[:2]), "1377650090978992134", ids_of(lines)[2]]
    metrics = relay.relay.metrics
    assert counted(metrics.malformed) == 2
    assert metrics.lines.labels("keepalive")._value.get() >= 1
    assert relay.get("/v1/objects/tweets?rule=7&count=1")[1]["count"] == 1


def test_401_stops_the_relay_with_one_clear_error_and_no_retry(
    x_relay: Callable[..., RelayServer], fake: FakeX
) -> None:
    relay = x_relay(x_bearer_token="wrong-token")
    ingest = relay.relay.ingest
    assert ingest is not None
    wait_for(ingest.failed.is_set, 4 * UNIT, "ingest to stop")
    assert isinstance(ingest.error, ConfigError)
    assert "X_BEARER_TOKEN" in str(ingest.error) and "401" in str(ingest.error)
    assert fake.stream_requests() == 0  # the rules call already told; the stream is not hammered
    assert len(fake.requests) == 1


def test_a_stream_401_after_a_good_start_is_not_retried(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes]
) -> None:
    fake.scripts.extend([[("lines", lines[:2])], [("status", 401, {"title": "Unauthorized"})]])
    relay = x_relay()
    ingest = relay.relay.ingest
    assert ingest is not None
    wait_for(ingest.failed.is_set, 4 * UNIT, "ingest to stop")
    assert "401" in str(ingest.error)
    assert fake.stream_requests() == 2


def test_an_outage_is_filled_from_recent_search_and_the_overlap_dropped(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes]
) -> None:
    messages = [orjson.loads(line) for line in lines]
    # The stream delivers 0-19, goes down while 20-39 happen, and comes back with 40-59.
    queries = {"cats": "cats OR kitten", "python": "python"}
    for message in messages:
        for rule in message["matching_rules"]:
            if rule["tag"] in queries:
                fake.search.setdefault(queries[rule["tag"]], []).append(message)
    fake.search_page_size = 4  # 9 or more results a rule: the filler must page
    fake.scripts.extend([[("lines", lines[:20]), ("drop",)], [("lines", lines[40:])]])
    relay = x_relay()
    cats_or_python = [
        m["data"]["id"]
        for m in messages
        if {"cats", "python"} & {r["tag"] for r in m["matching_rules"]}
    ]
    expected = set(ids_of(lines[:20]) + ids_of(lines[40:]) + cats_or_python)
    wait_for(lambda: set(relay.stored_ids()) == expected, 4 * UNIT, "the gap filled")
    searches = [p for m, path, p in fake.requests if path == "/2/tweets/search/recent"]
    # From the newest tweet the first connection sent, committed yet or not.
    assert searches[0]["since_id"] == [max(ids_of(lines[:20]), key=int)]
    paged = [(before, after) for before, after in pairwise(searches) if "next_token" in after]
    assert paged and all(b["since_id"] == a["since_id"] for b, a in paged)  # fixed while paging
    assert len(relay.stored_ids()) == len(expected)


def test_a_restart_fills_the_time_the_relay_was_down(
    x_relay: Callable[..., RelayServer], fake: FakeX, lines: list[bytes]
) -> None:
    fake.scripts.append([("lines", lines[:20])])
    first = x_relay()
    first.wait_seq(20)
    first.stop()
    # Down while 20-39 happened: the restarted relay's first connection fills them in.
    fake.search = {"python": [orjson.loads(line) for line in lines[20:40]]}
    fake.scripts.append([("lines", lines[40:])])
    fake.requests.clear()
    second = x_relay()
    wait_for(lambda: len(second.stored_ids()) == 60, 4 * UNIT, "the downtime filled")
    assert sorted(second.stored_ids(), key=int) == ids_of(lines)
    searches = [p for m, path, p in fake.requests if path == "/2/tweets/search/recent"]
    assert searches[0]["since_id"] == [ids_of(lines)[19]]  # the newest tweet of the first run


def test_a_stream_403_says_the_token_lacks_access_and_is_not_retried(
    x_relay: Callable[..., RelayServer], fake: FakeX
) -> None:
    fake.scripts.append([("status", 403, {"title": "Forbidden", "reason": "client-not-enrolled"})])
    relay = x_relay()
    ingest = relay.relay.ingest
    assert ingest is not None
    wait_for(ingest.failed.is_set, 4 * UNIT, "ingest to stop")
    assert "403" in str(ingest.error) and "x-poll" in str(ingest.error)
    assert fake.stream_requests() == 1
