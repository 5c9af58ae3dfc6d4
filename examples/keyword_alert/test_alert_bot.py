"""The alert bot tested against recorded streams, with relay.testing's pytest plugin only.

No conftest: ``relay_server``, ``relay_server_factory`` and the ``relay`` marker come
from the installed tweet-relay package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alert_bot import AlertBot

from relay.testing import RelayServer


@pytest.mark.relay(replay="sample", speed="max")
def test_alerts_on_every_tweet_with_a_keyword(relay_server: RelayServer, tmp_path: Path) -> None:
    relay_server.wait_replayed()
    bot = AlertBot(
        relay_server.ws_url, ["python"], tmp_path / "state.json", start_at=(relay_server.epoch, 0)
    )
    alerts = bot.run(until_seq=relay_server.head)
    # The same recording gives the same seqs on every run: exact output can be asserted.
    assert len(alerts) == 194
    assert alerts[0].seq == 9
    assert all("python" in a.text.lower() for a in alerts)


def test_resumes_after_a_restart_without_a_gap_or_a_repeat(
    relay_server_factory: Any, tmp_path: Path
) -> None:
    server = relay_server_factory("sample", speed="step")
    start = (server.epoch, 0)
    server.step(500)
    server.wait_seq(500)
    first = AlertBot(server.ws_url, ["cat"], tmp_path / "bot.json", start_at=start)
    before = first.run(until_seq=500)
    server.step(700)  # tweets arrive while the bot is down
    second = AlertBot(server.ws_url, ["cat"], tmp_path / "bot.json")  # restarted
    after = second.run(until_seq=1200)

    straight = AlertBot(server.ws_url, ["cat"], tmp_path / "other.json", start_at=start)
    assert [a.seq for a in before + after] == [a.seq for a in straight.run(until_seq=1200)]
    assert before and after and before[-1].seq < after[0].seq


def test_starts_over_when_the_relay_has_a_new_store(
    relay_server_factory: Any, tmp_path: Path
) -> None:
    server = relay_server_factory("sample", speed="step", epoch="00000000000000aa")
    state = tmp_path / "bot.json"
    state.write_text('{"epoch": "00000000000000ff", "seq": 40}')  # from an older store
    bot = AlertBot(server.ws_url, ["cat"], state)
    server.step(20)
    bot.run(until_seq=20)
    assert bot.resets == 1
    assert bot.position == {"epoch": "00000000000000aa", "seq": 20}
