"""Real X API captures (twarc2 output) replay through the relay."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from relay.testing import RelayServer
from tests.support import counted, wait_for


def _well_formed_ids(files: list[Path]) -> tuple[list[str], int]:
    ids: list[str] = []
    bad = 0
    for file in files:
        for line in file.read_bytes().splitlines():
            try:
                payload = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad += 1
                continue
            data = payload["data"]
            for tweet in data if isinstance(data, list) else [data]:
                ids.append(str(tweet["id"]))
    return ids, bad


def test_every_capture_replays_each_well_formed_tweet_stored_once(
    captures: Path,
    tmp_path: Path,
    start_relay: Callable[..., RelayServer],
) -> None:
    files = sorted(captures.glob("*.jsonl"))
    assert files, "the captures folder holds no .jsonl files"
    combined = tmp_path / "all.jsonl"
    # Twice over: the second copy must be dropped as duplicates.
    combined.write_bytes(b"".join(f.read_bytes().rstrip(b"\n") + b"\n" for f in files * 2))
    expected, truncated = _well_formed_ids(files)
    assert truncated == 1, "the captures README promises one truncated line"

    relay = start_relay(replay=combined)
    wait_for(
        lambda: relay.relay.ingest is not None and relay.relay.ingest.finished.is_set(),
        20,
        "the replay to finish",
    )
    stored = relay.all_tweets()
    assert sorted(t["id"] for t in stored) == sorted(set(expected))
    metrics = relay.relay.metrics
    assert counted(metrics.malformed) == 2 * truncated
    assert metrics.duplicates._value.get() == len(expected) * 2 - len(set(expected))


def test_a_capture_with_numeric_rule_ids_and_null_tags_publishes_on_the_rule_id_channel(
    captures: Path,
    start_relay: Callable[..., RelayServer],
) -> None:
    relay = start_relay(replay=captures / "streaming_output_with_error.jsonl")
    wait_for(
        lambda: relay.relay.ingest is not None and relay.relay.ingest.finished.is_set(),
        20,
        "the replay to finish",
    )
    status, body = relay.get("/v1/objects/tweets?rule=1377649934414049282&count=1")
    assert status == 200 and body["count"] == 7
    assert "rule:1377649934414049282" in relay.get("/v1/info")[1]["channels"]
