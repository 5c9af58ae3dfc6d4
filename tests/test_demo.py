"""The demo kit as a person uses it: the page in a real Chromium, the terminal client as a process.

Chromium is Debian's (``/usr/bin/chromium``) driven by Playwright; ``.ci/run`` installs both.
Locally the browser tests skip with a reason when either is missing; under CI they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.sources.synth import write_stream
from tests.support import ROOT, UNIT, RelayProcess, free_port, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "the playwright package is not installed"
    else:
        missing = "" if Path(CHROMIUM).exists() else f"no Chromium at {CHROMIUM}"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests must run in CI: {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "stream.jsonl"
    write_stream(path, 2000, seed=3)
    return path


def start(
    tmp_path: Path, recording: Path, processes: list[RelayProcess], port: int, name: str = "relay"
) -> RelayProcess:
    relay = RelayProcess(
        tmp_path / f"{name}.log",
        "--db",
        str(tmp_path / "demo.db"),
        "--replay",
        str(recording),
        "--speed",
        "20",
        "--loop",
        port=port,
    )
    processes.append(relay)
    return relay


def seqs(page: Any) -> list[int]:
    return list(page.evaluate("window.relayDemo.seqs"))


def test_tweets_appear_live_on_the_page(
    page: Any, tmp_path: Path, recording: Path, processes: list[RelayProcess]
) -> None:
    relay = start(tmp_path, recording, processes, 0)
    page.goto(relay.url + "/")
    page.wait_for_function("window.relayDemo.seqs.length >= 5", timeout=6 * UNIT * 1000)
    shown = seqs(page)
    assert shown == sorted(set(shown))
    assert page.locator("#tweets li.tweet").count() >= 5
    assert page.locator("#state").get_attribute("data-state") == "live"
    tweet_id = page.locator("#tweets li.tweet").first.get_attribute("data-id")
    shown_text = page.locator(f'#tweets li[data-id="{tweet_id}"] .text').inner_text()
    stored = relay.get(f"/v1/objects/tweets/{tweet_id}")
    assert str(stored["text"]).split()[0] in shown_text


def test_a_channel_switch_shows_only_that_rule(
    page: Any, tmp_path: Path, recording: Path, processes: list[RelayProcess]
) -> None:
    relay = start(tmp_path, recording, processes, 0)
    wait_for(
        lambda: "rule:cats" in relay.get("/v1/info")["channels"],
        6 * UNIT,  # type: ignore[operator]
        "a cats tweet",
    )
    page.goto(relay.url + "/")
    page.wait_for_function("window.relayDemo.seqs.length >= 1", timeout=6 * UNIT * 1000)
    page.select_option("#channel", "rule:cats")
    page.wait_for_function("window.relayDemo.seqs.length >= 3", timeout=6 * UNIT * 1000)
    rules = page.eval_on_selector_all("#tweets li.tweet", "els => els.map(e => e.dataset.rules)")
    assert rules and all("cats" in r.split() for r in rules)


def test_a_search_returns_stored_tweets_with_paging(
    page: Any, tmp_path: Path, recording: Path, processes: list[RelayProcess]
) -> None:
    # A finished replay: offset paging over a set that still grows would shift its pages.
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
    page.goto(relay.url + "/")
    page.fill("#search", "kitten")
    page.click("#search-form button")
    page.wait_for_selector("#results li.tweet", timeout=4 * UNIT * 1000)
    texts = page.eval_on_selector_all(
        "#results li.tweet .text", "els => els.map(e => e.textContent)"
    )
    assert len(texts) == 20 and all("kitten" in t.lower() for t in texts)
    first_page = page.eval_on_selector_all(
        "#results li.tweet", "els => els.map(e => e.dataset.seq)"
    )
    page.click("#next")
    page.wait_for_function(
        f"document.querySelector('#results li.tweet').dataset.seq != '{first_page[0]}'",
        timeout=4 * UNIT * 1000,
    )
    second_page = page.eval_on_selector_all(
        "#results li.tweet", "els => els.map(e => e.dataset.seq)"
    )
    assert not set(first_page) & set(second_page)


def test_a_relay_restart_under_the_page_leaves_no_missing_seq(
    page: Any, tmp_path: Path, recording: Path, processes: list[RelayProcess]
) -> None:
    port = free_port()
    relay = start(tmp_path, recording, processes, port, "first")
    page.goto(relay.url + "/")
    page.wait_for_function("window.relayDemo.seqs.length >= 10", timeout=6 * UNIT * 1000)
    assert relay.stop() == 0
    page.wait_for_function(
        "document.querySelector('#state').dataset.state != 'live'", timeout=4 * UNIT * 1000
    )
    before = len(seqs(page))
    relay = start(tmp_path, recording, processes, port, "second")
    page.wait_for_function(
        f"window.relayDemo.seqs.length >= {before + 20}", timeout=8 * UNIT * 1000
    )
    shown = seqs(page)
    assert page.evaluate("window.relayDemo.resets") == 0
    assert shown == list(range(shown[0], shown[-1] + 1)), "a seq is missing or repeated"
    stored = relay.get(f"/v1/objects/tweets?sort=seq&limit=1000&since_seq={shown[0] - 1}")
    stored_seqs = [t["seq"] for t in stored["results"]]  # type: ignore[union-attr]
    assert stored_seqs[: len(shown)] == shown


def test_the_terminal_client_prints_every_tweet_of_its_channel_in_order_across_a_restart(
    tmp_path: Path, recording: Path, processes: list[RelayProcess]
) -> None:
    port = free_port()
    relay = start(tmp_path, recording, processes, port, "first")
    client = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "client_demo.cli",
            f"http://127.0.0.1:{port}",
            "--json",
            "--channel",
            "rule:cats",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    lines: list[dict[str, Any]] = []
    assert client.stdout is not None
    stdout = client.stdout

    def read() -> None:
        for line in stdout:
            lines.append(orjson.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(lines) >= 5, 8 * UNIT, "the client to print tweets")
        assert relay.stop() == 0
        before = len(lines)
        relay = start(tmp_path, recording, processes, port, "second")
        wait_for(lambda: len(lines) >= before + 5, 8 * UNIT, "tweets after the restart")
    finally:
        client.terminate()
        client.wait(UNIT)
        reader.join(UNIT)
        stdout.close()
    got = [t["seq"] for t in lines]
    stored = relay.get(f"/v1/objects/tweets?sort=seq&limit=1000&rule=cats&since_seq={got[0] - 1}")
    expected = [t["seq"] for t in stored["results"]]  # type: ignore[union-attr]
    assert got == expected[: len(got)], "the client missed or repeated a tweet of its channel"
    assert all("cats" in t["rules"] for t in lines)


def test_the_stats_panel_shows_the_relay_stats_live(
    page: Any, tmp_path: Path, recording: Path, processes: list[RelayProcess]
) -> None:
    relay = start(tmp_path, recording, processes, 0)
    page.goto(relay.url + "/")
    # The first frame is the last sample (taken before the page came); the next counts it.
    page.wait_for_function(
        "window.relayDemo.stats && window.relayDemo.stats.connections >= 1",
        timeout=12 * UNIT * 1000,
    )
    assert page.locator("#stats").is_visible()
    assert int(page.locator("#stats-connections").inner_text()) >= 1
    assert int(page.locator("#stats-head").inner_text()) >= 1
    # The database file, and the write-ahead log beside it when it holds anything.
    size = page.locator("#stats-size").inner_text()
    assert re.fullmatch(r"[\d.]+ (KB|MB)( \+ [\d.]+ (B|KB|MB) WAL)?", size), size
