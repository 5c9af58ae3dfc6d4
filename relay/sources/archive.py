"""Replay an archive (``relay run --replay s3://bucket/prefix`` or ``file:///path``).

Every object under the prefix is read in the order of its name (epochs by their start,
seqs within one), the ones a ``--since``/``--until`` range excludes by their names
(:mod:`relay.core.archive_range`), and each tweet in it given out as a ``stored`` line:
the object the store served, stored again as it was with its receive time (a new seq:
the new store's). A tweet in the new store's record of deletions is left out: deleted
once, never stored again. The next object is fetched while one is given out.

An endpoint that does not answer is waited for, at the start and between objects, as
the database is: one line when the wait starts, one when it ends, the replay going on
from the object it was fetching.

Paced like a recording: at ``speed`` 1 the receive times' gaps (each at most
:data:`~relay.sources.replay.MAX_GAP`), 0 none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import orjson

from relay.archive.bucket import Bucket, parse_url, retried
from relay.core.archive import ArchivedTweet, ObjectName, decode_object, parse_key
from relay.core.archive_range import ArchiveRange
from relay.core.rule_set import RuleSet
from relay.core.tweets import RULE_PREFIX
from relay.errors import ArchiveError, ConfigError, SourceError
from relay.obs.waits import Outage
from relay.sources import DeletedIds, RawLine, nothing_deleted
from relay.sources.replay import MAX_GAP

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


def is_archive_url(text: str) -> bool:
    """Whether a ``--replay`` value names an archive rather than a recording's file: any
    URL (``s3://``, ``file://``; another scheme is refused in one line, not read as a
    file name)."""
    return "://" in text


async def archive_objects(
    url: str,
    environ: Mapping[str, str] | None = None,
    *,
    sleep: Sleep = asyncio.sleep,
    give_up_after: float | None = None,
) -> tuple[Bucket, list[tuple[str, ObjectName]]]:
    """The archive at ``url`` and its objects in order; one line
    (:class:`~relay.errors.ConfigError`, :class:`~relay.errors.ArchiveError`) when the URL,
    the bucket or the credentials are wrong, or when it holds no object. An endpoint that
    does not answer is waited for (for ``give_up_after`` seconds at most, when given)."""
    bucket = Bucket(parse_url(url), environ)
    keys = await retried(bucket.keys, outage_of(bucket), sleep=sleep, give_up_after=give_up_after)
    objects = [(key, name) for key in keys if (name := parse_key(key)) is not None]
    if not objects:
        raise ConfigError(f"archive {bucket.url}: no archived objects under it")
    return bucket, objects


def outage_of(bucket: Bucket) -> Outage:
    return Outage(log, f"the archive at {bucket.url}")


def fetch(
    bucket: Bucket,
    key: str,
    outage: Outage,
    *,
    sleep: Sleep = asyncio.sleep,
    give_up_after: float | None = None,
) -> asyncio.Task[bytes | None]:
    """The object under ``key``, fetched in a task of its own (while the one before is
    used); an endpoint that stops answering, or answers with a failure of its own (a
    500), is tried again with backoff rather than ending the read."""
    return asyncio.ensure_future(
        retried(
            lambda: bucket.get(key),
            outage,
            sleep=sleep,
            give_up_after=give_up_after,
            errors_too=True,
        )
    )


class ArchiveSource:
    """An archive as a :class:`relay.sources.Source` of stored lines."""

    name = "archive"

    def __init__(
        self,
        url: str,
        *,
        selection: ArchiveRange | None = None,
        deleted: DeletedIds = nothing_deleted,
        speed: float = 0.0,
        sleep: Sleep = asyncio.sleep,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.url = url
        self.selection = selection or ArchiveRange()
        self.deleted = deleted
        self.speed = speed
        self.sleep = sleep
        self.environ = environ
        self.rule_set = RuleSet(frozenset(), False, f"the archive {url}")
        """Open until every object has been read, then closed over the rules seen."""
        self.left_out = 0
        """Tweets of the range left out because the store's record says deleted."""

    async def lines(self) -> AsyncIterator[RawLine]:
        try:
            bucket, objects = await archive_objects(self.url, self.environ, sleep=self.sleep)
        except (ArchiveError, ConfigError) as exc:
            raise SourceError(str(exc)) from None
        picked = [(key, name) for key, name in objects if self.selection.may_hold(name)]
        deleted = await self.deleted()
        keys: set[str] = set()
        previous: float | None = None
        outage = outage_of(bucket)

        def ahead(index: int) -> asyncio.Task[bytes | None] | None:
            if index >= len(picked):
                return None
            return fetch(bucket, picked[index][0], outage, sleep=self.sleep)

        next_object = ahead(0)
        try:
            for index, (key, _) in enumerate(picked):
                assert next_object is not None
                data = await _fetched(next_object)
                next_object = ahead(index + 1)
                if index:  # read afresh each object: a `relay delete` during the replay holds
                    deleted = await self.deleted()
                for tweet in _tweets(data, key):
                    if not self.selection.holds(tweet):
                        continue
                    if deleted and _tweet_id(tweet) in deleted:
                        self.left_out += 1
                        continue
                    keys.update(_rule_keys(tweet.channels))
                    if self.speed and previous is not None and tweet.received > previous:
                        await self.sleep(min(tweet.received - previous, MAX_GAP) / self.speed)
                    previous = tweet.received
                    yield RawLine(tweet.body, tweet.received, "stored")
        finally:
            if next_object is not None and not next_object.done():
                next_object.cancel()
                with contextlib.suppress(BaseException):
                    await next_object
        self.rule_set = RuleSet(frozenset(keys), True, self.rule_set.origin)
        if self.left_out:
            log.info("left out %d deleted tweets of the archive", self.left_out)


async def _fetched(fetch: asyncio.Task[bytes | None]) -> bytes | None:
    try:
        return await fetch
    except (ArchiveError, ConfigError) as exc:
        raise SourceError(str(exc)) from None


def _rule_keys(channels: tuple[str, ...]) -> list[str]:
    return [channel[len(RULE_PREFIX) :] for channel in channels if channel.startswith(RULE_PREFIX)]


def _tweets(data: bytes | None, key: str) -> list[ArchivedTweet]:
    if data is None:  # gone since the listing (a rewrite replaced it): nothing to give
        return []
    try:
        return list(decode_object(data, where=key))
    except ArchiveError as exc:
        raise SourceError(str(exc)) from None


def _tweet_id(tweet: ArchivedTweet) -> str:
    value = orjson.loads(tweet.body).get("id")
    return value if isinstance(value, str) else ""
