"""Findings of a hostile tester against the hardened relay, each one a regression test.

Real relays on 127.0.0.1, real clients; nothing here stands in for a part of the relay.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import InvalidStatus

from relay.testing import RelayServer
from tests.support import ROOT, UNIT, counted, ws_connect
from tests.test_access import SECRET

Start = Callable[..., RelayServer]

REFUSALS = 60
"""Three times the log sampler's burst: enough to tell sampled lines from one a refusal."""


def test_refusals_are_all_counted_but_only_a_sample_is_logged(
    start_relay: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """An anonymous client chooses how often it is refused: it must not choose the log's size.

    Before, every refused handshake and every refused frame wrote a line: 3,000 handshakes
    with a bad token wrote 3,000 lines, and 10 connections sending bad frames within their
    rate wrote 200 lines a second.
    """
    caplog.set_level(logging.INFO)
    relay = start_relay(secret=SECRET, ops_per_second=1000.0, ops_burst=1000)
    metrics = relay.relay.metrics
    refused_before = counted(metrics.refused)
    for _ in range(REFUSALS):
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(relay.ws_url + "?token=not-a-token")
        assert refused.value.response.status_code == 401
    ws = ws_connect(relay.ws_url)
    try:
        for n in range(REFUSALS):
            ws.send("not json")
            reply = orjson.loads(ws.recv(timeout=UNIT))
            assert reply["code"] == "bad_request", (n, reply)
        ws.send('{"op": "ping", "id": "alive"}')
        assert orjson.loads(ws.recv(timeout=UNIT)) == {"type": "pong", "id": "alive"}
    finally:
        ws.close()

    # Every refusal is counted...
    assert counted(metrics.refused) - refused_before == REFUSALS
    assert counted(metrics.bad_frames) == REFUSALS
    # ...and a sample logged: one burst per 10 s window (two if the test straddles one).
    lines = [
        r
        for r in caplog.records
        if r.name == "relay.web.server" and r.getMessage().startswith("refused a")
    ]
    assert 0 < len(lines) <= 40, len(lines)


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads /proc (Linux)")
def test_relay_run_raises_its_open_files_limit_to_the_hard_one(tmp_path: Path) -> None:
    """Idle sockets are cheap for a client: at a soft limit of 1,024 one client holding a
    thousand half-sent requests stopped the relay accepting anyone. ``relay run`` takes
    what the operator's hard limit allows.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("no finite hard limit above the test's soft one")
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay",
            "run",
            "--port",
            "0",
            "--db",
            str(tmp_path / "r.db"),
            "--replay",
            str(empty),
            "--no-loop",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    try:
        assert proc.stdout is not None
        assert "http://" in proc.stdout.readline()  # started: the limit is set before this
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        soft_now = limits.split("Max open files")[1].split()[0]
        assert soft_now == str(hard), limits
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(4 * UNIT) == 0
        assert proc.stdout is not None
        proc.stdout.close()
