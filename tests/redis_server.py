"""A real ``redis-server`` for tests, on a free port of 127.0.0.1, without persistence.

A pytest plugin (``pytest_plugins`` in conftest.py). Fixtures:

- ``redis_server``: a started :class:`RedisServer`; ``url``, ``restart()`` (kill -9 and
  start again empty on the same port: a Redis restarted without persistence), ``stop()``
  (kill -9), ``start()``, ``freeze()``/``thaw()`` (SIGSTOP/SIGCONT), ``client()`` (a sync
  redis-py client for looking inside), ``port``;
- ``make_redis_server(tls=False, password=None, start=True)``: more of them, or with TLS
  (a self-signed certificate made by ``openssl``; ``url`` is then ``rediss://``) or a
  password (in ``url``); every one is killed at the end of the test.

Without ``redis-server`` the tests that use them skip, and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

MISSING = "needs redis-server: apt-get install redis-server"
START_TIMEOUT = 10.0


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":  # CI must run these tests, never skip them quietly
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` that no CA signed, as PaaS Redis add-ons use."""
    openssl = shutil.which("openssl")
    if openssl is None:
        _unavailable("needs the openssl command to make a certificate: apt-get install openssl")
    cert, key = directory / "redis.crt", directory / "redis.key"
    subprocess.run(
        [openssl or "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class RedisServer:
    def __init__(self, directory: Path, *, tls: bool = False, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _unavailable(MISSING)
        self.binary = binary or "redis-server"
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.tls = tls
        self.password = password
        self.logfile = directory / "redis.log"
        self.outfile = directory / "redis.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._tls_files = _self_signed(directory) if tls else None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls:
            return f"rediss://{auth}localhost:{self.port}/0"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        command = [self.binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.directory), "--logfile", str(self.logfile)]
        if self._tls_files:
            cert, key = self._tls_files
            command += ["--port", "0", "--tls-port", str(self.port)]
            command += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
            command += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
        else:
            command += ["--port", str(self.port)]
        if self.password:
            command += ["--requirepass", self.password]
        return command

    def client(self) -> redis.Redis:
        """A client for looking inside (XLEN, INFO, XADD by hand); it never retries."""
        options: dict[str, Any] = {"retry": Retry(NoBackoff(), 0)}
        if self.tls:
            options.update(ssl_cert_reqs="none", ssl_check_hostname=False)
        return redis.Redis.from_url(self.url, **options)

    def _output(self) -> str:
        text = ""
        for path in (self.outfile, self.logfile):
            if path.exists():
                text += path.read_text(errors="replace")
        return text[-1000:]

    def start(self) -> None:
        """Start (empty) and wait until it answers PING."""
        assert self.proc is None, "already running"
        with self.outfile.open("ab") as out:  # config errors come before the log file
            self.proc = subprocess.Popen(self._command(), stdout=out, stderr=out)
        deadline = time.monotonic() + START_TIMEOUT
        client = self.client()
        try:
            while True:
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if self.proc.poll() is not None:
                    self.proc = None
                    if self.tls:  # Debian's is built with TLS; a build without it cannot
                        _unavailable(f"redis-server did not start with TLS: {self._output()}")
                    raise AssertionError(f"redis-server exited: {self._output()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"redis-server did not answer: {self._output()}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """kill -9: nothing saved, clients see their connections drop."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)  # a frozen one too
        self.proc.wait(START_TIMEOUT)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a machine that vanished)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """A Redis restarted without persistence: same port, every key gone."""
        self.stop()
        self.start()


@pytest.fixture
def make_redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def make(*, tls: bool = False, password: str | None = None, start: bool = True) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(started)}", tls=tls, password=password)
        started.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(make_redis_server: Callable[..., RedisServer]) -> RedisServer:
    return make_redis_server()
