"""Parsing a batch of source lines, on the event loop or in a parser process.

At full speed (a replay, a backfill) parsing is half of ingest's work: about 20 µs
a line of JSON decoding, field checks and encoding the served object. On the event
loop it competes with the store's writer thread for the one GIL; in a parser
process it runs on the other core. :func:`parse_chunk` is the one parsing step,
pure, used both ways; :class:`ParserPool` sends large batches to worker processes
and parses small ones (a live stream's few lines a second) where they are, since a
round trip to another process costs more than parsing a line.

What crosses the process boundary is small: the lines' bytes one way; the way
back, each tweet as a tuple whose served object is already encoded (see
``Tweet.__reduce__``), the users once per batch.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import pickle
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from relay.core.stored import parse_stored
from relay.core.tweet_rows import TweetRows
from relay.core.tweets import JSON, Skip, parse_line
from relay.errors import MalformedPayload

log = logging.getLogger(__name__)

PROCESS_MIN_LINES = 128
"""Batches with fewer lines parse on the event loop: below this the round trip to a
parser process (pickling, a pipe, a wake-up on each side) costs more than it saves."""


@dataclass(slots=True)
class ParsedChunk:
    """What a batch of lines held, with the per-line outcomes ingest counts and logs."""

    tweets: TweetRows = field(default_factory=TweetRows)
    """As columns, ready for the store: a batch crosses from a parser process as a few
    lists, not an object a tweet."""
    tweet_lines: list[int] = field(default_factory=list)
    """The index in the batch of the line each tweet came in: whose receive time it keeps."""
    users: list[JSON] = field(default_factory=list)
    """Included users with a text id, the last one of each id (the one the store keeps),
    in the place of its first (where the store would have met it a line at a time)."""
    user_lines: list[int] = field(default_factory=list)
    """The index of the line each user last came in."""
    payloads: int = 0
    keepalives: int = 0
    malformed: list[tuple[int, str, str]] = field(default_factory=list)
    """(index of the line in the batch, reason, detail) for each line that was no payload."""
    skipped: list[Skip] = field(default_factory=list)
    api_errors: list[JSON] = field(default_factory=list)


def parse_chunk(lines: Sequence[bytes], stored: bool = False) -> ParsedChunk:
    """Parse every line (``stored``: each a stored tweet object, from an archive); a bad
    line is recorded in the result, never raised."""
    chunk = ParsedChunk()
    users: dict[str, tuple[JSON, int]] = {}
    parse = parse_stored if stored else parse_line
    for index, line in enumerate(lines):
        try:
            parsed = parse(line)
        except MalformedPayload as exc:
            chunk.malformed.append((index, exc.reason, str(exc)))
            continue
        except Exception as exc:  # a parser bug must cost one line, not the batch
            chunk.malformed.append((index, "parse_error", f"{type(exc).__name__}: {exc}"))
            continue
        if parsed.keepalive:
            chunk.keepalives += 1
            continue
        chunk.payloads += 1
        chunk.skipped.extend(parsed.skipped)
        chunk.api_errors.extend(parsed.api_errors)
        for tweet in parsed.tweets:
            chunk.tweets.add(tweet)
        chunk.tweet_lines.extend([index] * len(parsed.tweets))
        for user in parsed.users:
            user_id = user.get("id")
            if isinstance(user_id, str):  # parse gives usable ids as text; others are no user
                users[user_id] = (user, index)  # the last one stands, in the first's place
    chunk.users = [user for user, _ in users.values()]
    chunk.user_lines = [index for _, index in users.values()]
    return chunk


HEADER = struct.Struct("<Q")
"""Each message on a worker's pipes: its length, then a pickle."""


class ParserPool:
    """Worker processes that parse large batches; small ones parse in the caller.

    A worker is ``python -m relay.ingest.parse_worker`` on two pipes (not multiprocessing:
    that imports the parent's main script again in each worker, and an embedding
    script without a ``__main__`` guard would start itself over). Batches go to the
    workers in turn; each answers in order. ``processes`` 0 parses everything in the
    caller, and so does a pool whose worker failed, after one warning.
    """

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._workers: list[_Worker] = []
        self._next = 0
        self._starting: asyncio.Task[None] | None = None
        self._failed = False

    def start(self) -> None:
        """Start the workers in the background, if not yet: batches go to them once
        they are up (they take a moment to import), and parse in the caller until then."""
        if self.processes > 0 and self._starting is None:
            self._starting = asyncio.create_task(self._start(), name="parser-start")

    async def _start(self) -> None:
        try:
            for _ in range(self.processes):
                worker = await _Worker.spawn()
                self._workers.append(worker)
                await worker.ready
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            self._give_up(exc)

    async def started(self) -> None:
        """Return once the workers are up (or have failed to start)."""
        if self._starting is not None:
            await asyncio.shield(self._starting)

    def _give_up(self, exc: BaseException) -> None:
        if not self._failed:
            # The reason as text: the exception itself would keep what it met alive.
            reason = str(exc) or type(exc).__name__
            log.warning("parser processes failed (%s): parsing goes on in the relay", reason)
        self._failed = True
        for worker in self._workers:
            worker.close()

    def takes(self, lines: int) -> bool:
        """Whether a batch of ``lines`` lines goes to a worker (see :meth:`parse`).

        The first large batch starts the workers: a relay that only ever sees a live
        stream's few lines a second runs none."""
        if lines < PROCESS_MIN_LINES:
            return False
        self.start()
        return (
            not self._failed
            and len(self._workers) == self.processes > 0
            and all(worker.ready.done() for worker in self._workers)
        )

    async def parse(self, lines: Sequence[bytes], stored: bool = False) -> ParsedChunk:
        """The batch parsed in a worker; raises nothing (what fails there parses here)."""
        if self._failed or not self._workers:
            return parse_chunk(lines, stored)
        worker = self._workers[self._next % len(self._workers)]
        self._next += 1
        try:
            return await worker.parse(lines, stored)
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:  # a worker died
            self._give_up(exc)
        except Exception as exc:  # what a worker could not send back (nested too deep)
            log.debug("a batch failed in a parser process (%s): parsed here", exc)
        return parse_chunk(lines, stored)

    async def close(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._starting
        await asyncio.gather(*[worker.stop() for worker in self._workers])
        self._workers = []


class _Worker:
    """One parser process: requests in on its stdin, answers in order on its stdout."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._waiting: collections.deque[asyncio.Future[ParsedChunk]] = collections.deque()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(), name="parser-read")

    @classmethod
    async def spawn(cls) -> _Worker:
        # The worker imports the relay from where this process did (a source tree too).
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay.ingest.parse_worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=2**20,
        )
        for pipe in (process.stdin, process.stdout):
            _widen(pipe)
        return cls(process)

    async def _read(self) -> None:
        try:
            await self._message()  # the worker's first word: imported and waiting
            self.ready.set_result(None)
            while True:
                chunk = await self._message()
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(chunk)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else EOFError("parser stopped")
            if not self.ready.done():
                self.ready.set_exception(failure)
                self.ready.exception()  # retrieved: whoever waits sees it from the starter
            while self._waiting:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_exception(failure)
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def _message(self) -> Any:
        (size,) = HEADER.unpack(await self._stdout.readexactly(HEADER.size))
        return pickle.loads(await self._stdout.readexactly(size)) if size else None

    async def parse(self, lines: Sequence[bytes], stored: bool = False) -> ParsedChunk:
        if self._reader.done():
            raise EOFError("the parser process has stopped")
        request = pickle.dumps((stored, list(lines)), protocol=pickle.HIGHEST_PROTOCOL)
        future: asyncio.Future[ParsedChunk] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            self._stdin.write(HEADER.pack(len(request)))
            self._stdin.write(request)
            await self._stdin.drain()
        except BaseException:
            # Its answer will not be awaited: cancelled, the reader skips it, and asyncio
            # does not report the failure the reader gives the others as never retrieved.
            future.cancel()
            raise
        return await future

    def close(self) -> None:
        if not self._stdin.is_closing():
            self._stdin.close()  # the worker stops at the end of its input

    async def stop(self) -> None:
        self.close()
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


PIPE_BYTES = 2**20
"""The size asked for each pipe to a worker (Linux; 64 KiB otherwise): a batch of 500
lines is about 1 MB each way, and every 64 KiB would cost the event loop a wake-up."""


def _widen(stream: Any) -> None:
    transport = getattr(stream, "transport", None) or getattr(stream, "_transport", None)
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    if pipe is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):  # past /proc/sys/fs/pipe-max-size: the default
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


STOP_TIMEOUT = 2.0
"""Seconds a parser process has to finish its batch and exit once its input closed."""


def serve(reader: BinaryIO, writer: BinaryIO) -> None:
    """The worker's loop: parse each batch read from ``reader`` until its end."""
    writer.write(HEADER.pack(0))  # ready
    writer.flush()
    while header := reader.read(HEADER.size):
        if len(header) < HEADER.size:
            return
        (size,) = HEADER.unpack(header)
        stored, lines = pickle.loads(reader.read(size))
        answer = pickle.dumps(parse_chunk(lines, stored), protocol=pickle.HIGHEST_PROTOCOL)
        writer.write(HEADER.pack(len(answer)))
        writer.write(answer)
        writer.flush()
