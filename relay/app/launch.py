"""Running a relay process from the command line: signals, the URLs it prints, exit codes.

:mod:`relay.app.cli` parses flags into settings and calls here; :class:`relay.app.relay.Relay`
does the work. Exit codes: 0 after a clean stop, 1 when the process stopped on its own
(ingest or serving failed for good), 2 for what is wrong before it runs (a
:class:`~relay.errors.RelayError` raised while starting, reported by the caller).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from typing import NoReturn

from rich.console import Console

from relay.app.relay import Relay
from relay.config import Settings
from relay.errors import StoreCorrupt

console = Console(stderr=True, soft_wrap=True)  # an error stays one line for log readers


async def migrate(
    settings: Settings, *, new_epoch: bool = False, wait: float | None = None, force: bool = False
) -> int:
    """Bring the schema up to date; with ``new_epoch`` also give the store a new epoch
    (after a restore from a backup: clients reset instead of resuming).

    ``wait``: seconds to wait for a PostgreSQL server that does not answer; then one
    line and exit 1, so that a release phase fails the deploy instead of stalling it.
    ``force``: a new epoch although the writer lease names a live holder (a dead one)."""
    from relay.errors import StoreUnreachable
    from relay.store.open import admin_for

    admin = admin_for(settings)
    try:
        done = await admin.migrate(new_epoch=new_epoch, force=force, give_up_after=wait)
    except StoreUnreachable as exc:
        console.print(f"[bold red]relay:[/] migrate: {exc}", highlight=False)
        return 1
    print(f"relay: {admin.where} is at schema version {done.version}", flush=True)
    if done.new_epoch:
        print(
            f"relay: new epoch {done.new_epoch}: clients reset and read the store again "
            "(running serving processes notice within RELAY_BUS_CHECK_INTERVAL)",
            flush=True,
        )
    return 0


def raise_open_files_limit() -> None:
    """Raise the soft limit of open files to the hard one (the operator's choice).

    Every connection holds a descriptor, a half-sent HTTP request too, for up to the
    handshake timeout. At the common soft default of 1024, one anonymous client holding
    about a thousand idle sockets stopped the relay accepting anyone (/healthz 5 s, and a
    traceback logged per failed accept); the hard limit is usually far higher.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return  # unlimited: the kernel's own cap applies, nothing to raise to
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        logging.getLogger("relay").warning("cannot raise the open files limit: %s", exc)


async def run(
    settings: Settings, role: str, metrics_port: int | None = None, exit_when_done: bool = False
) -> int:
    """Run until SIGTERM/SIGINT, a failure, or (``exit_when_done``) the source ended and
    everything it sent is stored and published."""
    relay = Relay(settings, role=role, metrics_port=metrics_port)
    # Handlers first: a SIGTERM that comes as soon as the URLs are printed (a supervisor,
    # a test reading them) must drain, not kill the process with the default action.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tune_gc()
    starting = asyncio.create_task(relay.start())
    stopped = asyncio.create_task(stop.wait())
    listening = asyncio.create_task(relay.listening.wait())
    # The URLs go out as soon as the port answers: a serving process waiting for its
    # store already answers health checks (503 and why) there.
    await asyncio.wait([starting, stopped, listening], return_when=asyncio.FIRST_COMPLETED)
    printed = relay.listening.is_set()
    if printed:
        print_urls(relay, settings)
    await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
    listening.cancel()
    if not starting.done():  # stopped while waiting for the store: nothing to drain
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await relay.stop()
        return 0
    starting.result()  # a start that failed raises here: one line, exit 2
    if not printed and relay.listening.is_set():
        print_urls(relay, settings)

    waits = [stopped, asyncio.create_task(relay.failed.wait())]
    if exit_when_done:
        waits.append(asyncio.create_task(relay.finished.wait()))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    logging.getLogger("relay").info("shutting down")
    await relay.stop()
    # Exit 1 with one line when ingest stopped on its own: the source or the store
    # failed for good, or a task of the data path died (never a silent stall).
    if relay.error is not None:
        what = "ingest" if relay.ingests else "serving"
        if isinstance(relay.error, StoreCorrupt):
            what = "the relay"  # whatever read or wrote it: every role stops on it
        console.print(f"[bold red]relay:[/] {what} stopped: {relay.error}", highlight=False)
        return 1
    if not relay.drained:
        return 1
    return 0


def tune_gc() -> None:
    """Fewer garbage collections on the hot path.

    Every line parsed and every frame built makes short-lived dicts and lists without
    cycles; the default threshold (700 allocations) runs a collection every few lines.
    Freezing what start-up allocated keeps the long-lived objects out of every later
    full collection. Measured with ``python -m bench.stores`` (30,000 tweets, 2 cores,
    alternated): 6.9-7.5k tweets/s before, 8.2-8.7k after.
    """
    gc.set_threshold(*HOT_PATH_THRESHOLDS)
    gc.freeze()


HOT_PATH_THRESHOLDS = (50_000, 20, 20)
"""Collection thresholds on the hot path: a full collection still every ~20M allocations."""


class BorrowedGc:
    """:func:`tune_gc`'s thresholds lent to a process that is not the relay's own (a test
    running in-process relays): set when the first relay starts, the process's own put
    back when the last one stops. Nothing is frozen: the process keeps its objects.

    Measured with a ``RelayServer`` replaying 300,000 synthetic lines at full speed: 13
    full collections and 11,100 tweets/s at the default thresholds, none and 13,700/s with
    these (the million-line bench part spent most of its extra time over ``relay run``
    there)."""

    _lock = threading.Lock()
    _users = 0
    _saved: tuple[int, int, int] | None = None

    @classmethod
    def borrow(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                cls._saved = gc.get_threshold()
                gc.set_threshold(*HOT_PATH_THRESHOLDS)
            cls._users += 1

    @classmethod
    def give_back(cls) -> None:
        with cls._lock:
            if cls._users == 0:
                return
            cls._users -= 1
            if cls._users == 0 and cls._saved is not None:
                gc.set_threshold(*cls._saved)
                cls._saved = None


def print_urls(relay: Relay, settings: Settings) -> None:
    """One plain line per URL on stdout, easy for people and scripts (port 0) to read."""
    host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if relay.serves:
        base = f"http://{host}:{relay.port}"
        print(f"relay: serving {base}/ (demo page)", flush=True)
        print(f"relay: stream  ws://{host}:{relay.port}/v1/stream", flush=True)
        print(f"relay: objects {base}/v1/objects/tweets  info {base}/v1/info", flush=True)
    else:
        print(f"relay: metrics http://{host}:{relay.port}/metrics", flush=True)


def leave(code: int) -> NoReturn:
    """End the process with ``code``, without interpreter finalization once the archive's
    object-store client is loaded.

    That client (obstore) runs a Tokio runtime whose worker threads are never told to
    stop; when one of them wakes while ``Py_Finalize`` tears the interpreter down, the
    process aborts (SIGABRT) after the command has already succeeded or said its one line,
    and the exit code is lost. So what finalization does first runs here, while everything
    is still valid (wait for the other Python threads, then the exit handlers), the
    standard streams are flushed, and the process ends there."""
    if "obstore" not in sys.modules:
        sys.exit(code)
    threading._shutdown()  # type: ignore[attr-defined]  # as Py_FinalizeEx does first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed: nothing more can be said
            stream.flush()
    os._exit(code)
