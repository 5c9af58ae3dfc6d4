"""The demo page over server-sent events in a real Chromium (its own ``EventSource``), and
its rewind control on both transports, against a real relay (``relay.testing``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from relay.core.auth import issue_token
from relay.testing import RelayServer
from tests.support import UNIT, bundled_sample, counted, free_port, stream_line, wait_for
from tests.test_auth import SECRET
from tests.test_demo import browser, page, seqs  # noqa: F401

WAIT = 6 * UNIT * 1000


def _sse_frames(relay: RelayServer) -> float:
    assert relay.relay is not None
    return counted(relay.relay.metrics.frames_sent, transport="sse")


def _push(relay: RelayServer, first: int, last: int, text: str = "tweet") -> None:
    relay.push(*(stream_line(n, f"{text} {n}") for n in range(first, last + 1)))


def test_eventsource_on_the_page_goes_on_across_a_relay_restart_with_no_gap_and_no_duplicate(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
) -> None:
    port = free_port()
    relay = start_relay(port=port)  # the same SQLite file each time (tmp_path/relay.db)
    _push(relay, 1, 5, "stored")
    relay.wait_seq(5)
    page.goto(relay.url + "/?transport=sse")
    page.wait_for_function("window.relayDemo.state() === 'live'", timeout=WAIT)
    assert "over server-sent events" in page.locator("#showing").inner_text()
    _push(relay, 6, 10, "live")
    page.wait_for_function("window.relayDemo.seqs.length >= 10", timeout=WAIT)
    assert _sse_frames(relay) > 0, "the page did not read the stream as server-sent events"
    assert counted(relay.relay.metrics.frames_sent, transport="websocket") == 0  # type: ignore[union-attr]

    relay.stop()  # each stream ends with a `close` event saying "shutdown"
    page.wait_for_function("window.relayDemo.state() === 'reconnecting'", timeout=WAIT)
    assert "1001 shutdown" in page.locator("#state").inner_text()
    relay = start_relay(port=port)
    _push(relay, 11, 15, "while away")  # most likely stored before EventSource is back
    page.wait_for_function("window.relayDemo.state() === 'live'", timeout=WAIT)
    _push(relay, 16, 20, "live again")
    page.wait_for_function("window.relayDemo.seqs.length >= 20", timeout=WAIT)
    # EventSource came back by itself (Last-Event-ID) to the restarted relay.
    assert _sse_frames(relay) > 0
    assert seqs(page) == list(range(1, 21)), "a seq is missing or repeated"
    shown = page.eval_on_selector_all("#tweets li.tweet", "els => els.map(e => e.dataset.id)")
    assert shown == [str(n) for n in range(20, 0, -1)]  # newest first, each once
    assert page.evaluate("window.relayDemo.resets") == 0


def test_the_transport_control_moves_the_page_to_the_other_transport_from_its_position(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay()
    page.goto(relay.url + "/")
    page.wait_for_function("window.relayDemo.state() === 'live'", timeout=WAIT)
    _push(relay, 1, 5)
    page.wait_for_function("window.relayDemo.seqs.length >= 5", timeout=WAIT)
    page.select_option("#transport", "sse")
    assert "transport=sse" in page.url
    _push(relay, 6, 10)
    page.wait_for_function("window.relayDemo.seqs.length >= 10", timeout=WAIT)
    assert seqs(page) == list(range(1, 11))
    assert _sse_frames(relay) > 0


REWIND_SCRIPT = """async ([channels, since, count]) => {
  const { RelayClient } = await import("/relay-client.js");
  const client = new RelayClient(new URL("/v1/stream", location.href).toString()
    .replace("http", "ws"), { transport: "sse" });
  const got = { tweets: [], subscribed: [], refused: [] };
  client.addEventListener("tweet", (e) => got.tweets.push([e.detail.channel, e.detail.seq]));
  client.addEventListener("subscribed", (e) => got.subscribed.push(e.detail.channel));
  client.addEventListener("refused", (e) => got.refused.push(e.detail));
  for (const channel of channels) client.subscribe(channel, { since });
  client.connect();
  const until = (test) => new Promise((resolve) => {
    const timer = setInterval(() => { if (test()) { clearInterval(timer); resolve(); } }, 20);
  });
  await until(() => got.tweets.length >= count);
  got.position = client.position(channels[0]);
  got.url = client.es.url;
  client.close();
  return got;
}"""


def test_the_reusable_client_over_sse_delivers_a_tweet_once_for_each_of_its_channels(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay()
    relay.push(
        stream_line(1, "cats", tags=("cats",)),
        stream_line(2, "both", tags=("cats", "dogs")),
        stream_line(3, "dogs", tags=("dogs",)),
        stream_line(4, "none", tags=()),
    )
    relay.wait_seq(4)
    page.goto(relay.url + "/favicon.svg")  # the relay's origin, no app on it
    got = page.evaluate(
        REWIND_SCRIPT, [["rule:cats", "rule:dogs"], {"epoch": relay.epoch, "seq": 0}, 4]
    )
    # One event a tweet on the wire; one delivery for each channel, as over WebSocket.
    assert got["tweets"] == [["rule:cats", 1], ["rule:cats", 2], ["rule:dogs", 2], ["rule:dogs", 3]]
    assert sorted(got["subscribed"]) == ["rule:cats", "rule:dogs"]
    assert got["position"] == {"epoch": relay.epoch, "seq": 2}
    assert "/v1/events?" in got["url"] and f"since={relay.epoch}%3A0" in got["url"]


def test_the_reusable_client_over_sse_reports_an_unknown_channel_and_goes_on_with_the_rest(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(source=bundled_sample(speed=20))  # its six rules: a closed set
    page.goto(relay.url + "/favicon.svg")
    got = page.evaluate(REWIND_SCRIPT, [["tweets", "rule:nope"], None, 3])
    assert [channel for channel, _ in got["tweets"]] == ["tweets"] * len(got["tweets"])
    refused = got["refused"]
    assert [(r["channel"], r["code"]) for r in refused] == [("rule:nope", "unknownChannel")]
    assert "rule:cats" in refused[0]["message"]  # the rules there are
    assert "rule%3Anope" not in got["url"] and "channel=tweets" in got["url"]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_rewind_control_shows_the_tweets_received_from_the_chosen_time_then_live(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
    transport: str,
) -> None:
    relay = start_relay()
    _push(relay, 1, 30, "early")
    relay.wait_seq(30)
    early = max(t["received_at"] for t in relay.all_tweets())
    # Received strictly later than every early tweet (the store keeps milliseconds).
    wait_for(lambda: _now_iso() > early, UNIT, "a later millisecond")
    _push(relay, 31, 60, "later")
    relay.wait_seq(60)
    stored = relay.all_tweets()
    moment = min(t["received_at"] for t in stored if t["received_at"] > early)
    expected = sorted(t["seq"] for t in stored if t["received_at"] >= moment)
    assert expected and expected[0] > 30 and 60 in expected, (moment, expected)

    page.goto(relay.url + f"/?transport={transport}")
    page.wait_for_function("window.relayDemo.state() === 'live'", timeout=WAIT)
    assert seqs(page) == list(range(41, 61))  # the 20 newest stored: not a rewind
    page.select_option("#rewind", "time")
    local = page.evaluate("(iso) => window.relayDemo.localInput(new Date(iso))", moment)
    page.fill("#rewind-time", local)
    page.click("#rewind-form button")
    page.wait_for_function(f"window.relayDemo.seqs.length >= {len(expected)}", timeout=WAIT)
    page.wait_for_function("window.relayDemo.state() === 'live'", timeout=WAIT)
    _push(relay, 61, 65, "live")
    page.wait_for_function(f"window.relayDemo.seqs.length >= {len(expected) + 5}", timeout=WAIT)
    assert seqs(page) == [*expected, 61, 62, 63, 64, 65]
    showing = page.locator("#showing").inner_text()
    assert showing.startswith("Rewound to "), showing
    assert f"({len(expected)} stored)" in showing and "then live" in showing, showing
    assert f"from #{expected[0]}" in showing, showing
    assert "since_time=" in page.url


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_last_five_minutes_are_every_tweet_of_a_relay_younger_than_that(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
    transport: str,
) -> None:
    relay = start_relay()
    _push(relay, 1, 45)
    relay.wait_seq(45)
    page.goto(relay.url + f"/?transport={transport}")
    page.wait_for_function("window.relayDemo.seqs.length >= 20", timeout=WAIT)
    page.select_option("#rewind", "-5m")
    page.click("#rewind-form button")
    page.wait_for_function("window.relayDemo.seqs.length >= 45", timeout=WAIT)
    assert seqs(page) == list(range(1, 46))
    assert page.locator("#showing").inner_text().startswith("Rewound to the last 5 min")
    # Back to live: the newest stored, then what comes.
    page.select_option("#rewind", "")
    page.click("#rewind-form button")
    page.wait_for_function("window.relayDemo.seqs.length === 20", timeout=WAIT)
    page.wait_for_function("window.relayDemo.state() === 'live'", timeout=WAIT)
    assert seqs(page) == list(range(26, 46))
    assert page.locator("#showing").inner_text().startswith("Live")
    assert "since_time" not in page.url


def _now_iso() -> str:
    moment = datetime.fromtimestamp(time.time(), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# -- access over SSE: explained, as over WebSocket ------------------------------------------


def _token(channels: list[str], ttl: float = 600, token_id: str | None = None) -> str:
    return issue_token(
        SECRET, subject="page", channels=channels, ttl=ttl, now=time.time(), token_id=token_id
    )


def test_over_sse_a_token_that_does_not_grant_the_channel_is_a_message_and_not_live(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(secret=SECRET, public_channels=[])
    relay.push(stream_line(1, "a cat", tags=("cats",)))
    relay.wait_seq(1)
    page.goto(relay.url + "/?transport=sse&channel=rule:cats")
    page.wait_for_function("window.relayDemo.state() === 'locked'", timeout=WAIT)
    page.fill("#token", _token(["rule:dogs"]))
    page.click("#token-form button")
    page.wait_for_function(
        "document.getElementById('state').textContent === 'token refused'", timeout=WAIT
    )
    assert "rule:cats" in page.locator("#error").inner_text()
    assert page.evaluate("window.relayDemo.seqs.length") == 0


def test_over_sse_an_expired_token_asks_for_another_and_the_page_goes_on_from_its_position(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(secret=SECRET, public_channels=[])
    page.goto(relay.url + "/?transport=sse")
    page.fill("#token", _token(["tweets"], ttl=2))
    page.click("#token-form button")
    page.wait_for_function("window.relayDemo.state() === 'live'", timeout=WAIT)
    _push(relay, 1, 3, "before")
    page.wait_for_function("window.relayDemo.seqs.length >= 3", timeout=WAIT)
    # No refresh over an event stream: at its expiry the relay ends it (close, expired).
    page.wait_for_function(
        "document.getElementById('state').textContent === 'token expired'", timeout=WAIT
    )
    assert page.locator("#token-form").is_visible()
    _push(relay, 4, 6, "while locked")
    page.fill("#token", _token(["tweets"]))
    page.click("#token-form button")
    page.wait_for_function("window.relayDemo.seqs.length >= 6", timeout=WAIT)
    _push(relay, 7, 8, "after")
    page.wait_for_function("window.relayDemo.seqs.length >= 8", timeout=WAIT)
    assert seqs(page) == list(range(1, 9))
    assert page.evaluate("window.relayDemo.state()") == "live"


def test_over_sse_a_revoked_token_says_revoked(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
    tmp_path: Path,
) -> None:
    listing = tmp_path / "revoked.txt"
    listing.write_text("")
    relay = start_relay(
        secret=SECRET,
        public_channels=[],
        revoked_tokens_file=str(listing),
        revoked_tokens_interval=0.05,
    )
    page.goto(relay.url + "/?transport=sse")
    page.fill("#token", _token(["tweets"], token_id="lost"))
    page.click("#token-form button")
    page.wait_for_function("window.relayDemo.state() === 'live'", timeout=WAIT)
    listing.write_text("lost\n")
    page.wait_for_function("window.relayDemo.state() === 'locked'", timeout=WAIT)
    assert page.locator("#state").inner_text() == "token revoked"


REFRESH_SCRIPT = """async ([short, fresh]) => {
  const { RelayClient } = await import("/relay-client.js");
  const client = new RelayClient(new URL("/v1/events", location.href).toString(),
    { transport: "sse", token: short, getToken: async () => fresh });
  const got = { seqs: [], refreshed: 0, urls: [], states: [] };
  client.addEventListener("tweet", (e) => got.seqs.push(e.detail.seq));
  client.addEventListener("refreshed", () => got.refreshed += 1);
  client.addEventListener("state", (e) => {
    got.states.push(e.detail.state);
    if (e.detail.state === "open") got.urls.push(client.es.url);
  });
  client.subscribe("tweets");
  client.connect();
  window.relayClient = client;
  window.relayGot = got;
}"""


def test_the_reusable_client_over_sse_opens_a_new_stream_from_its_position_with_a_new_token(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(secret=SECRET, public_channels=[])
    short, fresh = _token(["tweets"], ttl=1), _token(["tweets"])
    page.goto(relay.url + "/favicon.svg")
    page.evaluate(REFRESH_SCRIPT, [short, fresh])
    page.wait_for_function("window.relayGot.states.includes('open')", timeout=WAIT)
    _push(relay, 1, 3, "before")
    page.wait_for_function("window.relayGot.seqs.length >= 3", timeout=WAIT)
    # The relay ends the stream at the token's expiry; getToken gives the next one.
    page.wait_for_function("window.relayGot.refreshed === 1", timeout=WAIT)
    _push(relay, 4, 6, "after")
    page.wait_for_function("window.relayGot.seqs.length >= 6", timeout=WAIT)
    got = page.evaluate("window.relayGot")
    page.evaluate("window.relayClient.close()")
    assert got["seqs"] == [1, 2, 3, 4, 5, 6]
    first, second = got["urls"]
    assert f"token={short}" in first and "since=" not in first
    assert f"token={fresh}" in second and f"since={relay.epoch}%3A3" in second
    assert "closed" not in got["states"]


def test_a_rewind_past_the_oldest_kept_tweet_says_where_the_kept_history_starts(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
) -> None:
    from relay.jobs.retention import Retention, apply_retention

    relay = start_relay()
    _push(relay, 1, 30)
    relay.wait_seq(30)
    assert relay.relay is not None and relay.relay.store is not None
    relay.call(apply_retention(relay.relay.store, Retention(max_tweets=10), time.time()))
    page.goto(relay.url + "/?since_time=-1h")
    page.wait_for_function("window.relayDemo.seqs.length >= 10", timeout=WAIT)
    assert seqs(page) == list(range(21, 31))
    assert page.input_value("#rewind") == "-1h"
    showing = page.locator("#showing").inner_text()
    assert showing.startswith("Rewound to the last hour") and "keeps tweets from #21" in showing
    assert page.locator("#error").is_hidden()  # said in the line, not as an error
