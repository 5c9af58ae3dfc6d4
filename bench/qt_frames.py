"""The Qt client's frame time at a steady tweet rate, offscreen, software renderer.

``python -m bench.qt_frames [--rate 250] [--seconds 20]``: a relay in this process is
fed the synthetic stream (every script, links, emoji) at ``--rate`` tweets/s; ``relay-qt``'s
window runs in another process (``QT_QPA_PLATFORM=offscreen``,
``QT_QUICK_BACKEND=software``) and times each frame it draws, from the window's update
request to the frame's swap (polish, where the list makes its rows, then sync and
render; wall time, and the GUI thread's CPU time, which the software renderer does all
its work on: on a shared machine the wall time also counts waiting for a core), and each
insertion into the list. It runs twice on the same stream: rows
inserted in batches every 50 ms (what ``relay-qt`` does), and its peer, each tweet
inserted as it comes (``--batch-ms 0``). Each run prints one JSON line; the table
follows. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def child(url: str, batch_ms: int, seconds: float, keep: int) -> None:
    """The measured side: relay-qt's Session and window, with a stopwatch on each frame."""
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    os.environ["QT_QUICK_BACKEND"] = "software"
    from PySide6.QtCore import QEvent, QObject, QTimer

    from client_demo.qt.app import application, close, window
    from client_demo.qt.session import Session

    app = application()
    session = Session(url, keep=keep, batch_ms=batch_ms, say=lambda _: None)
    view = window(session)
    frames: list[float] = []
    frames_cpu: list[float] = []
    inserts: list[float] = []
    started: list[tuple[float, float]] = []

    class Stopwatch(QObject):
        def eventFilter(self, watched: QObject, event: QEvent) -> bool:
            if event.type() == QEvent.Type.UpdateRequest:
                started.append((time.perf_counter(), time.thread_time()))
            return False

    def swapped() -> None:
        if started and session.live:
            wall, cpu = started[-1]
            frames.append((time.perf_counter() - wall) * 1000)
            frames_cpu.append((time.thread_time() - cpu) * 1000)
        started.clear()

    flush = session.model.flush

    def timed_flush() -> int:
        begin = time.perf_counter()
        count = flush()
        if count:
            inserts.append((time.perf_counter() - begin) * 1000)
        return count

    session.model.flush = timed_flush  # type: ignore[method-assign]
    session.flush_timer.timeout.disconnect()
    session.flush_timer.timeout.connect(timed_flush)
    stopwatch = Stopwatch()
    view.installEventFilter(stopwatch)
    view.frameSwapped.connect(swapped)
    view.show()
    session.start()
    shown_at_start: list[int] = []
    cpu_at_start: list[float] = []

    def begin_when_live() -> None:
        if not session.live:
            QTimer.singleShot(50, begin_when_live)
            return
        frames.clear()
        frames_cpu.clear()
        inserts.clear()
        shown_at_start.append(session.model.tweets.position.seq or 0)
        cpu_at_start.append(time.process_time())
        QTimer.singleShot(int(seconds * 1000), app.quit)

    begin_when_live()
    app.exec()
    received = (session.model.tweets.position.seq or 0) - shown_at_start[0]
    cpu_share = (time.process_time() - cpu_at_start[0]) / seconds
    session.stop()
    close(view)
    print(
        json.dumps(
            {
                "batch_ms": batch_ms,
                "frames": len(frames),
                "frame_p50_ms": round(percentile(frames, 0.5), 2),
                "frame_p99_ms": round(percentile(frames, 0.99), 2),
                "frame_max_ms": round(max(frames, default=0.0), 2),
                "frame_cpu_p50_ms": round(percentile(frames_cpu, 0.5), 2),
                "frame_cpu_p99_ms": round(percentile(frames_cpu, 0.99), 2),
                "load": round(os.getloadavg()[0], 1),
                "process_cpu_percent": round(cpu_share * 100, 1),
                "inserts": len(inserts),
                "insert_p99_ms": round(percentile(inserts, 0.99), 2),
                "tweets": received,
                "rows": session.model.rowCount(),
            }
        ),
        flush=True,
    )


def feed(relay: Any, rate: float, stop: threading.Event) -> None:
    """``rate`` tweets a second, in steps of 20 ms, until ``stop``."""
    from relay.sources.synth import generate

    lines = generate(2_000_000, seed=24, rate=rate)
    step = 0.02
    per_step = rate * step
    owed = 0.0
    next_at = time.perf_counter()
    while not stop.is_set():
        owed += per_step
        count, owed = int(owed), owed - int(owed)
        if count:
            relay.push(*(next(lines) for _ in range(count)))
        next_at += step
        time.sleep(max(0.0, next_at - time.perf_counter()))


def measure(
    rate: float, seconds: float, keep: int, batches: tuple[int, ...] = (50, 0)
) -> list[dict[str, Any]]:
    from relay.testing import RelayServer

    results = []
    with RelayServer(keep_open=True) as relay:
        stop = threading.Event()
        feeder = threading.Thread(target=feed, args=(relay, rate, stop), daemon=True)
        feeder.start()
        try:
            for batch_ms in batches:
                done = subprocess.run(
                    [
                        *(sys.executable, "-m", "bench.qt_frames", "--child", relay.url),
                        *("--batch-ms", str(batch_ms), "--seconds", str(seconds)),
                        *("--keep", str(keep)),
                    ],
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                    capture_output=True,
                    text=True,
                    timeout=seconds + 120,
                )
                if done.returncode != 0:
                    raise SystemExit(f"the Qt client failed: {done.stderr[-2000:]}")
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(done.stdout.strip().splitlines()[-1], flush=True)
        finally:
            stop.set()
            feeder.join()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.qt_frames")
    parser.add_argument("--rate", type=float, default=250.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--keep", type=int, default=500)
    parser.add_argument("--child", metavar="URL")
    parser.add_argument("--batch-ms", type=int, default=50)
    parser.add_argument("--try", dest="tries", metavar="MS,MS", help="other batch intervals")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch_ms, args.seconds, args.keep)
        return
    if args.tries:
        measure(args.rate, args.seconds, args.keep, tuple(int(ms) for ms in args.tries.split(",")))
        return
    batched, each = measure(args.rate, args.seconds, args.keep)
    print(
        f"\nrelay-qt at {args.rate:.0f} tweets/s, offscreen, software renderer, "
        f"{args.seconds:.0f} s"
    )
    print(f"{'':26}{'batched (50 ms)':>18}{'each tweet at once':>22}")
    for key, label in (
        ("frame_p50_ms", "frame time p50 (ms)"),
        ("frame_p99_ms", "frame time p99 (ms)"),
        ("frame_max_ms", "frame time max (ms)"),
        ("frame_cpu_p50_ms", "frame CPU p50 (ms)"),
        ("frame_cpu_p99_ms", "frame CPU p99 (ms)"),
        ("frames", "frames drawn"),
        ("process_cpu_percent", "client CPU (% of a core)"),
        ("insert_p99_ms", "insertion p99 (ms)"),
        ("inserts", "insertions"),
        ("tweets", "tweets received"),
        ("load", "load average (2 cores)"),
    ):
        print(f"{label:26}{batched[key]:>18}{each[key]:>22}")


if __name__ == "__main__":
    main()
