"""The processes a benchmark runs: relays, peers, Redis, load-generator workers.

Servers are subprocesses so their CPU time and memory can be read from their own
``/proc/PID`` counters; every wait has a timeout and every process is ended.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.loadgen import HOST, run_worker

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of one process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kb(pid: int) -> int:
    """Resident memory of one process in KB (VmRSS)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's relay settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RELAY_") and k not in ("DATABASE_URL", "REDIS_URL", "PORT")
    }
    env["PYTHONPATH"] = str(ROOT)
    return {**env, **extra}


class Server:
    """A server subprocess that prints its port on stdout, log to a file."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str], pattern: str) -> None:
        self.log_path = log
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        self.port = 0
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            match = re.search(pattern, line)
            if match:
                self.port = int(match.group(1))
                break
        if not self.port:
            self.stop()
            raise RuntimeError(f"{argv[:4]} did not start: {log.read_text()[-1500:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return cpu_of(self.proc.pid)

    def rss_kb(self) -> int:
        return rss_kb(self.proc.pid)

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


RELAY_ENV = {
    "RELAY_MAX_CONNECTIONS_PER_ADDRESS": "100000",
    "RELAY_MAX_SOCKETS_PER_ADDRESS": "100000",
    "RELAY_MAX_CONNECTIONS_PER_SUBJECT": "100000",
    "RELAY_LOG_LEVEL": "warning",
}


def relay_serve(folder: Path, db: Path, redis_url: str, **env: str) -> Server:
    """``relay serve`` on a free port over ``db`` (over ``DATABASE_URL`` when ``env`` names one),
    live tweets from Redis (or store polls)."""
    extra = {**RELAY_ENV, **env}
    if redis_url:
        extra["REDIS_URL"] = redis_url
    else:
        # Without a bus the store is polled for live tweets: often, unless the part says.
        extra.setdefault("RELAY_BUS_CHECK_INTERVAL", "0.05")
    argv = [sys.executable, "-m", "relay", "serve", "--port", "0", "--host", HOST]
    if not env.get("DATABASE_URL"):  # a PostgreSQL store comes migrated (its filler did it)
        subprocess.run(
            [sys.executable, "-m", "relay", "migrate", "--db", str(db)],
            cwd=ROOT,
            env=clean_env(),
            capture_output=True,
            timeout=60,
            check=True,
        )
        argv += ["--db", str(db)]
    server = Server(
        argv,
        folder / f"serve-{db.stem}.log",
        clean_env(**extra),
        r"ws://[\w.]+:(\d+)/v1/stream",
    )
    deadline = time.monotonic() + 30
    while True:  # the port is open before the store and the bus are: wait for /readyz
        try:
            with urllib.request.urlopen(f"http://{HOST}:{server.port}/readyz", timeout=5):
                return server
        except OSError as exc:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"relay serve not ready in 30 s: {exc}") from None
            time.sleep(0.1)


def relay_ingest(
    folder: Path, db: Path, stream: Path, redis_url: str, *, speed: str = "max", loop: bool = False
) -> subprocess.Popen[bytes]:
    """``relay ingest`` of ``stream`` into ``db``, publishing on Redis when given."""
    extra = dict(RELAY_ENV)
    if redis_url:
        extra["REDIS_URL"] = redis_url
    argv = [sys.executable, "-m", "relay", "ingest", "--db", str(db), "--replay", str(stream)]
    argv += ["--speed", speed, "--loop" if loop else "--no-loop"]
    log = (folder / f"ingest-{db.stem}.log").open("a")
    return subprocess.Popen(
        argv, cwd=ROOT, env=clean_env(**extra), stdout=log, stderr=log, stdin=subprocess.DEVNULL
    )


def end(proc: subprocess.Popen[bytes], timeout: float = 15) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def info(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{HOST}:{port}/v1/info", timeout=10) as reply:
        data: dict[str, Any] = json.loads(reply.read())
        return data


def python_peer(folder: Path, frames: Path, mode: str) -> Server:
    """The python-websockets peer (bench/peer.py) serving ``frames``."""
    argv = [sys.executable, "-m", "bench.peer", "--frames", str(frames), "--mode", mode]
    return Server(argv, folder / f"peer-{mode}.log", clean_env(), r"port (\d+)")


NODE_CACHE = ROOT / "tmp" / "bench-node"


NODE_ENABLED = [True]
"""Cleared by ``--no-node``."""


def node_peer(folder: Path, frames: Path, mode: str) -> Server | str:
    """Node's ``ws`` peer, or why it cannot run (no node, no npm, no ws)."""
    why = node_ready()
    if why:
        return why
    script = Path(__file__).with_name("peer_ws.js")
    env = clean_env(NODE_PATH=str(NODE_CACHE / "node_modules"))
    node = shutil.which("node") or "node"
    return Server(
        [node, str(script), str(frames), mode], folder / f"node-{mode}.log", env, r"port (\d+)"
    )


def node_ready() -> str:
    """Why Node ``ws`` cannot run here ("" when it can; the first call installs ws)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not NODE_ENABLED[0]:
        return "skipped: --no-node"
    if not node or not npm:
        return "skipped: node or npm not on PATH"
    if not (NODE_CACHE / "node_modules" / "ws").is_dir():
        NODE_CACHE.mkdir(parents=True, exist_ok=True)
        try:
            done = subprocess.run(
                [npm, "install", "--prefix", str(NODE_CACHE), "--no-save", "--silent", "ws@8"],
                capture_output=True,
                timeout=120,
            )
        except subprocess.TimeoutExpired:
            NODE_ENABLED[0] = False
            return "skipped: npm install ws took over 120 s"
        if done.returncode or not (NODE_CACHE / "node_modules" / "ws").is_dir():
            NODE_ENABLED[0] = False  # once is enough in a run
            return f"skipped: npm install ws failed: {done.stderr.decode()[-120:]}"
    return ""


class Redis:
    """A throwaway redis-server on a free port, when there is one on PATH."""

    def __init__(self, folder: Path, *, wanted: object = True) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        binary = shutil.which("redis-server")
        if not binary or not wanted:
            return
        port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, port), 0.5).close()
                self.url = f"redis://{HOST}:{port}/0"
                return
            except OSError:
                time.sleep(0.05)
        self.stop()

    def stop(self) -> None:
        if self.proc is not None:
            end(self.proc, 5)


class Generator:
    """The load generator: ``processes`` worker processes sharing ``clients`` clients."""

    def __init__(self, processes: int = 2) -> None:
        self.processes = processes
        self.context = multiprocessing.get_context("spawn")
        self.pipes: list[Connection] = []
        self.workers: list[Any] = []

    def connect(self, port: int, clients: int, subscribe: bytes, expect: int, **spec: Any) -> int:
        """Open the clients; returns how many are subscribed (raises on failure)."""
        share = [
            clients // self.processes + (n < clients % self.processes)
            for n in range(self.processes)
        ]
        stuck = spec.pop("stuck", 0)
        for n, count in enumerate(share):
            parent, child = self.context.Pipe()
            worker_spec = {
                "port": port,
                "clients": count,
                "subscribe": subscribe,
                "expect": expect,
                "stuck": stuck if n == 0 else 0,
                **spec,
            }
            worker = self.context.Process(target=run_worker, args=(child, worker_spec))
            worker.start()
            child.close()
            self.pipes.append(parent)
            self.workers.append(worker)
        timeout = spec.get("timeout", 30.0) * 5
        ready = 0
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError("a load-generator worker did not connect in time")
            answer = pipe.recv()
            if "error" in answer:
                raise RuntimeError(f"load generator: {answer['error']}")
            ready += answer["ready"]
        return ready

    def cpu(self) -> float:
        return sum(cpu_of(w.pid) for w in self.workers if w.pid)

    def send(self, command: str) -> None:
        """``wait``: count frames until each client has its ``expect``; ``hold``: until
        :meth:`release`."""
        for pipe in self.pipes:
            pipe.send(command)

    def release(self) -> None:
        for pipe in self.pipes:
            pipe.send("stop")

    def results(self, timeout: float) -> list[dict[str, Any]]:
        out = []
        for pipe in self.pipes:
            out.append(pipe.recv() if pipe.poll(timeout) else {"error": "timeout"})
        return out

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.close()
        for worker in self.workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
                worker.join(5)
        self.pipes, self.workers = [], []


class NodeClients:
    """The load generator's interface over Node ``ws`` clients (bench/clients_ws.js) in
    ``processes`` processes: WebSocket only, counting from the subscription on."""

    def __init__(self, folder: Path, processes: int = 2) -> None:
        self.folder = folder
        self.processes = processes
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[Path] = []
        self.cpu_seen: list[float] = []
        """Each process's CPU seconds when last read (they exit once they report)."""

    def connect(self, port: int, clients: int, subscribe: bytes, expect: int, **spec: Any) -> int:
        node = shutil.which("node")
        if not node or not (NODE_CACHE / "node_modules" / "ws").is_dir():
            raise RuntimeError("Node clients need node and ws (the Node peer installs it)")
        timeout = spec.get("timeout", 30.0)
        stuck = spec.get("stuck", 0)
        script = Path(__file__).with_name("clients_ws.js")
        env = clean_env(NODE_PATH=str(NODE_CACHE / "node_modules"))
        for n in range(self.processes):
            count = clients // self.processes + (n < clients % self.processes)
            latencies = self.folder / f"node-clients-{os.getpid()}-{len(self.files)}.f64"
            worker = {
                "port": port,
                "path": spec.get("path", "/v1/stream"),
                "clients": count,
                "stuck": stuck if n == 0 else 0,
                "subscribe": subscribe.decode(),
                "expect": expect,
                "timeout": timeout,
                "latencies": str(latencies),
            }
            self.files.append(latencies)
            self.cpu_seen.append(0.0)
            self.procs.append(
                subprocess.Popen(
                    [node, str(script), json.dumps(worker)],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    bufsize=0,  # unbuffered: a line read never holds the next one back
                )
            )
        ready = 0
        for proc in self.procs:
            line = _line(proc, timeout * 5)
            if not line.startswith("ready "):
                raise RuntimeError(f"Node clients did not connect: {line!r}")
            ready += int(line.split()[1])
        return ready

    def cpu(self) -> float:
        for n, proc in enumerate(self.procs):
            if proc.poll() is None:
                self.cpu_seen[n] = cpu_of(proc.pid)
        return sum(self.cpu_seen)

    def send(self, command: str) -> None:
        """The clients count from their subscription on: nothing to say."""

    def results(self, timeout: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for proc, path in zip(self.procs, self.files, strict=True):
            line = _line(proc, timeout)
            if not line:
                out.append({"error": "timeout"})
                continue
            result: dict[str, Any] = json.loads(line)
            result["latencies"] = path.read_bytes() if path.exists() else b""
            out.append(result)
        return out

    def close(self) -> None:
        for proc in self.procs:
            end(proc, 5)
            if proc.stdout is not None:
                proc.stdout.close()
        for path in self.files:
            path.unlink(missing_ok=True)
        self.procs, self.files = [], []


def _line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The next line of ``proc``'s output within ``timeout`` ("" at its end or past it)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return proc.stdout.readline().decode().strip()
