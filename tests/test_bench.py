"""``make bench`` in its short form: every part runs, every row is printed, nothing hangs.

Speed is not asserted (benchmarks measure it); what is checked is that the harness
works end to end: the servers start, the load generator's clients receive every frame
of each burst and catch-up, and the table holds every row.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from tests.support import ROOT, UNIT


def test_the_quick_bench_prints_every_row_with_every_frame_delivered(tmp_path):
    args = [sys.executable, "-m", "bench", "--quick"]
    node_ready = (ROOT / "tmp" / "bench-node" / "node_modules" / "ws").is_dir()
    if not (shutil.which("node") and node_ready):
        args.append("--no-node")  # no npm install (no network) inside a test
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "COLUMNS")}
    done = subprocess.run(
        args,
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=16 * UNIT,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    for figure in (
        "server CPU per delivered frame",
        "delivered frames per second",
        "load generator: busiest",
        "line received -> frame at client",
        "server CPU a delivered frame during the paced run",
        "fresh SQLite store",
        "PostgreSQL store",
        "resumes from seq 0",
        "server-sent events: server CPU per delivered event",
        "server-sent events: 1 stream resumes from seq 0",
        "idle subscribers",
        "rewind to a time in a store",
        "a plain resume (since epoch + seq) from the same seqs",
    ):
        assert figure in out, f"no row {figure!r} in:\n{out}"
    assert "failed" not in out, out
    # Every burst and catch-up delivered all its frames, with no seq gap, to relay and peer.
    counts = re.findall(r"\(([\d,]+)/([\d,]+)(, \d+ gaps)?\)", out)
    assert len(counts) >= 8, out  # with the event streams' burst and catch-up
    assert all(got == want and not gaps for got, want, gaps in counts), counts
    assert "Python" in out and "websockets" in out and "cores" in out
    assert re.search(r"Run took \d+ s", out)
