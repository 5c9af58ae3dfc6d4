"""The ingest pipeline: source lines -> parse -> store -> publish, in that order.

A reader task moves lines from the source into a bounded queue; the batcher takes
whatever is waiting (up to ``batch_size``), parses it and hands it to the store;
the publisher awaits each append in order and publishes only what the store
committed (persist before publish, invariant 1). The queues are bounded, so a slow
store slows the source instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from relay.errors import MalformedPayload, RelayError
from relay.metrics import Metrics
from relay.sources import RawLine, Source
from relay.store import AppendResult, Store, StoredTweet
from relay.tweets import Tweet, parse_line

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[StoredTweet]], None]


class Ingest:
    def __init__(
        self,
        source: Source,
        store: Store,
        publish: Publish,
        metrics: Metrics,
        *,
        batch_size: int = 500,
    ) -> None:
        self.source = source
        self.store = store
        self.publish = publish
        self.metrics = metrics
        self.batch_size = batch_size
        self.finished = asyncio.Event()
        """Set when the source ended and everything it sent is stored and published."""
        self._lines: asyncio.Queue[RawLine | None] = asyncio.Queue(maxsize=4 * batch_size)
        self._appends: asyncio.Queue[asyncio.Future[AppendResult] | None] = asyncio.Queue(8)
        self._tasks: list[asyncio.Task[None]] = []
        self.error: BaseException | None = None
        """Why ingest stopped early (the source or the store failed), if it did."""
        self.failed = asyncio.Event()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.failed.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._read(), name="ingest-read"),
            asyncio.create_task(self._batch(), name="ingest-batch"),
            asyncio.create_task(self._publish(), name="ingest-publish"),
        ]

    async def stop(self) -> None:
        """Stop the source, then let everything already read reach the store and clients."""
        reader = self._tasks[0] if self._tasks else None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await self._lines.put(None)
        if self.failed.is_set():  # a failed store: what waits on it would wait forever
            for task in self._tasks:
                task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)

    async def _read(self) -> None:
        lines = self.source.lines()
        try:
            async for line in lines:
                await self._lines.put(line)
        except asyncio.CancelledError:
            raise
        except RelayError as exc:  # a source that cannot go on says why in one line
            self._fail(exc)
        except Exception as exc:
            log.exception("source %s failed", self.source.name)
            self._fail(exc)
        finally:
            closer = getattr(lines, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        await self._lines.put(None)

    async def _batch(self) -> None:
        done = False
        while not done:
            batch = [await self._lines.get()]
            while len(batch) < self.batch_size and not self._lines.empty():
                batch.append(self._lines.get_nowait())
            if batch[-1] is None:
                done = True
            lines = [line for line in batch if line is not None]
            if lines:
                tweets, users = self._parse(lines)
                if tweets:
                    append = self.store.append(tweets, users, lines[-1].received_at)
                    await self._appends.put(asyncio.ensure_future(append))
        await self._appends.put(None)

    def _parse(self, lines: list[RawLine]) -> tuple[list[Tweet], list[dict[str, Any]]]:
        tweets: list[Tweet] = []
        users: list[dict[str, Any]] = []
        for line in lines:
            self.metrics.last_data.set(line.received_at)
            try:
                parsed = parse_line(line.data)
            except MalformedPayload as exc:
                self.metrics.lines.labels("malformed").inc()
                self.metrics.malformed.inc()
                log.warning("skipped a malformed line (%s): %.120r", exc, line.data)
                continue
            if parsed.keepalive:
                self.metrics.lines.labels("keepalive").inc()
                continue
            self.metrics.lines.labels("payload").inc()
            for reason in parsed.skipped:
                self.metrics.skipped.inc()
                log.warning("skipped a tweet: %s", reason)
            for api_error in parsed.api_errors:
                self.metrics.api_errors.inc()
                log.info("stream error message: %s", api_error)
            tweets.extend(parsed.tweets)
            users.extend(parsed.users)
        return tweets, users

    async def _publish(self) -> None:
        try:
            while (append := await self._appends.get()) is not None:
                try:
                    result = await append
                except Exception as exc:
                    # Going on would skip these tweets for good: stop, and let the
                    # source redeliver them after a restart.
                    log.error("store append failed: %s", exc)
                    self._fail(exc)
                    return
                self.metrics.stored.inc(len(result.stored))
                self.metrics.duplicates.inc(result.duplicates)
                if result.stored:
                    self.publish(result.stored)
                    self.metrics.head.set(result.stored[-1].seq)
        finally:
            self.finished.set()
