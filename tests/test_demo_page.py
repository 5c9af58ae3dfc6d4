"""The demo page in a real Chromium: access it explains, and history on a channel switch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from relay.auth import issue_token
from tests.support import UNIT, RelayProcess, wait_for
from tests.test_auth import SECRET
from tests.test_demo import browser, page, recording, seqs, start  # noqa: F401

WAIT = 6 * UNIT * 1000


def _private(
    tmp_path: Path, replay: Path, processes: list[RelayProcess], **env: str
) -> RelayProcess:
    relay = RelayProcess(
        tmp_path / "private.log",
        "--db",
        str(tmp_path / "private.db"),
        "--replay",
        str(replay),
        "--speed",
        "20",
        "--loop",
        env={"RELAY_SECRET": SECRET, "RELAY_PUBLIC_CHANNELS": "", **env},
    )
    processes.append(relay)
    return relay


def _token(channels: list[str]) -> str:
    return issue_token(SECRET, subject="page", channels=channels, ttl=600, now=time.time())


def test_a_private_relay_asks_for_a_token_and_a_good_one_goes_live(
    page: Any,  # noqa: F811
    tmp_path: Path,
    recording: Path,  # noqa: F811
    processes: list[RelayProcess],
) -> None:
    relay = _private(tmp_path, recording, processes)
    page.goto(relay.url + "/")
    page.wait_for_function("document.body.dataset.state === 'locked'", timeout=WAIT)
    assert page.locator("#state").inner_text() == "token needed"
    assert page.locator("#token-form").is_visible()
    assert "private" in page.locator("#error").inner_text()
    page.fill("#token", _token(["tweets"]))
    page.click("#token-form button")
    page.wait_for_function("window.relayDemo.seqs.length >= 3", timeout=WAIT)
    page.wait_for_function("document.body.dataset.state === 'live'", timeout=WAIT)


def test_a_token_that_does_not_grant_the_channel_is_a_message_and_not_live(
    page: Any,  # noqa: F811
    tmp_path: Path,
    recording: Path,  # noqa: F811
    processes: list[RelayProcess],
) -> None:
    relay = _private(tmp_path, recording, processes)
    page.goto(relay.url + "/?channel=rule:cats")
    page.wait_for_function("document.body.dataset.state === 'locked'", timeout=WAIT)
    page.fill("#token", _token(["rule:dogs"]))
    page.click("#token-form button")
    page.wait_for_function(
        "document.body.dataset.state === 'locked' && "
        "document.getElementById('state').textContent === 'token refused'",
        timeout=WAIT,
    )
    assert "rule:cats" in page.locator("#error").inner_text()
    dot = page.evaluate("getComputedStyle(document.querySelector('.live-dot')).backgroundColor")
    good = page.evaluate(
        "(() => { const e = document.createElement('i'); e.style.color = 'var(--good)';"
        " document.body.append(e); return getComputedStyle(e).color; })()"
    )
    assert dot != good


def test_a_channel_switch_shows_its_latest_tweets_at_once_and_goes_on_without_gap(
    page: Any,  # noqa: F811
    tmp_path: Path,
    recording: Path,  # noqa: F811
    processes: list[RelayProcess],
) -> None:
    relay = start(tmp_path, recording, processes, 0)
    wait_for(
        lambda: relay.get("/v1/objects/tweets?rule=cats&count=1")["count"] >= 25,
        10 * UNIT,
        "25 stored cats tweets",
    )
    page.goto(relay.url + "/")
    page.wait_for_function("window.relayDemo.seqs.length >= 1", timeout=WAIT)
    page.evaluate("window.relayDemo.history = null")  # the first channel's history
    page.select_option("#channel", "rule:cats")
    page.wait_for_function("(window.relayDemo.history || []).length === 20", timeout=WAIT)
    history = list(page.evaluate("window.relayDemo.history"))
    page.wait_for_function(f"window.relayDemo.seqs.length >= {len(history) + 5}", timeout=WAIT)
    shown = seqs(page)
    assert shown[: len(history)] == history
    stored = relay.get(f"/v1/objects/tweets?sort=seq&limit=1000&rule=cats&since_seq={shown[0] - 1}")
    expected = [tweet["seq"] for tweet in stored["results"]]
    # The history and what came live after it: the channel's tweets, none missing, none twice.
    assert shown == expected[: len(shown)], (shown, expected)
    rules = page.eval_on_selector_all("#tweets li.tweet", "els => els.map(e => e.dataset.rules)")
    assert all("cats" in r.split() for r in rules)


CLIENT_SCRIPT = """async ([since, epoch]) => {
  const { RelayClient } = await import("/relay-client.js");
  const stream = new URL("/v1/stream", location.href);
  stream.protocol = "ws:";
  const client = new RelayClient(stream.toString(), { maxDelay: 200 });
  const got = { seqs: [], refused: [], states: [] };
  client.addEventListener("tweet", (e) => got.seqs.push(e.detail.seq));
  client.addEventListener("refused", (e) => got.refused.push(e.detail));
  client.addEventListener("state", (e) => got.states.push(e.detail.state));
  client.subscribe("tweets", { since: { epoch, seq: since } });
  client.subscribe("nope");
  client.connect();
  const until = (test) => new Promise((resolve) => {
    const timer = setInterval(() => { if (test()) { clearInterval(timer); resolve(); } }, 20);
  });
  await until(() => got.seqs.length >= 10);
  client.ws.close(4000);  // a disconnection the client did not ask for: it must resume
  await until(() => got.seqs.length >= 30);
  client.close();
  return got;
}"""


def test_the_reusable_client_resumes_across_a_disconnection_and_reports_refusals(
    page: Any,  # noqa: F811
    tmp_path: Path,
    recording: Path,  # noqa: F811
    processes: list[RelayProcess],
) -> None:
    relay = start(tmp_path, recording, processes, 0)
    wait_for(lambda: relay.get("/v1/objects/tweets?count=1")["count"] >= 5, 10 * UNIT, "5 tweets")
    page.goto(relay.url + "/favicon.svg")  # any page of the relay's origin, no app on it
    epoch = relay.get("/v1/info")["epoch"]
    got = page.evaluate(CLIENT_SCRIPT, [3, epoch])
    # From exactly after the given position, across the reconnect: no gap, no duplicate.
    assert got["seqs"] == list(range(4, 4 + len(got["seqs"])))
    assert got["refused"] == [
        {"channel": "nope", "code": "unknown_channel", "message": got["refused"][0]["message"]}
    ]
    assert "reconnecting" in got["states"] and got["states"].count("open") >= 2


def test_refresh_required_asks_for_a_token_and_the_stream_goes_on_from_its_position(
    page: Any,  # noqa: F811
    tmp_path: Path,
    recording: Path,  # noqa: F811
    processes: list[RelayProcess],
) -> None:
    relay = _private(tmp_path, recording, processes, RELAY_REFRESH_GRACE=str(4 * UNIT))
    short = issue_token(SECRET, subject="page", channels=["tweets"], ttl=2, now=time.time())
    page.goto(relay.url + "/")
    page.fill("#token", short)
    page.click("#token-form button")
    page.wait_for_function("window.relayDemo.seqs.length >= 3", timeout=WAIT)
    page.wait_for_function(
        "document.getElementById('error').textContent.includes('expires soon')", timeout=WAIT
    )
    assert page.locator("#token-form").is_visible()
    before = len(seqs(page))
    page.fill("#token", _token(["tweets"]))
    page.click("#token-form button")
    page.wait_for_function("document.getElementById('error').hidden", timeout=WAIT)
    # Still live after the refresh, the position kept: the seqs run on without a gap.
    page.wait_for_function(f"window.relayDemo.seqs.length >= {before + 40}", timeout=WAIT * 2)
    assert page.locator("#state").get_attribute("data-state") == "live"
    shown = seqs(page)
    assert shown == list(range(shown[0], shown[0] + len(shown)))  # no gap, no duplicate
