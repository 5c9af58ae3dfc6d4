"""The ingest pipeline: source lines -> parse -> store -> publish, in that order.

A reader task moves lines from the source into a bounded queue; the batcher takes
whatever is waiting (up to ``batch_size``), parses it and hands it to the store;
the publisher awaits each append in order and publishes only what the store
committed (persist before publish, invariant 1). The queues are bounded, so a slow
store slows the source instead of growing memory.

A tweet is data, never a crash: a bad line or tweet is counted by reason and
logged through a :class:`LogSample` (a few lines, then a count), and nothing it
holds reaches a task as an exception. When a task stops anyway (the source or
the store failed for good, or a bug), ingest sets ``failed`` with ``error``
saying why in one line; the relay turns not ready and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

from relay.core.rule_set import STATE_KEY, RuleSet, listing
from relay.core.times import usable_unix
from relay.core.user_rows import UserRows
from relay.errors import RelayError
from relay.ingest.parse_pool import ParsedChunk, ParserPool, parse_chunk
from relay.obs.metrics import Metrics
from relay.sources import RawLine, Source
from relay.store import AppendResult, Received, StoredTweet, Writer

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[StoredTweet]], None]
Clock = Callable[[], float]


class LogSample:
    """Log the first ``first`` events of one kind, then one line with a count per ``every`` s.

    A flood of bad input (a garbage file, a broken producer) costs a handful of
    log lines, not one a line; the exact numbers are on ``/metrics``.
    """

    def __init__(
        self,
        what: str,
        *,
        first: int = 5,
        every: float = 60.0,
        clock: Clock = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self.what = what
        self.first = first
        self.every = every
        self.clock = clock
        self.level = level
        self.total = 0
        self._unlogged = 0
        self._since = 0.0

    def __call__(self, message: str, *args: Any) -> None:
        self.total += 1
        if self.total <= self.first:
            log.log(self.level, message, *args)
            if self.total == self.first:
                log.log(self.level, "further %s are counted, not logged one by one", self.what)
                self._since = self.clock()
            return
        self._unlogged += 1
        if self.clock() - self._since >= self.every:
            self.flush()

    def flush(self) -> None:
        """Log the count of what was not logged since the last line, if any."""
        if self._unlogged:
            log.log(
                self.level,
                "%d more %s in the last %.0f s (%d in all)",
                self._unlogged,
                self.what,
                self.clock() - self._since,
                self.total,
            )
        self._unlogged = 0
        self._since = self.clock()


_Parsing = tuple["asyncio.Future[ParsedChunk]", list[RawLine], list[float]]
"""A batch being parsed: its parse, its lines, each line's receive time."""

APPENDS_AHEAD = 32
"""Batches handed to the store before the oldest of them is published. The store commits
every append waiting in one transaction (SQLite's writer), and a page an index touches
is written once a commit however many rows it took, so in a bulk ingest (a replay at full
speed, a backfill) more appends waiting make fewer, larger commits: 500,000 synthetic
lines went from 2,600 to 5,900 tweets a commit, 5.1 to 3.7 GB written to disk, 15.0-16.6k
to 18.2k tweets a second (8 -> 32). A live stream never fills it. At most this many
parsed batches wait in memory: the heap of a million-line replay went from 182-201 to
248-272 MB."""

LINES_PER_TURN = 64
"""Lines read or parsed before ingest lets the other tasks of the event loop run."""


class Ingest:
    def __init__(
        self,
        source: Source,
        store: Writer,
        publish: Publish,
        metrics: Metrics,
        *,
        batch_size: int = 500,
        parse_processes: int = 0,
        clock: Clock = time.time,
    ) -> None:
        self.source = source
        self.store = store
        self.publish = publish
        self.metrics = metrics
        self.batch_size = batch_size
        self.clock = clock
        self.finished = asyncio.Event()
        """Set when the source ended and everything it sent is stored and published."""
        self._lines: asyncio.Queue[RawLine | None] = asyncio.Queue(maxsize=4 * batch_size)
        self.parser = ParserPool(parse_processes)
        # Batches in a parser process at once: enough to keep every worker busy.
        self._parsed: asyncio.Queue[_Parsing | None] = asyncio.Queue(2 * parse_processes + 1)
        self._appends: asyncio.Queue[asyncio.Future[AppendResult] | None] = asyncio.Queue(
            APPENDS_AHEAD
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.error: BaseException | None = None
        """Why ingest stopped early (the source or the store failed, or a bug), if it did."""
        self.source_error: RelayError | None = None
        """Why the source could not go on (a cut recording, a refused token), if it
        could not: ingest stores and publishes every line it gave first, then fails."""
        self.failed = asyncio.Event()
        self.malformed_log = LogSample("malformed lines")
        self.skipped_log = LogSample("skipped tweets")
        self.api_errors_log = LogSample("stream error messages", level=logging.INFO)
        self._declared: RuleSet | None = None
        """The source's rule set as last recorded in the store."""

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.failed.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._guard("source reader", self._read()), name="ingest-read"),
            asyncio.create_task(self._guard("batcher", self._batch()), name="ingest-batch"),
            asyncio.create_task(self._guard("store step", self._store()), name="ingest-store"),
            asyncio.create_task(self._guard("publisher", self._publish()), name="ingest-publish"),
        ]

    async def _guard(self, name: str, step: Coroutine[Any, Any, None]) -> None:
        """Run one task of the data path; if it dies, ingest fails loudly, never silently."""
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Not an expected failure (those are handled where they happen): a bug.
            # One traceback, once; the relay then stops with one line.
            log.exception("ingest %s failed", name)
            self._fail(RelayError(f"the {name} failed: {type(exc).__name__}: {exc}"))

    async def stop(self) -> None:
        """Stop the source, then let everything already read reach the store and clients."""
        reader = self._tasks[0] if self._tasks else None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if not self.failed.is_set():
                await self._lines.put(None)
        if self.failed.is_set():  # a failed part: what waits on it would wait forever
            for task in self._tasks:
                task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)
        await self.parser.close()
        while not self._parsed.empty():  # batches the store step will never take
            parsed = self._parsed.get_nowait()
            if parsed is not None:
                parsed[0].cancel()
        while not self._appends.empty():  # appends the publisher will never await
            append = self._appends.get_nowait()
            if append is not None:
                append.cancel()
        for sample in (self.malformed_log, self.skipped_log, self.api_errors_log):
            sample.flush()

    async def record_rule_set(self) -> None:
        """Record in the store which rule channels the source produces (an open set when
        it declares none), so that serving processes can tell a mistyped channel from
        one no tweet has matched yet. Called before the first line; again by the reader
        whenever the source's set changes (a replay's first pass ends)."""
        declared = self._declared = getattr(self.source, "rule_set", None)
        rule_set = declared or RuleSet(frozenset(), False, f"the {self.source.name} source")
        await self.store.set_state(STATE_KEY, rule_set.encode())
        if rule_set.closed:
            log.info(
                "rule channels of %s: %s; other rule channels are refused",
                rule_set.origin,
                listing(sorted(rule_set.keys)),
            )
        else:
            log.info("rule channels of %s: open until its tweets have been read", rule_set.origin)

    async def _read(self) -> None:
        source = self.source
        # A source that reads in bulk gives its lines in lists: no loop step a line.
        batches = getattr(source, "batches", None)
        lines: AsyncIterator[list[RawLine]] = batches() if batches else _singly(source.lines())
        read = 0
        try:
            async for group in lines:
                for line in group:
                    await self._lines.put(line)
                read += len(group)
                if getattr(source, "rule_set", None) is not self._declared:
                    await self.record_rule_set()
                if read >= LINES_PER_TURN and self._lines.qsize() >= self.batch_size:
                    read = 0
                    # A source that never waits (a replay at full speed) and a queue with
                    # room never suspend: once a full batch waits, let the loop serve
                    # clients in between (earlier would cut batches short).
                    await asyncio.sleep(0)
            if getattr(source, "rule_set", None) is not self._declared:
                await self.record_rule_set()  # a replay that ended: its set is complete
        except asyncio.CancelledError:
            raise
        except RelayError as exc:  # a source that cannot go on says why in one line
            # The lines it gave before are good: they go through the whole path (the
            # publisher fails ingest with this once they are published), not dropped.
            self.source_error = exc
        except Exception as exc:
            log.exception("source %s failed", self.source.name)
            self._fail(RelayError(f"source {self.source.name} failed: {exc}"))
        finally:
            closer = getattr(lines, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        await self._lines.put(None)

    async def _batch(self) -> None:
        """Cut the lines into batches and start parsing each; the store step takes
        the parsed batches in order."""
        done = False
        carried: RawLine | None = None
        while not done:
            batch = [carried if carried is not None else await self._lines.get()]
            carried = None
            while len(batch) < self.batch_size and not self._lines.empty():
                line = self._lines.get_nowait()
                if line is not None and _cuts(batch[0], line):
                    carried = line
                    break
                batch.append(line)
            if batch[-1] is None:
                done = True
            lines = [line for line in batch if line is not None]
            if not lines or self.failed.is_set():
                continue
            stored = lines[0].kind == "stored"
            times = self._times(lines)
            if self.parser.takes(len(lines)):
                parse: asyncio.Future[ParsedChunk] = asyncio.ensure_future(
                    self.parser.parse([line.data for line in lines], stored, times)
                )
            else:
                parse = asyncio.get_running_loop().create_future()
                parse.set_result(await self._parse_here(lines, times))
            await self._parsed.put((parse, lines, times))
        await self._parsed.put(None)

    async def _parse_here(self, lines: list[RawLine], times: list[float]) -> ParsedChunk:
        """Parse on the event loop, in slices, letting clients be served in between."""
        chunk = ParsedChunk(users=UserRows())
        for start in range(0, len(lines), LINES_PER_TURN):
            if start:
                await asyncio.sleep(0)
            part = parse_chunk(
                [line.data for line in lines[start : start + LINES_PER_TURN]],
                lines[0].kind == "stored",
                times[start : start + LINES_PER_TURN],
            )
            chunk.tweets.extend(part.tweets)
            chunk.tweet_lines += [start + index for index in part.tweet_lines]
            # The store keeps the last of each id.
            if isinstance(chunk.users, UserRows) and isinstance(part.users, UserRows):
                chunk.users.rows += part.users.rows
            else:
                chunk.users = [*chunk.users, *part.users]
            chunk.user_lines += [start + index for index in part.user_lines]
            chunk.tweet_times += part.tweet_times
            chunk.user_times += part.user_times
            chunk.payloads += part.payloads
            chunk.keepalives += part.keepalives
            chunk.malformed += [(start + i, why, detail) for i, why, detail in part.malformed]
            chunk.skipped += part.skipped
            chunk.api_errors += part.api_errors
        return chunk

    async def _store(self) -> None:
        """Hand each parsed batch to the store, in the order the lines came."""
        while (item := await self._parsed.get()) is not None:
            parse, lines, times = item
            try:
                chunk = await parse
            finally:
                if self.failed.is_set():
                    parse.cancel()
            self._account(chunk, lines)
            if chunk.tweets and not self.failed.is_set():
                append = asyncio.ensure_future(
                    self.store.append(chunk.tweets, chunk.users, _received(chunk, times))
                )
                # Once ingest failed the publisher no longer awaits appends: their
                # outcome is known, and asyncio must not log each as never retrieved.
                append.add_done_callback(_consume)
                append.add_done_callback(self._timer(time.monotonic()))
                await self._appends.put(append)
        await self._appends.put(None)

    def _times(self, lines: list[RawLine]) -> list[float]:
        """Each line's receive time, as the source gave it (a nonsense one falls back to
        now). Never the batch's: which lines share a batch depends on timing, and what
        is stored must not."""
        now: float | None = None
        times: list[float] = []
        for line in lines:
            when = usable_unix(line.received_at)
            if when is None:
                when = now = self.clock() if now is None else now
            times.append(when)
        return times

    def _timer(self, started: float) -> Callable[[asyncio.Future[Any]], None]:
        """Observe how long an append took to commit (``relay_store_commit_seconds``)."""

        def done(future: asyncio.Future[Any]) -> None:
            if not future.cancelled() and future.exception() is None:
                self.metrics.commit_seconds.observe(time.monotonic() - started)

        return done

    def _account(self, chunk: ParsedChunk, lines: list[RawLine]) -> None:
        """Count and log what a parsed batch held, per batch (a labelled counter costs
        a lookup and a lock)."""
        for index, reason, detail in chunk.malformed:
            self._malformed(reason, detail, lines[index])
        for skip in chunk.skipped:
            self.metrics.skipped.labels(skip.reason).inc()
            self.skipped_log("skipped a tweet (%s): %s", skip.reason, skip.detail)
        for api_error in chunk.api_errors:
            self.metrics.api_errors.inc()
            self.api_errors_log("stream error message: %.300s", api_error)
        self.metrics.last_data.set(lines[-1].received_at)
        if chunk.payloads:
            self.metrics.lines.labels("payload").inc(chunk.payloads)
        if chunk.keepalives:
            self.metrics.lines.labels("keepalive").inc(chunk.keepalives)

    def _malformed(self, reason: str, detail: str, line: RawLine) -> None:
        self.metrics.lines.labels("malformed").inc()
        self.metrics.malformed.labels(reason).inc()
        self.malformed_log("skipped a malformed line (%s): %.120r", detail, line.data)

    async def _publish(self) -> None:
        try:
            while (append := await self._appends.get()) is not None:
                try:
                    result = await append
                except Exception as exc:
                    # Going on would skip these tweets for good: stop, and let the
                    # source redeliver them after a restart. The store said why.
                    self._fail(exc)
                    return
                self.metrics.stored.inc(len(result.stored))
                self.metrics.duplicates.inc(result.duplicates)
                for tweet_id, why in result.unstorable:
                    self.metrics.skipped.labels("unstorable").inc()
                    self.skipped_log("skipped a tweet (unstorable): %s: %s", tweet_id, why)
                if result.stored:
                    try:
                        self.publish(result.stored)
                    except Exception as exc:
                        # Clients would silently stop getting tweets while the store
                        # grows: stop loudly instead. A bug: one traceback, once.
                        log.exception("publishing to clients failed")
                        self._fail(RelayError(f"publishing failed: {type(exc).__name__}: {exc}"))
                        return
                    self.metrics.head.set(result.stored[-1].seq)
        finally:
            if self.source_error is not None:
                self._fail(self.source_error)
            self.finished.set()


async def _singly(lines: AsyncIterator[RawLine]) -> AsyncIterator[list[RawLine]]:
    """A source's lines one a list; closing this closes the source's iterator."""
    try:
        async for line in lines:
            yield [line]
    finally:
        closer = getattr(lines, "aclose", None)
        if closer is not None:
            await closer()


def _received(chunk: ParsedChunk, times: list[float]) -> Received:
    """Each tweet's and user's receive time: its line's; as text too when the parsing
    formatted it."""
    tweets = [times[index] for index in chunk.tweet_lines]
    users = [times[index] for index in chunk.user_lines]
    if len(chunk.tweet_times) == len(tweets) and len(chunk.user_times) == len(users):
        return Received(tweets, users, chunk.tweet_times, chunk.user_times)
    return Received(tweets, users)


def _cuts(first: RawLine | None, line: RawLine) -> bool:
    """Whether ``line`` starts a new batch after one that began with ``first``: a batch
    is parsed one way (stream lines or stored tweets). Receive times cut nothing: each
    tweet keeps its own line's."""
    return first is not None and line.kind != first.kind


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
