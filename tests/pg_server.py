"""A real PostgreSQL server for the tests: a pytest plugin (see ``tests/conftest.py``).

``pg_server`` (session) runs initdb into a temporary folder and starts ``postgres`` on a
free port of 127.0.0.1, tuned for speed (no fsync): data written here is thrown away.
PostgreSQL refuses to run as root; as root, the folder is given to the ``postgres`` user
and the server runs through ``runuser``. ``pg_url`` (function) is a fresh, empty database
for one test, made from ``template0`` (a file copy: milliseconds).

When the binaries are missing the tests that need them skip, or fail under ``CI=true``.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from relay.config import Settings

MISSING = "needs PostgreSQL: apt-get install postgresql"
SERVER_USER = "postgres"
_databases = itertools.count(1)


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian's layout), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda path: int(Path(path).parent.name) if Path(path).parent.name.isdigit() else 0,
    )
    for folder in reversed(found):
        if (Path(folder) / "postgres").exists() and (Path(folder) / "initdb").exists():
            return Path(folder)
    on_path = shutil.which("postgres")
    if on_path and shutil.which("initdb"):
        return Path(on_path).parent
    return None


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; ``stop``/``start``/``restart`` it."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "postgres.log"
        self.port = _free_port()
        self.host = "127.0.0.1"
        self.user = SERVER_USER
        self.process: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0

    def _command(self, *args: str) -> list[str]:
        if self._as_root:
            return ["runuser", "-u", SERVER_USER, "--", *args]
        return list(args)

    def init(self) -> None:
        self.sockets.mkdir(parents=True)
        if self._as_root:
            shutil.chown(self.root, SERVER_USER)
            shutil.chown(self.sockets, SERVER_USER)
        subprocess.run(
            self._command(
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        log = open(self.log, "ab")  # noqa: SIM115 - the server's own output, kept with it
        self.process = subprocess.Popen(
            self._command(
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                str(self.sockets),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=64MB",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log.read_text()[-2000:]}")
            ready = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", self.host, "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres not ready after {timeout} s")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clients disconnected) or ``immediate`` (a crash)."""
        if self.process is None or self.process.poll() is not None:
            return
        subprocess.run(
            self._command(
                str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data), "-m", mode, "-w"
            ),
            check=True,
            capture_output=True,
        )
        self.process.wait(30)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        auth = self.user if password is None else f"{self.user}:{password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(database),
                "-c",
                sql,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return result.stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        name = name or f"t{os.getpid()}_{next(_databases)}"
        self.psql(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


def _missing() -> None:
    if os.environ.get("CI") == "true":  # CI must run these tests, never skip them quietly
        pytest.fail(MISSING, pytrace=False)
    pytest.skip(MISSING)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for the whole session (skips when not installed)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _missing()
        raise AssertionError("unreachable")
    root = Path(tempfile.mkdtemp(prefix="relay-pg-"))
    server = PostgresServer(bin_dir, root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> str:
    """A fresh, empty database on :func:`pg_server` for one test; its URL."""
    if pg_server.process is None or pg_server.process.poll() is not None:
        pg_server.start()  # a test that stopped the server and failed before starting it
    return pg_server.create_database()


class StoreMaker:
    """Opens stores of one kind for a test, through the relay's one opener
    (:mod:`relay.store.open`): ``await make_store()`` gives an open store ready to write
    (on PostgreSQL it has claimed the writer lease); the same ``name`` again opens the
    same database (a reopen); :meth:`reader` opens it as a serving process does, and
    :meth:`admin` gives its admin side, as the commands get it."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self._tmp_path = tmp_path
        self._request = request
        self._urls: dict[str, str] = {}

    def url(self, name: str = "s") -> str:
        """The database's path (SQLite) or URL (PostgreSQL)."""
        if self.kind == "sqlite":
            return str(self._tmp_path / f"{name}.db")
        if name not in self._urls:
            server: PostgresServer = self._request.getfixturevalue("pg_server")
            self._urls[name] = server.create_database()
        return self._urls[name]

    def settings(self, name: str = "s") -> Settings:
        """Settings that name the database, as a relay process would be given them."""
        from relay.config import Settings

        where = "db" if self.kind == "sqlite" else "database_url"
        return Settings.from_mapping({where: self.url(name)})

    async def __call__(self, name: str = "s") -> Any:
        from relay.store.open import open_store

        store = await open_store(self.settings(name), writer=True)
        await store.claim_writer()
        return store

    async def reader(self, name: str = "s") -> Any:
        """The store opened to read only, apart from the writer."""
        from relay.store.open import open_store

        return await open_store(self.settings(name), writer=False, serves=False)

    def admin(self, name: str = "s") -> Any:
        from relay.store.open import admin_for

        return admin_for(self.settings(name))


@pytest.fixture(params=["sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    """Every store test runs on SQLite and on PostgreSQL (see :class:`StoreMaker`)."""
    if request.param == "postgres":
        request.getfixturevalue("pg_server")  # skips (or fails under CI) when not installed
    return StoreMaker(request.param, tmp_path, request)
