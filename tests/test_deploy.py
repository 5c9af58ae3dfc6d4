"""What a Python buildpack gets: the lock file installs the app, and the Procfile runs it.

The install test builds a fresh venv from ``requirements.txt`` alone, as a buildpack does,
in a copy of the repository; the Procfile test runs the release phase, then ``worker`` and
``web`` under honcho from that venv against a real Redis and a real PostgreSQL, and a
WebSocket client on ``web`` receives live tweets that ``worker`` ingested.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from websockets.sync.client import connect

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
UNIT = 5.0  # as in tests/support.py; this file imports nothing of the relay: it runs installed

LOCKFILE = [sys.executable, str(ROOT / "tools" / "lockfile.py"), "check"]
STALE = "requirements.txt is out of date with pyproject.toml: run make lock"
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".env",
    "tmp",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "*.db*",
)


def _missing(what: str, install: str) -> None:
    message = f"{what} not found; install it: {install}"
    if os.environ.get("CI") == "true":  # CI must run these tests, never skip them quietly
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the lock file ------------------------------------------------------------------------


def test_the_lock_file_is_current_with_pyproject() -> None:
    result = subprocess.run(LOCKFILE, capture_output=True, text=True, timeout=4 * UNIT)
    assert result.returncode == 0, result.stderr
    assert (ROOT / ".python-version").read_text().strip() == "3.11"


@pytest.mark.parametrize(
    ("file", "before", "after", "named"),
    [
        ("pyproject.toml", '"orjson>=3.9",', '"orjson>=3.9", "six>=1",', "six>=1"),  # added
        ("pyproject.toml", '"orjson>=3.9"', '"orjson>=3.10"', "orjson>=3.10"),  # changed
        ("pyproject.toml", 'requires-python = ">=3.11"', 'requires-python = ">=3.12"', ">=3.12"),
        (".python-version", "3.11", "3.12", ".python-version 3.12"),  # the buildpack's Python
    ],
)
def test_the_lock_check_is_one_line_naming_make_lock_when_an_input_changes(
    tmp_path: Path, file: str, before: str, after: str, named: str
) -> None:
    for name in ("pyproject.toml", ".python-version"):
        text = (ROOT / name).read_text()
        if name == file:
            assert before in text
            text = text.replace(before, after, 1)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [*LOCKFILE, "--pyproject", str(tmp_path / "pyproject.toml")],
        capture_output=True,
        text=True,
        timeout=4 * UNIT,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(STALE) and result.stderr.count("\n") == 1, result.stderr
    assert named in result.stderr


def test_the_lock_check_catches_a_pin_edited_by_hand(tmp_path: Path) -> None:
    lock = (ROOT / "requirements.txt").read_text()
    pinned = next(line for line in lock.splitlines() if line.startswith("websockets=="))
    edited = tmp_path / "requirements.txt"
    edited.write_text(lock.replace(pinned, "websockets==16.0"))
    result = subprocess.run(
        [*LOCKFILE, "--lock", str(edited)], capture_output=True, text=True, timeout=4 * UNIT
    )
    assert result.returncode == 1
    assert result.stderr.startswith(STALE) and "websockets==16.0" in result.stderr


def test_make_lock_rewrites_the_same_file_from_the_same_inputs(tmp_path: Path) -> None:
    """Deterministic: regenerating changes nothing (uv keeps the pins; asks the registry)."""
    for name in ("pyproject.toml", ".python-version", "requirements.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    lock = tmp_path / "requirements.txt"
    write = [sys.executable, str(ROOT / "tools" / "lockfile.py"), "write"]
    write += ["--pyproject", str(tmp_path / "pyproject.toml"), "--lock", str(lock)]
    done = subprocess.run(write, capture_output=True, text=True, timeout=12 * UNIT)
    assert done.returncode == 0, done.stderr
    assert lock.read_text() == (ROOT / "requirements.txt").read_text()


# --- installed from the lock file alone -----------------------------------------------------


class App:
    """A copy of the repository with a venv built from its requirements.txt alone."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "app"
        shutil.copytree(ROOT, self.dir, ignore=COPY_IGNORE)
        self.venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
        self.bin = self.venv / "bin"
        # What a buildpack runs, from the app's folder: the `.` line installs the project.
        self.install = subprocess.run(
            [str(self.bin / "pip"), "install", "--quiet", "-r", "requirements.txt"],
            cwd=self.dir,
            capture_output=True,
            text=True,
            timeout=60 * UNIT,
        )

    def env(self, **values: str) -> dict[str, str]:
        """The buildpack's environment: the venv first on PATH, nothing from this checkout."""
        own = ("RELAY_", "PYTHON", "VIRTUAL_ENV", "DATABASE_URL", "REDIS_URL", "PORT")
        env = {k: v for k, v in os.environ.items() if not k.startswith(own)}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env.update(values)
        return env


@pytest.fixture(scope="module")
def app() -> Iterator[App]:
    root = Path(tempfile.mkdtemp(prefix="relay-app-"))
    try:
        yield App(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_lock_file_alone_installs_the_app_and_its_entry_point(app: App) -> None:
    assert app.install.returncode == 0, app.install.stderr
    relay = app.bin / "relay"
    result = subprocess.run(
        [str(relay), "--help"],
        cwd=app.dir,
        env=app.env(),
        capture_output=True,
        text=True,
        timeout=4 * UNIT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: relay "), result.stdout
    # Installed, not imported from the copy: the package lives in the venv.
    where = subprocess.run(
        [str(app.bin / "python"), "-c", "import relay; print(relay.__file__)"],
        cwd="/",
        env=app.env(),
        capture_output=True,
        text=True,
        timeout=4 * UNIT,
    )
    assert where.stdout.startswith(str(app.venv)), where.stdout + where.stderr
    # Every pin installed at its pinned version.
    frozen = subprocess.run(
        [str(app.bin / "pip"), "freeze", "--all"], env=app.env(), capture_output=True, text=True
    ).stdout
    installed = {canonicalize_name(n): v for n, _, v in (x.partition("==") for x in frozen.split())}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if "==" not in text:
            continue
        pin = Requirement(text)  # the venv's Python is this one's base: same markers
        if pin.marker is None or pin.marker.evaluate():
            assert installed.get(canonicalize_name(pin.name)) in pin.specifier, text


# --- the Procfile under honcho ---------------------------------------------------------------


def _procfile(text: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=UNIT) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def _live_seqs(port: int, count: int) -> list[int]:
    """Subscribe to every tweet from now on and return the seqs of the next ``count``."""
    seqs: list[int] = []
    with connect(f"ws://127.0.0.1:{port}/v1/stream", open_timeout=UNIT) as ws:
        ws.send(orjson.dumps({"op": "subscribe", "channel": "tweets"}).decode())
        deadline = time.monotonic() + 8 * UNIT
        while len(seqs) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"got {len(seqs)} of {count} tweets"
            frame = orjson.loads(ws.recv(timeout=remaining))
            assert frame["type"] in ("subscribed", "tweet"), frame
            if frame["type"] == "tweet":
                seqs.append(frame["seq"])
    return seqs


class Honcho:
    """``honcho start`` of some of a Procfile's process types, from the installed app."""

    def __init__(self, app: App, folder: Path, procfile: Path, env: dict[str, str]) -> None:
        self.app = app
        self.port = free_port()  # honcho gives it to the first process type, web
        self.log = folder / "honcho.log"
        env_file = folder / ".env"  # the local workflow: the add-ons' variables in a .env
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        self.honcho = [sys.executable, "-m", "honcho"]
        self.options = ["--app-root", str(app.dir), "--procfile", str(procfile)]
        self.options += ["--env", str(env_file), "--no-colour"]
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, name: str) -> str:
        """Run one process type to its end (the release phase); its output."""
        done = subprocess.run(
            [*self.honcho, "start", *self.options, name],
            cwd=self.app.dir,
            env=self.app.env(),
            capture_output=True,
            text=True,
            timeout=12 * UNIT,
        )
        assert f"{name}.1 stopped (rc=0)" in done.stdout, done.stdout + done.stderr
        return done.stdout

    def start(self, *names: str) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*self.honcho, "start", *self.options, "--port", str(self.port), *names],
                cwd=self.app.dir,
                env=self.app.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the cleanup can reach every process it started
            )

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.output()
            return _status(f"http://127.0.0.1:{self.port}/readyz") == 200

        try:
            wait_for(ready, 12 * UNIT, "web's /readyz to answer 200")
        except AssertionError as error:
            raise AssertionError(f"{error}; honcho's output:\n{self.output()}") from None

    def stop(self, *names: str) -> None:
        """SIGTERM, as ``honcho start`` gets it on Ctrl-C or from a supervisor: a clean stop."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(8 * UNIT)
        output = self.output()
        # honcho signals each process group: the `sh -c` running a Procfile line dies of the
        # SIGTERM (-15) while the relay under it drains; its own errors show in the output.
        for name in names:
            assert re.search(rf"{name}\.1 stopped \(rc=(0|-15)\)", output), output
        assert "SIGKILL" not in output, output  # honcho kills what outlives SIGTERM by 5 s
        assert not re.search(r"Traceback|\bERROR\b|\bCRITICAL\b", output), output

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def honcho(app: App, tmp_path: Path) -> Iterator[Callable[[Path, dict[str, str]], Honcho]]:
    started: list[Honcho] = []

    def make(procfile: Path, env: dict[str, str]) -> Honcho:
        started.append(Honcho(app, tmp_path, procfile, env))
        return started[-1]

    yield make
    for one in started:
        one.close()


def test_the_procfile_declares_the_three_process_types() -> None:
    assert _procfile((ROOT / "Procfile").read_text()) == {
        "web": "relay serve --host 0.0.0.0 --port $PORT",
        "worker": "relay ingest",
        "release": "relay migrate",
    }


def test_the_procfile_runs_release_worker_and_web_on_redis_and_postgresql(
    app: App,
    honcho: Callable[[Path, dict[str, str]], Honcho],
    pg_url: str,
    redis_server: RedisServer,
) -> None:
    assert app.install.returncode == 0, app.install.stderr
    serve = subprocess.run(
        [app.bin / "relay", "serve", "--help"], env=app.env(), capture_output=True, check=False
    )
    if serve.returncode != 0:
        pytest.skip("`relay serve` is not on this branch yet (relay ingest, serve, migrate)")
    run = honcho(
        app.dir / "Procfile",
        {"DATABASE_URL": pg_url, "REDIS_URL": redis_server.url, "RELAY_SPEED": "20"},
    )
    for _ in range(2):  # the release phase, before each deploy: a second run is harmless
        run.run("release")
    run.start("web", "worker")
    run.wait_ready()
    seqs = _live_seqs(run.port, 20)  # stored by worker, carried by Redis, sent by web
    assert seqs == list(range(seqs[0], seqs[0] + 20)), seqs
    assert not list(app.dir.rglob("*.db")), "the store must be PostgreSQL, not SQLite"
    run.stop("web", "worker")


def test_the_one_process_deploy_in_the_docs_runs_under_honcho(
    app: App, honcho: Callable[[Path, dict[str, str]], Honcho], tmp_path: Path
) -> None:
    """``web: relay run ...`` with the store on a persistent disk: no Redis, no PostgreSQL."""
    assert app.install.returncode == 0, app.install.stderr
    docs = (ROOT / "docs" / "deployment.md").read_text()
    line = next(line for line in docs.splitlines() if line.startswith("web: relay run "))
    procfile = tmp_path / "Procfile"
    procfile.write_text(line + "\n")
    disk = tmp_path / "disk"
    disk.mkdir()
    run = honcho(procfile, {"RELAY_DB": str(disk / "relay.db"), "RELAY_SPEED": "20"})
    run.start("web")
    run.wait_ready()
    seqs = _live_seqs(run.port, 20)
    assert seqs == list(range(seqs[0], seqs[0] + 20)), seqs
    run.stop("web")
    assert (disk / "relay.db").is_file()
    assert not list(app.dir.rglob("*.db")), "the store belongs on the disk RELAY_DB names"
