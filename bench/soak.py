"""``make soak``: a relay ingesting at full speed under many clients for a few minutes.

The relay runs as a subprocess (``relay run --replay <synthetic> --speed max --loop``) on
127.0.0.1; worker processes drive it (see :mod:`bench.soak_clients`): a reference reader of
``tweets`` checking seq continuity, subscribers with filters, churning and resuming clients,
slow readers, clients that never read, ping floods, bad and oversized frames, subscribe
churn, and heavy object API queries. This process samples the relay's resident memory
every second and the latency of ``/healthz``. Figures are printed and written to
``<out>/soak-report.json`` and ``<out>/soak-report.txt``. Everything is bounded: the run
stops by itself after ``--duration`` seconds plus a short drain.

Run with ``python -m bench.soak [--duration 180] [--out tmp/soak] [--scale 1]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from queue import Empty
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.soak_clients import GROUPS, HOST, run_worker

ROOT = Path(__file__).resolve().parent.parent


class Relay:
    """``python -m relay run`` on a free port of 127.0.0.1, its log in a file."""

    def __init__(self, folder: Path, stream: Path, log_level: str, speed: str) -> None:
        self.log_path = folder / "relay.log"
        self.log = self.log_path.open("w")
        args = ["--port", "0", "--host", HOST, "--replay", str(stream), "--speed", speed]
        args += ["--loop", "--db", str(folder / "soak.db"), "--log-level", log_level]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run", *args],
            cwd=ROOT,
            env={**_clean_env(), "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the first URL line, or "" if it died
        match = re.search(r"http://[\w.]+:(\d+)/", line)
        if not match:
            self.proc.kill()
            raise SystemExit(f"the relay did not start: {self.log_path.read_text()[-2000:]}")
        self.port = int(match.group(1))
        self.url = f"http://{HOST}:{self.port}"

    def rss_mb(self) -> float | None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return int(match.group(1)) / 1024 if match else None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.log.close()
        return code


def _clean_env() -> dict[str, str]:
    """The caller's environment without relay settings, so the soak runs the defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "PORT"}


class Sampler(threading.Thread):
    """Calls ``sample`` every ``interval`` seconds until stopped; keeps (elapsed, value)."""

    def __init__(self, interval: float, sample: Any) -> None:
        super().__init__(daemon=True)
        self.interval, self.sample = interval, sample
        self.values: list[tuple[float, Any]] = []
        self.stopping = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.values.append((time.monotonic() - self.started_at, self.sample()))


def health_probe(url: str) -> float | None:
    """Milliseconds for ``/healthz`` to answer 200; None when it did not within 10 s."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
            response.read()
            ok = response.status == 200
    except OSError:
        return None
    return (time.perf_counter() - started) * 1000 if ok else None


def metrics(url: str) -> dict[str, float]:
    """The relay's unlabelled counters and gauges from ``/metrics``, summed over labels."""
    values: Counter[str] = Counter()
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
            text = response.read().decode()
    except OSError:
        return {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name.partition("{")[0]] += float(value)
    return dict(values)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def slope_mb_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of resident memory over the second half of the run."""
    half = [p for p in points if p[0] >= points[-1][0] / 2] if points else []
    if len(half) < 3:
        return None
    xs, ys = [p[0] for p in half], [p[1] for p in half]
    return float(statistics.linear_regression(xs, ys).slope * 60)


def run(args: argparse.Namespace) -> dict[str, Any]:
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        stream = folder / "x.jsonl.gz"
        synth = [sys.executable, "-m", "relay", "synth", "--count", str(args.count)]
        subprocess.run(
            [*synth, "--seed", "1", "--out", str(stream)],
            cwd=ROOT,
            check=True,
            env={**_clean_env(), "PYTHONPATH": str(ROOT)},
            capture_output=True,
        )
        relay = Relay(folder, stream, args.log_level, args.speed)
        console.print(f"soak: relay pid {relay.proc.pid} on {relay.url}, {args.duration:.0f} s")
        rss = Sampler(1.0, relay.rss_mb)
        health = Sampler(0.25, lambda: health_probe(relay.url))
        rss.start()
        health.start()
        context = multiprocessing.get_context("spawn")
        results: Any = context.Queue()
        deadline = time.time() + args.duration
        workers = [
            context.Process(
                target=run_worker,
                args=(group, relay.port, deadline, args.scale, results),
                name=f"soak {group}",
            )
            for group in GROUPS
        ]
        for worker in workers:
            worker.start()
        kinds: dict[str, dict[str, Any]] = {}
        for _ in workers:
            try:
                _, tallies = results.get(timeout=args.duration + 60)
            except Empty:
                break
            kinds.update(tallies)
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.kill()
        final = metrics(relay.url)
        rss.stopping.set()
        health.stopping.set()
        exit_code = relay.stop()
        log_text = relay.log_path.read_text(errors="replace")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "relay.log").write_text(log_text)  # kept beside the report, to read what it says
    return figures(args, kinds, rss.values, health.values, final, exit_code, log_text)


def figures(
    args: argparse.Namespace,
    kinds: dict[str, dict[str, Any]],
    rss: list[tuple[float, Any]],
    health: list[tuple[float, Any]],
    final: dict[str, float],
    exit_code: int,
    log_text: str,
) -> dict[str, Any]:
    memory = [(t, v) for t, v in rss if v is not None]
    answered = [v for _, v in health if v is not None]
    ref = kinds.get("reference", {})
    live: list[float] = ref.get("latencies_ms", [])
    subscribers: list[float] = kinds.get("subscriber", {}).get("latencies_ms", [])
    expected = (ref["last_seq"] - ref["first_seq"] + 1) if ref.get("first_seq") else 0
    statuses: Counter[str] = Counter(kinds.get("query", {}).get("statuses", {}))
    query_ms = kinds.get("query", {}).get("latencies_ms", [])
    return {
        "duration_s": args.duration,
        "scale": args.scale,
        "speed": args.speed,
        "memory_mb": {
            "start": memory[0][1] if memory else None,
            "max": max(v for _, v in memory) if memory else None,
            "end": memory[-1][1] if memory else None,
            "slope_last_half_mb_per_min": slope_mb_per_min(memory),
            "samples": [(round(t, 1), round(v, 1)) for t, v in memory],
        },
        "healthz_ms": {
            "probes": len(health),
            "unanswered": len(health) - len(answered),
            "p50": percentile(answered, 50),
            "p99": percentile(answered, 99),
            "max": max(answered) if answered else None,
        },
        "live_delivery_ms": {
            "samples": len(live),
            "p50": percentile(live, 50),
            "p99": percentile(live, 99),
            "subscribers_p50": percentile(subscribers, 50),
            "subscribers_p99": percentile(subscribers, 99),
        },
        "tweets": {
            "stored": final.get("relay_tweets_stored_total"),
            "head_seq": final.get("relay_head_seq"),
            "reference_first_seq": ref.get("first_seq"),
            "reference_last_seq": ref.get("last_seq"),
            "stored_in_reference_range": expected,
            "reference_delivered_unique": ref.get("unique_seqs"),
            "reference_gaps": ref.get("gaps"),
            "reference_gap_examples": ref.get("gap_examples"),
            "reference_resumes": ref.get("resumes"),
        },
        "queries": {
            "statuses": dict(statuses),
            "p50_ms": percentile(query_ms, 50),
            "p99_ms": percentile(query_ms, 99),
        },
        "clients": {
            name: {k: v for k, v in tally.items() if k != "latencies_ms"}
            for name, tally in kinds.items()
        },
        "relay": {
            "exit_code": exit_code,
            "log_lines": log_text.count("\n"),
            "tracebacks": log_text.count("Traceback"),
            "slow_consumers_closed": final.get("relay_slow_consumers_closed_total"),
            "frames_sent": final.get("relay_frames_sent_total"),
        },
    }


def render(report: dict[str, Any], console: Console) -> None:
    def fmt(value: Any) -> str:
        return f"{value:,.1f}" if isinstance(value, float) else str(value)

    table = Table("figure", "value", title="soak: the relay")
    m, h, d, t = (
        report["memory_mb"],
        report["healthz_ms"],
        report["live_delivery_ms"],
        report["tweets"],
    )
    rows = [
        (
            "resident MB: start / max / end",
            f"{fmt(m['start'])} / {fmt(m['max'])} / {fmt(m['end'])}",
        ),
        ("resident MB/min over the last half (flat is 0)", fmt(m["slope_last_half_mb_per_min"])),
        ("/healthz ms: p50 / p99 / max", f"{fmt(h['p50'])} / {fmt(h['p99'])} / {fmt(h['max'])}"),
        ("/healthz probes unanswered in 10 s", f"{h['unanswered']} of {h['probes']}"),
        ("live delivery ms (reference): p50 / p99", f"{fmt(d['p50'])} / {fmt(d['p99'])}"),
        (
            "live delivery ms (filtered subscribers): p50 / p99",
            f"{fmt(d['subscribers_p50'])} / {fmt(d['subscribers_p99'])}",
        ),
        ("tweets stored (relay_tweets_stored)", fmt(t["stored"])),
        (
            "reference range: stored / delivered / gaps",
            f"{t['stored_in_reference_range']} / {t['reference_delivered_unique']} / "
            f"{t['reference_gaps']}",
        ),
        ("reference resumes", fmt(t["reference_resumes"])),
        ("object API statuses", fmt(report["queries"]["statuses"])),
        (
            "object API ms: p50 / p99",
            f"{fmt(report['queries']['p50_ms'])} / {fmt(report['queries']['p99_ms'])}",
        ),
        (
            "relay exit code / log lines / tracebacks",
            f"{report['relay']['exit_code']} / {report['relay']['log_lines']} / "
            f"{report['relay']['tracebacks']}",
        ),
    ]
    every_10s = [f"{v:.0f}" for t, v in m["samples"] if round(t) % 10 == 0]
    rows.insert(2, ("resident MB every 10 s", " ".join(every_10s[:40])))
    for row in rows:
        table.add_row(*row)
    console.print(table)
    clients = Table(
        "client",
        "connects",
        "refused",
        "closes (code: count)",
        "frames",
        "errors",
        title="soak: what each kind of client saw",
    )
    for name, tally in report["clients"].items():
        clients.add_row(
            name,
            fmt(tally["connects"]),
            fmt(tally["refused"] or ""),
            fmt(tally["closes"] or ""),
            fmt(tally["frames"]),
            fmt(tally["errors"] or ""),
        )
    console.print(clients)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load (180)")
    parser.add_argument("--out", default="tmp/soak", help="report folder (tmp/soak)")
    parser.add_argument("--count", type=int, default=20_000, help="tweets in the synthetic file")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every client count")
    parser.add_argument("--speed", default="max", help="replay pace: max, or N times (max)")
    parser.add_argument("--log-level", default="info", help="the relay's log level (info)")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 3600:
        parser.error("--duration must be 1..3600 seconds")
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak-report.json").write_text(json.dumps(report, indent=1) + "\n")
    console = Console(record=True, width=120)
    render(report, console)
    (out / "soak-report.txt").write_text(console.export_text())
    console.print(f"report: {out / 'soak-report.json'} and {out / 'soak-report.txt'}; relay.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
