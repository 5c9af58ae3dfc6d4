"""``relay restore URL``: rebuild an empty store from an archive.

Every tweet keeps its seq and receive time, so clients' positions and the object API's
seqs mean what they meant; the archive's cursor is set to the last archived seq (the
writer goes on after it, in the new epoch's folder), then the store gets a new epoch as
after a backup: what the lost store held past the archive is gone, and clients reset.

An archive endpoint that does not answer, at the start or between objects, is waited for
with backoff (one line when the wait starts, one when it ends), each wait ``--wait``
seconds at most, as ``relay migrate`` waits for its database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from relay.app.cli_support import MIGRATE_WAIT, console, settings_from, setup_logging
from relay.config import Settings
from relay.core.archive import CURSOR_KEY, ArchiveMark, decode_values
from relay.core.archive_range import PlannedObject, restore_plan
from relay.core.stored import tweet_from_stored, users_of
from relay.core.times import time_from_unix
from relay.errors import ArchiveError, MalformedPayload
from relay.store import RestoreBatch, Restored, RestoredTweet

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")
BATCH_TWEETS = 2000
"""Tweets a restore commits at a time."""


def cmd_restore(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    setup_logging(settings)
    asyncio.run(restore(settings, args.url, wait=args.wait))
    return 0


@dataclass
class _Read:
    tweets: int = 0
    left_out: int = 0
    last: ArchiveMark | None = None


async def restore(
    settings: Settings,
    url: str,
    *,
    environ: Mapping[str, str] | None = None,
    wait: float = MIGRATE_WAIT,
    sleep: Sleep = asyncio.sleep,
) -> Restored:
    """Restore the archive at ``url`` into the (empty) store the settings name; an
    endpoint that does not answer is waited for, ``wait`` seconds at most each time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from relay.sources.archive import archive_objects, fetch, outage_of
    from relay.store.open import admin_for

    bucket, objects = await archive_objects(url, environ, sleep=sleep, give_up_after=wait)
    outage = outage_of(bucket)

    def get(key: str) -> asyncio.Task[bytes | None]:
        return fetch(bucket, key, outage, sleep=sleep, give_up_after=wait)

    plan = restore_plan(objects)
    total = sum(item.name.last_seq - item.name.first_seq + 1 for item in plan)
    epoch = secrets.token_hex(8)
    admin = admin_for(settings)
    read = _Read()
    started = time.monotonic()
    lines = _Lines(every=max(total // 20, 1))

    def state() -> Mapping[str, str]:
        # The writer goes on after the last archived seq, in the new epoch's folder.
        if read.last is None:
            return {}
        return {CURSOR_KEY: ArchiveMark(epoch, read.last.seq, read.last.received).text()}

    columns = (
        TextColumn("restoring {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(str(bucket.url), total=total)

        def show(tweets: int, seq: int) -> None:
            progress.update(task, completed=tweets + read.left_out)
            if not console.is_terminal:
                lines(tweets, seq, total, time.monotonic() - started)

        done = await admin.restore(
            read_ahead(_batches(get, plan, read)), epoch=epoch, state=state, progress=show
        )
    rate = done.tweets / max(time.monotonic() - started, 1e-6)
    console.print(
        f"relay: restored {done.tweets:,} tweets up to seq {done.head} from {bucket.url} "
        f"into {admin.where} ({rate:,.0f} tweets/s); the archive goes on after seq "
        f"{read.last.seq if read.last else 0}; its epoch is {done.epoch} (new)",
        highlight=False,
    )
    return done


class _Lines:
    """Plain progress lines (a log, a pipe): one every ``every`` tweets or so."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.next = every

    def __call__(self, tweets: int, seq: int, total: int, elapsed: float) -> None:
        if tweets < self.next:
            return
        self.next = tweets + self.every
        print(
            f"relay: restored {tweets:,} of about {total:,} tweets (seq {seq}), "
            f"{tweets / max(elapsed, 1e-6):,.0f} tweets/s",
            flush=True,
        )


async def _batches(
    get: Callable[[str], asyncio.Task[bytes | None]], plan: list[PlannedObject], read: _Read
) -> AsyncIterator[RestoreBatch]:
    """The archive's tweets in batches, each object fetched while the one before is
    stored; seqs only increasing (an epoch's tail a later one gave again is left out).

    Each archived line is decoded once: its object gives the tweet's indexed fields, and
    goes into the store as the archive holds it (the stored object of this very seq and
    receive time), not encoded again."""
    head = 0
    batch: list[RestoredTweet] = []
    users: dict[str, dict[str, object]] = {}
    fetch = get(plan[0].key) if plan else None
    try:
        for index, item in enumerate(plan):
            assert fetch is not None
            try:
                data = await fetch
            except ArchiveError:
                fetch = None
                raise
            fetch = get(plan[index + 1].key) if index + 1 < len(plan) else None
            if data is None:
                continue
            for archived, value in decode_values(data, where=item.key):
                if archived.seq <= head or (item.below and archived.seq >= item.below):
                    read.left_out += 1
                    continue
                head = archived.seq
                read.last = ArchiveMark(archived.epoch, archived.seq, archived.received)
                try:
                    tweet = tweet_from_stored(value, encode=False)
                except MalformedPayload as exc:
                    raise ArchiveError(f"{item.key}: seq {archived.seq}: {exc}") from None
                # As it is only when it says this seq and receive time (as the store
                # writes them); else the store builds it again from the tweet.
                same = value.get("seq") == archived.seq and value.get("received_at") == _time_text(
                    archived.received
                )
                body = archived.body if same else b""
                batch.append(RestoredTweet(archived.seq, archived.received, tweet, body))
                for user in users_of(value):
                    users[str(user["id"])] = user
                read.tweets += 1
                if len(batch) >= BATCH_TWEETS:
                    yield RestoreBatch(batch, list(users.values()))
                    batch, users = [], {}
        if batch:
            yield RestoreBatch(batch, list(users.values()))
    finally:
        if fetch is not None and not fetch.done():
            fetch.cancel()


async def read_ahead(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """``items``, the next one made while the caller works on this one: the batch after
    the one the store inserts (in its writer's thread) is decoded meanwhile (on the
    event loop)."""
    done = object()
    pending = asyncio.ensure_future(anext(items, done))
    try:
        while (item := await pending) is not done:
            pending = asyncio.ensure_future(anext(items, done))
            yield item  # type: ignore[misc]
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


@functools.lru_cache(maxsize=4096)
def _time_text(received: float) -> str:
    return time_from_unix(received)
