"""The demo page in a real Chromium: access it explains, and history on a channel switch."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from relay.core.auth import issue_token
from tests.support import UNIT, RelayProcess, stream_line, wait_for
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
    # Nothing under "Live": the stored tweets of a channel show only once it is granted.
    assert page.locator("#tweets li").count() == 0
    assert page.evaluate("window.relayDemo.seqs.length") == 0
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


def test_a_revoked_token_says_revoked_not_expired(
    page: Any,  # noqa: F811
    tmp_path: Path,
    recording: Path,  # noqa: F811
    processes: list[RelayProcess],
) -> None:
    listing = tmp_path / "revoked.txt"
    listing.write_text("")
    relay = _private(
        tmp_path,
        recording,
        processes,
        RELAY_REVOKED_TOKENS=str(listing),
        RELAY_REVOKED_TOKENS_INTERVAL="0.1",
    )
    token = issue_token(
        SECRET, subject="page", channels=["tweets"], ttl=600, now=time.time(), token_id="lost"
    )
    page.goto(relay.url + "/")
    page.fill("#token", token)
    page.click("#token-form button")
    page.wait_for_function("window.relayDemo.seqs.length >= 3", timeout=WAIT)
    listing.write_text("lost\n")
    page.wait_for_function("document.body.dataset.state === 'locked'", timeout=WAIT)
    assert page.locator("#state").inner_text() == "token revoked"
    error = page.locator("#error").inner_text()
    assert "revoked" in error and "expired" not in error
    assert page.locator("#token-form").is_visible()


def test_a_relay_that_stops_shows_the_close_it_sent_while_the_page_retries(
    page: Any,  # noqa: F811
    tmp_path: Path,
    recording: Path,  # noqa: F811
    processes: list[RelayProcess],
) -> None:
    relay = start(tmp_path, recording, processes, 0)
    page.goto(relay.url + "/")
    page.wait_for_function("document.body.dataset.state === 'live'", timeout=WAIT)
    assert relay.stop() == 0
    # Past the first failed try: the reconnects fail with 1006, the relay had sent 1001.
    page.wait_for_function(
        "document.getElementById('state').textContent.includes('relay unreachable')",
        timeout=WAIT,
    )
    state = page.locator("#state").inner_text()
    assert "1001 shutdown" in state and "1006" not in state, state


def _with_entities(line: bytes, entities: dict[str, Any]) -> bytes:
    message = orjson.loads(line)
    message["data"]["entities"] = entities
    return orjson.dumps(message)


def _glyph_left(tab: Any, selector: str, index: int) -> float:
    """Where the ``index``-th character of the element's text is drawn, from the left."""
    return float(
        tab.evaluate(
            """([selector, index]) => {
                const node = document.querySelector(selector).firstChild;
                const range = document.createRange();
                range.setStart(node, index);
                range.setEnd(node, index + 1);
                return range.getBoundingClientRect().left;
            }""",
            [selector, index],
        )
    )


def test_hashtags_and_mentions_in_right_to_left_tweets_read_the_right_way_round(
    page: Any,  # noqa: F811
    tmp_path: Path,
    processes: list[RelayProcess],
) -> None:
    arabic = "حفلة رائعة الليلة #concert مع @elirossi39 و #موسيقى"
    hebrew = "הופעה מעולה הערב #concert עם @elirossi39"

    def spans(text: str) -> dict[str, Any]:
        found: dict[str, Any] = {"hashtags": [], "mentions": []}
        for word in text.split():
            start = text.index(word)
            kind = {"#": "hashtags", "@": "mentions"}.get(word[0])
            if kind == "hashtags":
                found[kind].append({"start": start, "end": start + len(word), "tag": word[1:]})
            elif kind == "mentions":
                found[kind].append({"start": start, "end": start + len(word), "username": word[1:]})
        return found

    rtl = tmp_path / "rtl.jsonl"
    rtl.write_bytes(
        _with_entities(stream_line(1, arabic, lang="ar"), spans(arabic))
        + b"\n"
        + _with_entities(stream_line(2, hebrew, lang="iw"), spans(hebrew))
        + b"\n"
    )
    relay = RelayProcess(
        tmp_path / "rtl.log",
        "--db",
        str(tmp_path / "rtl.db"),
        "--replay",
        str(rtl),
        "--speed",
        "max",
        "--no-loop",
    )
    processes.append(relay)
    wait_for(lambda: relay.count() == 2, 6 * UNIT, "the two tweets stored")
    page.goto(relay.url + "/")
    page.wait_for_function(
        "document.querySelectorAll('#tweets li.tweet').length === 2", timeout=WAIT
    )
    for tweet_id in ("1", "2"):
        item = f'#tweets li[data-id="{tweet_id}"]'
        # The tweet reads right to left as a whole...
        text = f"document.querySelector('{item} .text')"
        assert page.evaluate(f"getComputedStyle({text}).direction") == "rtl"
        # ...and each Latin entity left to right inside it: '#' and '@' before the name.
        for entity in (f"{item} a.hashtag", f"{item} a.mention"):
            assert _glyph_left(page, entity, 0) < _glyph_left(page, entity, 1), entity
    # An Arabic hashtag stays right to left: its '#' is drawn on the right of the word.
    arabic_tag = '#tweets li[data-id="1"] a.hashtag:last-of-type'
    assert page.locator(arabic_tag).inner_text() == "#موسيقى"
    assert _glyph_left(page, arabic_tag, 0) > _glyph_left(page, arabic_tag, 1)


def test_a_search_says_which_channel_it_covers_and_can_cover_all(
    page: Any,  # noqa: F811
    tmp_path: Path,
    recording: Path,  # noqa: F811
    processes: list[RelayProcess],
) -> None:
    relay = RelayProcess(
        tmp_path / "r.log",
        "--db",
        str(tmp_path / "s.db"),
        "--replay",
        str(recording),
        "--speed",
        "max",
        "--no-loop",
    )
    processes.append(relay)
    wait_for(lambda: relay.count() == 2000, 12 * UNIT, "the replay to finish")
    in_cats = relay.get("/v1/objects/tweets?search=amazing&rule=cats&count=1")["count"]
    everywhere = relay.get("/v1/objects/tweets?search=amazing&count=1")["count"]
    assert 0 < in_cats < everywhere  # type: ignore[operator]
    page.goto(relay.url + "/?channel=rule:cats")
    page.wait_for_function("document.body.dataset.state === 'live'", timeout=WAIT)
    assert "rule:cats" in (page.get_attribute("#search", "placeholder") or "")
    page.fill("#search", "amazing")
    page.click("#search-form button")
    page.wait_for_function(
        "document.getElementById('search-count').textContent.includes('found')", timeout=WAIT
    )
    assert page.locator("#search-count").inner_text() == f"{in_cats} found in rule:cats"
    page.check("#search-all")
    page.wait_for_function(
        "document.getElementById('search-count').textContent.includes('all channels')",
        timeout=WAIT,
    )
    assert page.locator("#search-count").inner_text() == f"{everywhere} found in all channels"


def test_the_store_size_tells_the_database_from_its_write_ahead_log(
    page: Any,  # noqa: F811
    tmp_path: Path,
    processes: list[RelayProcess],
) -> None:
    from relay.sources.synth import write_stream

    short = tmp_path / "short.jsonl"
    write_stream(short, 600, seed=5)
    db = tmp_path / "quiet.db"
    # About 20 tweets a second for 30 s, a commit a tweet or so: the trickle that grew the
    # WAL to tens of MB, and long enough for several samples (every 5 s) to catch it, even
    # on a loaded machine.
    relay = RelayProcess(
        tmp_path / "quiet.log", "--db", str(db), "--replay", str(short), "--speed", "5",
        "--no-loop",
    )  # fmt: skip
    processes.append(relay)
    page.goto(relay.url + "/")
    page.wait_for_function(
        "document.getElementById('stats-size').textContent.includes('WAL')", timeout=WAIT * 2
    )
    assert "write-ahead log" in (page.get_attribute("#stats-size", "title") or "")
    wait_for(lambda: relay.count() == 600, 40 * UNIT, "the replay to finish")
    # Idle: the WAL goes back into the database file and the size is the file's.
    page.wait_for_function(
        "window.relayDemo.stats && window.relayDemo.stats.store.wal_bytes === 0 && "
        "!document.getElementById('stats-size').textContent.includes('WAL')",
        timeout=WAIT * 3,
    )
    # The file agrees once the writer is idle for good (the search index of the last
    # tweets may still be written, and checkpointed, after the sample above).
    wal = Path(str(db) + "-wal")
    wait_for(lambda: not wal.exists() or wal.stat().st_size == 0, 10 * UNIT, "an empty WAL")
    page.wait_for_function(
        f"window.relayDemo.stats.store.size_bytes === {os.stat(db).st_size}", timeout=WAIT * 3
    )
