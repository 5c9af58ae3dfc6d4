"""Parsing a batch of source lines, on the event loop or in a parser process.

At full speed (a replay, a backfill) parsing is half of ingest's work: about 20 µs
a line of JSON decoding, field checks and encoding the served object. On the event
loop it competes with the store's writer thread for the one GIL; in a parser
process it runs on the other core. :func:`parse_chunk` is the one parsing step,
pure, used both ways; :class:`ParserPool` sends large batches to worker processes
and parses small ones (a live stream's few lines a second) where they are, since a
round trip to another process costs more than parsing a line.

What crosses the process boundary is plain values in :mod:`marshal`'s form (the same
interpreter runs both sides): the lines' bytes one way; the way back, the batch's tweets
as columns whose served objects are already encoded, the users once per batch (see
:func:`relay.ingest.chunk.encode_chunk`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import struct
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

from relay.ingest.chunk import ParsedChunk as ParsedChunk
from relay.ingest.chunk import decode_chunk, decode_lines, encode_chunk, encode_lines
from relay.ingest.chunk import parse_chunk as parse_chunk

log = logging.getLogger(__name__)

PROCESS_MIN_LINES = 128
"""Batches with fewer lines parse on the event loop: below this the round trip to a
parser process (pickling, a pipe, a wake-up on each side) costs more than it saves."""


HEADER = struct.Struct("<Q")
"""Each message on a worker's pipes: its length, then the message (see ``serve``)."""


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

    async def parse(
        self, lines: Sequence[bytes], stored: bool = False, times: Sequence[float] | None = None
    ) -> ParsedChunk:
        """The batch parsed in a worker; raises nothing (what fails there parses here)."""
        if self._failed or not self._workers:
            return parse_chunk(lines, stored, times)
        worker = self._workers[self._next % len(self._workers)]
        self._next += 1
        try:
            return await worker.parse(lines, stored, times)
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:  # a worker died
            self._give_up(exc)
        except Exception as exc:  # what a worker could not send back (nested too deep)
            log.debug("a batch failed in a parser process (%s): parsed here", exc)
        return parse_chunk(lines, stored, times)

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
        self._waiting: collections.deque[asyncio.Future[bytes | None]] = collections.deque()
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
        return await self._stdout.readexactly(size) if size else None

    async def parse(
        self, lines: Sequence[bytes], stored: bool = False, times: Sequence[float] | None = None
    ) -> ParsedChunk:
        if self._reader.done():
            raise EOFError("the parser process has stopped")
        request = encode_lines(lines, stored, times)
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
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
        return decode_chunk(await future)

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
        stored, lines, times = decode_lines(reader.read(size))
        try:
            answer = encode_chunk(parse_chunk(lines, stored, times))
        except ValueError:  # nested past what marshal takes: the relay parses it itself
            answer = b""
        writer.write(HEADER.pack(len(answer)))
        writer.write(answer)
        writer.flush()
