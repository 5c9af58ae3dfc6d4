"""``relay-qt`` offscreen against real relays (``relay.testing.RelayServer``): tweets in
order from a recorded stream, a restart with no gap and no duplicate, a private relay's
one-line reason, an unreachable relay's, and the window's parts bound to all of it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.core.auth import issue_token
from relay.sources.synth import write_stream
from relay.testing import RelayServer
from tests.qt_support import qt_application, wait_until
from tests.support import ROOT, UNIT, free_port, stream_line
from tests.test_auth import SECRET

WAIT = 6 * UNIT


class Client:
    """A Session and its window, as ``relay-qt URL`` makes them; what it said, kept."""

    def __init__(self, url: str, **options: Any) -> None:
        from client_demo.qt.app import window
        from client_demo.qt.session import Session

        self.said: list[str] = []
        self.session = Session(url, say=self.said.append, **options)
        self.view = window(self.session)
        self.view.show()
        self.session.start()

    @property
    def seqs(self) -> list[int]:
        return list(self.session.model.seqs())

    def label(self, name: str) -> str:
        from PySide6.QtCore import QObject

        found = self.view.rootObject().findChild(QObject, name)
        assert found is not None, f"no {name} in the window"
        return str(found.property("text"))

    def close(self) -> None:
        from client_demo.qt.app import close

        self.session.stop()
        close(self.view)


@pytest.fixture
def client() -> Iterator[Callable[..., Client]]:
    qt_application()
    made: list[Client] = []

    def make(url: str, **options: Any) -> Client:
        made.append(Client(url, **options))
        return made[-1]

    yield make
    for one in made:
        one.close()


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "recorded.jsonl"
    write_stream(path, 120, seed=11)
    return path


def test_tweets_appear_in_order_and_go_on_after_a_relay_restart(
    start_relay: Callable[..., RelayServer], client: Callable[..., Client], recording: Path
) -> None:
    port = free_port()
    relay = start_relay(recording, speed="step", port=port)
    relay.step(30)
    relay.wait_seq(30)
    shown = client(relay.url, keep=1000)
    wait_until(lambda: shown.session.live, WAIT, "the stream to go live")
    assert shown.seqs == list(range(30, 10, -1)), "the 20 newest stored tweets, newest first"
    relay.step(30)
    wait_until(lambda: shown.seqs[:1] == [60], WAIT, "the live tweets up to seq 60")
    assert shown.seqs == list(range(60, 10, -1))
    assert shown.label("status") == "live on tweets"

    relay.stop()
    wait_until(lambda: not shown.session.live, WAIT, "the client to see the relay go")
    assert "the relay ended the stream (1001 shutdown)" in shown.label("status")
    # The same store on the same port: the recording again (its first 60 lines are
    # stored already: exactly once) and 60 new ones, stored while the client is away.
    relay = start_relay(recording, speed="max", port=port)
    relay.wait_replayed()
    assert relay.head == 120
    wait_until(lambda: shown.seqs[:1] == [120], WAIT, "the tweets stored while away")
    assert shown.seqs == list(range(120, 10, -1)), "a gap or a duplicate across the restart"
    stored = {t["seq"]: t["id"] for t in relay.all_tweets()}
    assert [shown.session.model.row(i).tweet_id for i in range(3)] == [
        stored[120],
        stored[119],
        stored[118],
    ]
    assert shown.session.live and shown.label("status") == "live on tweets"


def test_the_list_keeps_the_newest_n_and_shows_deletions_and_stats(
    start_relay: Callable[..., RelayServer], client: Callable[..., Client], tmp_path: Path
) -> None:
    relay = start_relay()
    shown = client(relay.url, keep=5)
    wait_until(lambda: shown.session.live, WAIT, "the stream to go live")
    relay.push(*(stream_line(n, f"tweet {n}") for n in range(1, 9)))
    wait_until(lambda: shown.seqs[:1] == [8], WAIT, "eight live tweets")
    assert shown.seqs == [8, 7, 6, 5, 4]
    wait_until(lambda: "connections" in shown.label("stats"), WAIT, "a $stats sample")
    assert "head #" in shown.label("stats")
    assert relay.relay is not None
    ids = tmp_path / "deletions.txt"
    ids.write_text("7\n")
    deleted = subprocess.run(
        [sys.executable, "-m", "relay", "delete", "--from-file", str(ids)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "RELAY_DB": relay.relay.settings.db},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert deleted.returncode == 0, deleted.stderr
    wait_until(lambda: 7 not in shown.seqs, WAIT, "the deleted tweet to leave the list")
    assert shown.seqs == [8, 6, 5, 4]


def test_a_private_relay_without_a_token_says_why_in_one_line_then_takes_one(
    start_relay: Callable[..., RelayServer], client: Callable[..., Client]
) -> None:
    relay = start_relay(secret=SECRET, public_channels=[])
    relay.push(*(stream_line(n) for n in range(1, 4)))
    relay.wait_seq(3)
    shown = client(relay.url)
    wait_until(lambda: shown.session.tokenNeeded, WAIT, "the client to ask for a token")
    reason = "the relay needs a token: give --token or set RELAY_DEMO_TOKEN"
    assert shown.label("status") == reason and shown.said == [reason]
    assert not shown.session.live and shown.seqs == []
    token = issue_token(SECRET, subject="qt", channels=["tweets"], ttl=600, now=time.time())
    shown.session.giveToken(token)
    wait_until(lambda: shown.session.live, WAIT, "the stream to go live with the token")
    assert shown.seqs == [3, 2, 1] and not shown.session.tokenNeeded


def test_a_refused_token_is_its_own_line(
    start_relay: Callable[..., RelayServer], client: Callable[..., Client]
) -> None:
    relay = start_relay(secret=SECRET, public_channels=[])
    shown = client(relay.url, token="not-a-token")
    wait_until(lambda: shown.session.tokenNeeded, WAIT, "the client to ask for a token")
    assert shown.label("status").startswith("the relay refused the token (HTTP 401")


def test_an_unreachable_relay_is_one_clear_line_and_retried(
    client: Callable[..., Client],
) -> None:
    port = free_port()
    shown = client(f"http://127.0.0.1:{port}")
    expected = f"cannot reach the relay at http://127.0.0.1:{port}: Connection refused"
    wait_until(lambda: shown.label("status").startswith(expected), WAIT, "the line")
    assert "retrying in" in shown.label("status") and not shown.session.live


def test_a_channel_the_relay_does_not_have_is_one_line_not_retried(
    start_relay: Callable[..., RelayServer], client: Callable[..., Client]
) -> None:
    from tests.support import bundled_sample

    relay = start_relay(source=bundled_sample())
    shown = client(relay.url, channel="rule:nope")
    wait_until(lambda: "nope" in shown.label("status"), WAIT, "the refusal")
    assert "unknown" in shown.label("status").lower()
    assert not shown.session.retry_timer.isActive()


def test_search_goes_through_the_object_api(
    start_relay: Callable[..., RelayServer], client: Callable[..., Client]
) -> None:
    relay = start_relay()
    relay.push(stream_line(1, "a cat here"), stream_line(2, "a dog there"))
    relay.wait_seq(2)
    shown = client(relay.url)
    wait_until(lambda: shown.session.live, WAIT, "the stream to go live")
    shown.session.search("dog", False)
    wait_until(lambda: shown.session.searchStatus.endswith("found in all channels"), WAIT, "search")
    assert shown.session.searchStatus == "1 found in all channels"
    assert shown.session.results.seqs() == [2]


def test_an_expired_token_asks_for_a_new_one_and_goes_on_without_a_gap(
    start_relay: Callable[..., RelayServer], client: Callable[..., Client]
) -> None:
    relay = start_relay(secret=SECRET, public_channels=[])
    short = issue_token(SECRET, subject="qt", channels=["tweets"], ttl=2, now=time.time())
    shown = client(relay.url, token=short)
    wait_until(lambda: shown.session.live, WAIT, "the stream to go live")
    relay.push(*(stream_line(n) for n in range(1, 4)))
    wait_until(lambda: shown.seqs[:1] == [3], WAIT, "three live tweets")
    wait_until(lambda: shown.session.tokenNeeded, WAIT, "the relay to end the expired stream")
    assert shown.label("status").startswith("the token expired: enter a new token")
    relay.push(*(stream_line(n) for n in range(4, 7)))  # while the client waits
    relay.wait_seq(6)
    fresh = issue_token(SECRET, subject="qt", channels=["tweets"], ttl=600, now=time.time())
    shown.session.giveToken(fresh)
    wait_until(lambda: shown.seqs[:1] == [6], WAIT, "the tweets stored while it waited")
    assert shown.seqs == [6, 5, 4, 3, 2, 1]


def test_a_replaced_store_resets_the_list_and_goes_on_live(
    start_relay: Callable[..., RelayServer], client: Callable[..., Client], tmp_path: Path
) -> None:
    port = free_port()
    relay = start_relay(port=port)
    relay.push(*(stream_line(n) for n in range(1, 6)))
    relay.wait_seq(5)
    shown = client(relay.url)
    wait_until(lambda: shown.seqs[:1] == [5], WAIT, "five tweets")
    # The client steps away first (the restart test has it see the relay go), so that
    # nothing of it connects while the relay stops.
    shown.session.stop()
    relay.stop()
    relay = start_relay(port=port, store=tmp_path / "another.db")  # another epoch
    shown.session.reconnect()
    wait_until(lambda: shown.session.live, WAIT, "the client to come back")
    assert shown.label("status") == "live on tweets"
    assert shown.seqs == [] and "the relay's store changed" in " ".join(shown.said)
    relay.push(stream_line(100, "new store"), stream_line(101, "new store"))
    wait_until(lambda: shown.seqs == [2, 1], WAIT, "the new store's tweets")


def test_the_channel_picker_lists_the_relays_channels_and_switches(
    start_relay: Callable[..., RelayServer], client: Callable[..., Client]
) -> None:
    relay = start_relay()
    relay.push(
        stream_line(1, "a cat", tags=("cats",)),
        stream_line(2, "a dog", tags=("dogs",)),
        stream_line(3, "a cat again", tags=("cats",)),
    )
    relay.wait_seq(3)
    shown = client(relay.url)
    wait_until(lambda: shown.session.live, WAIT, "the stream to go live")
    assert shown.seqs == [3, 2, 1]
    assert shown.session.channels == ["tweets", "rule:cats", "rule:dogs"]
    from PySide6.QtCore import QObject

    picker = shown.view.rootObject().findChild(QObject, "channelBox")
    assert picker.property("count") == 3 and picker.property("currentText") == "tweets"
    shown.session.openChannel("rule:cats")
    wait_until(lambda: shown.session.live and shown.seqs == [3, 1], WAIT, "the cats only")
    assert picker.property("currentText") == "rule:cats"
    relay.push(stream_line(4, "dog", tags=("dogs",)), stream_line(5, "cat", tags=("cats",)))
    wait_until(lambda: shown.seqs[:1] == [5], WAIT, "a live cat")
    assert shown.seqs == [5, 3, 1]


def test_a_resume_past_the_kept_history_says_where_it_starts(
    start_relay: Callable[..., RelayServer], client: Callable[..., Client]
) -> None:
    from relay.jobs.retention import Retention, apply_retention

    relay = start_relay()
    relay.push(*(stream_line(n) for n in range(1, 11)))
    relay.wait_seq(10)
    shown = client(relay.url, keep=1000)
    wait_until(lambda: shown.seqs[:1] == [10], WAIT, "ten tweets")
    shown.session.stop()  # away while the relay goes on and retention deletes
    relay.push(*(stream_line(n) for n in range(11, 41)))
    relay.wait_seq(40)
    assert relay.relay is not None and relay.relay.store is not None
    relay.call(apply_retention(relay.relay.store, Retention(max_tweets=10), time.time()))
    shown.session.reconnect()
    wait_until(lambda: shown.seqs[:1] == [40], WAIT, "the kept tweets")
    assert "history now starts at seq 31: older tweets were deleted" in shown.said
    assert shown.seqs == [*range(40, 30, -1), *range(10, 0, -1)]  # the hole is retention's


def test_a_server_that_is_not_a_relay_is_one_line_and_retried(
    client: Callable[..., Client],
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotARelay(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>a web page</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotARelay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        shown = client(url)
        wait_until(lambda: "is not a relay's answer" in shown.label("status"), WAIT, "the line")
        assert shown.label("status").startswith(f"{url}/v1/info is not a relay's answer")
        assert shown.session.retry_timer.isActive() and not shown.session.live
    finally:
        server.shutdown()
        server.server_close()
