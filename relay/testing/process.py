"""The real ``relay run`` command in a subprocess, for ``RelayServer(subprocess=True)``.

Its settings go as the ``RELAY_...`` variables the CLI reads, its port is read from the
first URL it prints, and its log goes to a file (a chatty relay never blocks on a pipe).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path
from subprocess import PIPE, Popen, TimeoutExpired

from relay.config import ENVIRONMENT, Settings
from relay.core.values import SPEED_MAX
from relay.ingest.finished import ReplaySummary
from relay.testing.errors import RelayServerError

_SUMMARY = re.compile(
    r"replay finished: (\d+) lines, (\d+) stored, (\d+) duplicates, (\d+) malformed"
    r"(?:, (\d+) tweets skipped)?"
)


class CliRelay:
    """``python -m relay run --port 0 --no-loop`` in ``workdir``, started at once."""

    def __init__(
        self, settings: Settings, replay: Path | None, speed: float, workdir: Path
    ) -> None:
        import relay

        # Rich wraps log lines at 80 columns when stderr is a file: wide enough for one line.
        env = {"COLUMNS": "200", **os.environ, **environment(settings)}
        # The relay this process imported, not whatever else is on the path.
        package_root = str(Path(relay.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
        )
        args = [sys.executable, "-m", "relay", "run", "--port", "0", "--no-loop"]
        if replay is not None:
            args += ["--replay", str(replay.resolve())]
        args += ["--speed", "max" if speed == SPEED_MAX else str(speed)]
        self.log_path = workdir / "relay.log"
        with self.log_path.open("w") as log:
            self.proc = Popen(args, cwd=workdir, env=env, stdout=PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the first URL, or nothing once it exits
        match = re.search(r"http://[\w.]+:(\d+)/", line)
        if not match:
            self.stop(timeout=0)
            raise RelayServerError(f"the relay did not start: {self.log()}")
        self.port = int(match.group(1))

    def log(self) -> str:
        """What the relay logged so far."""
        return self.log_path.read_text()

    def check(self) -> None:
        """Raise if the relay has exited."""
        if self.proc.poll() is not None:
            code = self.proc.returncode
            raise RelayServerError(f"the relay exited with {code}: {self.log()[-2000:]}")

    def wait_summary(self, timeout: float) -> ReplaySummary:
        """What the relay logs once its replay has finished (``replay finished: ...``)."""
        deadline = time.monotonic() + timeout
        while True:
            match = _SUMMARY.search(self.log())
            if match:
                lines, stored, duplicates, malformed, skipped = (
                    int(g or 0) for g in match.groups()
                )
                return ReplaySummary(lines, stored, duplicates, malformed, skipped=skipped)
            self.check()
            if time.monotonic() > deadline:
                raise RelayServerError(f"timed out after {timeout:g} s waiting for the replay")
            time.sleep(0.01)

    def stop(self, timeout: float) -> int:
        """SIGTERM (a kill after ``timeout``); the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


def environment(settings: Settings) -> dict[str, str]:
    """The settings as the ``RELAY_...`` variables a subprocess reads."""
    defaults = Settings()
    env: dict[str, str] = {}
    for key, names in ENVIRONMENT.items():
        value = getattr(settings, key)
        if value == getattr(defaults, key) and key not in ("db", "database_url"):
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, list | tuple):
            text = ",".join(str(v) for v in value)
        elif value is None:
            continue
        else:
            text = str(value)
        env[names[-1]] = text
    return env
