"""Which channels exist (issue 19, point 8): a mistyped rule channel is refused where the
ingester's rule set is closed, and said to be unknown yet where it is still open.

The ingesting process records its rule set in the store; every serving process, in the
same process or another over PostgreSQL, reads it from there. Real relays on loopback,
real SQLite files and a real PostgreSQL, the real CLIs in subprocesses, the page in a
real Chromium.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from relay.core.rule_set import STATE_KEY, Channels, RuleSet, could_name_a_channel
from relay.core.tweets import parse_line
from relay.core.values import SPEED_MAX
from relay.sources.replay import ReplaySource
from relay.sources.synth import sample_rules
from relay.testing import RelayServer
from relay.testing.support import ws_connect
from tests.fake_x import FakeX, x_lines
from tests.pg_server import StoreMaker
from tests.support import ROOT, UNIT, bundled_sample, counted, stream_line, wait_for
from tests.test_demo import browser, page  # noqa: F401

SECRET = "a-secret-of-at-least-32-bytes-for-the-channel-tests"
SAMPLE_RULES = ["cats", "football", "music", "news", "python", "space"]


def _ask(ws: Any, channel: str, ref: str | None = None) -> dict[str, Any]:
    """Subscribe and return the direct reply (``subscribed`` or ``error``) for ``channel``."""
    ws.send(orjson.dumps({"op": "subscribe", "channel": channel, "id": ref or channel}).decode())
    while True:
        frame = orjson.loads(ws.recv(timeout=2 * UNIT))
        if frame["type"] in ("subscribed", "error") and frame.get("channel") == channel:
            return dict(frame)


def _rules_of(line: bytes) -> list[str]:
    return [c for t in parse_line(line).tweets for c in t.channels if c != "tweets"]


def _recording(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


# -- the rule set itself (pure) ----------------------------------------------------------


def test_a_recorded_rule_set_reads_back_and_anything_else_reads_as_none() -> None:
    rule_set = RuleSet(frozenset({"cats", "dogs"}), True, "the rules file config/rules.toml")
    assert RuleSet.decode(rule_set.encode()) == rule_set
    for bad in (None, "", "not json", "[]", '{"keys": "cats", "closed": true}', '{"keys": []}'):
        assert RuleSet.decode(bad) is None


def test_a_channel_is_known_by_the_recorded_set_or_by_a_stored_tweet() -> None:
    channels = Channels(RuleSet(frozenset({"cats"}), True, "x"), frozenset({"old"}))
    assert channels.closed
    assert [channels.knows(c) for c in ("tweets", "$stats", "rule:cats", "rule:old")] == [True] * 4
    assert not channels.knows("rule:nope")
    assert channels.names() == ["tweets", "$stats", "rule:cats", "rule:old"]
    assert channels.matching("rule:*") == ["rule:cats", "rule:old"]
    assert channels.matching("rule:nope") == []
    assert not Channels().closed and not Channels().knows("rule:cats")


def test_only_a_pattern_that_fits_a_channel_name_can_match_one() -> None:
    fits = ["tweets", "$stats", "*", "rule:*", "rule:cats", "r*", "?ule:x", "[rt]*", "rule:c?ts"]
    assert all(could_name_a_channel(p) for p in fits)
    cannot = ["nonsense", "rule:", "cats", "tweet", "rules:*", "x*", "Rule:cats"]
    assert not any(could_name_a_channel(p) for p in cannot)


def test_config_rules_toml_declares_the_bundled_samples_rules() -> None:
    document = tomllib.loads((ROOT / "config" / "rules.toml").read_text())
    assert sorted(rule["tag"] for rule in document["rule"]) == SAMPLE_RULES
    assert sorted(sample_rules().keys) == SAMPLE_RULES and sample_rules().closed


# -- a recording's rules: open until its first pass ends ----------------------------------


def test_a_recording_declares_the_rules_its_first_pass_read(tmp_path: Path) -> None:
    tricky = orjson.dumps(
        {
            "data": {"id": "9", "text": "x"},
            "matching_rules": [{"id": "5", "tag": "a]b"}, {"id": 77, "tag": None}],
        }
    )
    lines = [
        stream_line(1, tags=("cats",)),
        b"",  # a keep-alive
        stream_line(2, tags=("dogs", "cats")),
        b"not json",
        tricky,  # a "]" inside a tag, and an untagged rule: its id names its channel
        stream_line(3, tags=("cats",)),
    ]
    source = ReplaySource(
        _recording(tmp_path / "rec.jsonl", lines), speed=0, loop=True, clock=lambda: 1.0
    )
    expected = {"cats", "dogs", "a]b", "77"}
    # What the parser makes of the lines is what the set says.
    parsed = {
        r.tag or r.id for line in lines[::2] for t in parse_line(line).tweets for r in t.rules
    }
    assert parsed | {"a]b", "77"} == expected

    async def run() -> list[RuleSet]:
        seen = []
        stream = source.lines()
        for _ in range(len(lines) + 1):  # the first pass, and the first line of the next
            await anext(stream)
            seen.append(source.rule_set)
        await stream.aclose()
        return seen

    seen = asyncio.run(run())
    assert all(not s.closed for s in seen[: len(lines)])
    assert seen[-1] == RuleSet(frozenset(expected), True, "the recording rec.jsonl")


# -- the store: recorded by the writer, read by every serving process --------------------


def test_the_rule_set_the_ingester_records_is_read_by_another_process(
    make_store: StoreMaker,
) -> None:
    async def run() -> None:
        writer = await make_store()
        await writer.append(parse_line(stream_line(1, tags=("old",))).tweets, [], 1.0)
        declared = RuleSet(frozenset({"cats", "dogs"}), True, "the rules file rules.toml")
        await writer.set_state(STATE_KEY, declared.encode())
        # A reader opened apart, as a `relay serve` process opens the store.
        reader = await make_store.reader()
        channels = await reader.known_channels()
        assert channels.declared == declared and channels.stored == {"old"}
        assert channels.closed and channels.knows("rule:old") and channels.knows("rule:dogs")
        assert not channels.knows("rule:nope")
        # The ingester's set changes (another source): the reader sees the new one.
        await writer.set_state(STATE_KEY, RuleSet(frozenset(), False, "the push source").encode())
        again = await reader.known_channels()
        assert not again.closed and again.keys() == ["old"]
        await reader.close()
        await writer.close()

    asyncio.run(run())


# -- real relays --------------------------------------------------------------------------


def test_a_mistyped_rule_channel_of_the_bundled_sample_is_unknown_channel(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(source=bundled_sample())  # the bundled sample, looping
    status, info = relay.get("/v1/info")
    assert status == 200
    assert info["channels"] == ["tweets", *(f"rule:{tag}" for tag in SAMPLE_RULES)]
    ws = ws_connect(relay.ws_url)
    try:
        refused = _ask(ws, "rule:nope", ref="s1")
        assert refused["code"] == "unknown_channel" and refused["op"] == "subscribe"
        assert refused["id"] == "s1" and refused["channel"] == "rule:nope"
        assert "the bundled sample" in refused["message"]
        assert "rule:cats" in refused["message"] and "rule:space" in refused["message"]
        # Nothing of it stays: subscribing again is refused again, not "already subscribed".
        assert _ask(ws, "rule:nope")["code"] == "unknown_channel"
        cats = _ask(ws, "rule:cats")
        assert cats["type"] == "subscribed" and "known" not in cats
        ws.send(orjson.dumps({"op": "unsubscribe", "channel": "rule:nope"}).decode())
        while (frame := orjson.loads(ws.recv(timeout=UNIT)))["type"] == "tweet":
            pass
        assert frame["code"] == "not_subscribed"
    finally:
        ws.close()
    assert counted(relay.relay.metrics.bad_frames, code="unknown_channel") == 2


def test_while_the_rule_set_is_open_a_new_rule_channel_is_accepted_as_not_known_yet(
    pushed: RelayServer,
) -> None:
    relay = pushed  # a source that declares no rules: the set stays open
    ws = ws_connect(relay.ws_url)
    try:
        waiting = _ask(ws, "rule:nope")
        assert waiting["type"] == "subscribed" and waiting["known"] is False
        relay.push(stream_line(1, tags=("nope",)))
        frame = orjson.loads(ws.recv(timeout=2 * UNIT))
        assert frame["type"] == "tweet" and frame["channel"] == "rule:nope" and frame["seq"] == 1
    finally:
        ws.close()
    # Now a tweet has matched it: known, whichever connection asks.
    other = ws_connect(relay.ws_url)
    try:
        assert "known" not in _ask(other, "rule:nope")
    finally:
        other.close()


def test_a_recording_closes_its_rule_set_once_read_through(
    start_relay: Callable[..., RelayServer],
    tmp_path: Path,
) -> None:
    path = _recording(
        tmp_path / "rec.jsonl", [stream_line(i, tags=("a",) if i % 2 else ("b",)) for i in range(6)]
    )
    # The relay's own replay source: its rule set closes once the file is read through.
    relay = start_relay(source=ReplaySource(path, speed=SPEED_MAX, clock=time.time))
    relay.call(relay.relay.finished.wait())  # the first (and only) pass is read and stored
    ws = ws_connect(relay.ws_url)
    try:
        refused = _ask(ws, "rule:c")
        assert refused["code"] == "unknown_channel"
        assert (
            "the recording rec.jsonl" in refused["message"]
            and "rule:a, rule:b" in refused["message"]
        )
        assert "known" not in _ask(ws, "rule:b")
    finally:
        ws.close()


def test_the_rules_file_of_a_live_source_closes_the_set(
    x_relay: Callable[..., RelayServer], fake: FakeX
) -> None:
    fake.scripts.append([("lines", x_lines(2, seed=9))])
    relay = x_relay()
    wait_for(lambda: len(relay.stored_ids()) == 2, 4 * UNIT, "2 tweets")
    ws = ws_connect(relay.ws_url)
    try:
        refused = _ask(ws, "rule:dogs")
        assert refused["code"] == "unknown_channel" and "rules.toml" in refused["message"]
        # The file's rules, and any rule a stored tweet matched (these lines carry others).
        stored = {rule for line in x_lines(2, seed=9) for rule in _rules_of(line)}
        named = refused["message"].split("its rule channels: ")[1].split(", ")
        assert named == sorted({"rule:cats", "rule:python", *stored})
        assert "known" not in _ask(ws, "rule:python")
    finally:
        ws.close()


def test_a_serving_replica_over_postgresql_knows_the_ingesters_rule_set(
    pg_url: str, start_relay: Callable[..., RelayServer]
) -> None:
    # The sample, recorded in PostgreSQL.
    start_relay(store=pg_url, source=bundled_sample(), role="ingest", metrics_port=0)
    replica = start_relay(store=pg_url, role="serve")
    ws = ws_connect(replica.ws_url)
    try:
        refused = _ask(ws, "rule:nope")
        assert refused["code"] == "unknown_channel" and "the bundled sample" in refused["message"]
        assert "known" not in _ask(ws, "rule:news")
    finally:
        ws.close()


# -- the clients ----------------------------------------------------------------------------


def _demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "client_demo.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_relay_demo_on_a_mistyped_rule_channel_is_one_line_and_exit_2(
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(source=bundled_sample())
    proc = _demo(relay.url, "--channel", "rule:nope")
    _, err = proc.communicate(timeout=6 * UNIT)
    assert proc.returncode == 2
    lines = [line for line in err.splitlines() if line != "relay-demo: connected"]
    assert len(lines) == 1 and "unknown_channel" in lines[0] and "rule:cats" in lines[0], err


def test_relay_demo_says_when_no_tweet_has_matched_a_rule_yet(
    pushed: RelayServer,
) -> None:
    relay = pushed
    proc = _demo("--json", relay.url, "--channel", "rule:nope")
    assert proc.stderr is not None and proc.stdout is not None
    try:
        lines = [proc.stderr.readline() for _ in range(2)]
        assert lines[0] == "relay-demo: connected\n"
        assert "subscribed to rule:nope, but no tweet has matched that rule yet" in lines[1]
        relay.push(stream_line(7, tags=("nope",)))
        assert orjson.loads(proc.stdout.readline())["id"] == "7"  # and it goes on live
    finally:
        proc.kill()
        proc.communicate()


PAGE_WAIT = 6 * UNIT * 1000


def test_the_page_refuses_a_mistyped_rule_channel_and_names_the_rules(
    page: Any,  # noqa: F811
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(source=bundled_sample())
    page.goto(relay.url + "/?channel=rule:nope")
    page.wait_for_function("document.body.dataset.state === 'locked'", timeout=PAGE_WAIT)
    assert page.locator("#state").inner_text() == "no such channel"
    assert "rule:cats" in page.locator("#error").inner_text()


def test_the_page_says_when_no_tweet_has_matched_a_rule_yet(
    page: Any,  # noqa: F811
    pushed: RelayServer,
) -> None:
    relay = pushed
    page.goto(relay.url + "/?channel=rule:nope")
    page.wait_for_function("document.body.dataset.state === 'live'", timeout=PAGE_WAIT)
    assert "no tweet has matched this rule yet" in page.locator("#state").inner_text()
    relay.push(stream_line(8, tags=("nope",)))
    page.wait_for_function("window.relayDemo.seqs.length === 1", timeout=PAGE_WAIT)


# -- relay token ----------------------------------------------------------------------------


def _token(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "X_"))}
    clean.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "relay", "token", "--sub", "alice", "--db", str(db), *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), "RELAY_SECRET": SECRET},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _store_with(path: Path, rule_set: RuleSet) -> Path:
    from relay.store.sqlite.store import SQLiteStore

    async def run() -> None:
        store = await SQLiteStore.open(path)
        await store.set_state(STATE_KEY, rule_set.encode())
        await store.close()

    # In a thread of its own: the page tests' browser keeps an event loop in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()
    return path


def test_relay_token_refuses_a_channel_that_matches_nothing_unless_forced(
    tmp_path: Path,
) -> None:
    closed = _store_with(tmp_path / "closed.db", sample_rules())
    for pattern, what in (("nonsense", "can match no channel"), ("rule:nope", "rule:nope")):
        refused = _token("--channel", "tweets", "--channel", pattern, db=closed)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.count("\n") == 1 and what in refused.stderr
        assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert "cats, football" in refused.stderr  # the rules there are
    good = _token("--channel", "rule:*", "--channel", "rule:cats", "--channel", "$stats", db=closed)
    assert good.returncode == 0 and good.stdout.count(".") == 2  # a JWT
    assert "warning" not in good.stderr
    forced = _token("--channel", "rule:nope", "--force", db=closed)
    assert forced.returncode == 0 and forced.stdout.count(".") == 2
    assert "warning" in forced.stderr and "rule:nope" in forced.stderr
    # An open set (a recording still being read): a warning, and the token.
    opened = _store_with(tmp_path / "open.db", RuleSet(frozenset(), False, "the recording r"))
    early = _token("--channel", "rule:nope", db=opened)
    assert early.returncode == 0 and "no tweet has matched" in early.stderr
    # No store yet: the shape is checked, the rest said to be unchecked.
    unchecked = _token("--channel", "rule:nope", db=tmp_path / "none.db")
    assert unchecked.returncode == 0 and "cannot check the channels" in unchecked.stderr
    assert _token("--channel", "nonsense", db=tmp_path / "none.db").returncode == 2


def test_a_stream_of_several_channels_names_those_not_known_yet(pushed: RelayServer) -> None:
    """A server-sent events stream of several channels is one subscription over their
    union, so its ``subscribed`` lists the rule channels no tweet matched yet."""
    from relay.testing import SseClient

    relay = pushed  # a source that declares no rules: the set stays open
    relay.push(stream_line(1, tags=("cats",)))
    with SseClient(relay.events_url, "rule:cats") as first:
        assert first.tweets(1)[0]["seq"] == 1  # known from here on
    with SseClient(relay.events_url, ["rule:cats", "rule:nope"]) as both:
        said = both.next_frame()
        assert said["type"] == "subscribed" and said["unknown"] == ["rule:nope"]
        relay.push(stream_line(2, tags=("nope",)))
        tweet = both.tweets(1)[0]
        assert tweet["seq"] == 2 and tweet["channels"] == ["rule:nope"]
    with SseClient(relay.events_url, ["rule:cats", "rule:nope"]) as later:
        assert "unknown" not in later.next_frame()
