"""The one place a source is built from settings: a registry by ``settings.source``.

A new source registers a builder here; :func:`check_source` refuses, before anything
starts, a source that cannot work (a replay file that cannot be read, no X token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from relay.config import Settings
from relay.core.archive_range import ArchiveRange, parse_bound
from relay.errors import ConfigError
from relay.obs.metrics import Metrics
from relay.sources import DeletedIds, ResumePoint, Source, nothing_deleted
from relay.sources.archive import is_archive_url
from relay.sources.replay import ReplaySource
from relay.sources.synth import sample_path, sample_rules
from relay.store import Log, Writer
from relay.store.deletion_record import recorded_ids

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Builder = Callable[[Settings, ResumePoint, Metrics, Clock, Sleep, DeletedIds], Source]
"""Builds one kind of source; a source that resumes asks its :data:`ResumePoint`, a replay
of an archive its :data:`DeletedIds`."""


def _replay(
    settings: Settings,
    newest_stored: ResumePoint,
    metrics: Metrics,
    clock: Clock,
    sleep: Sleep,
    deleted: DeletedIds = nothing_deleted,
) -> Source:
    if is_archive_url(settings.replay):
        from relay.sources.archive import ArchiveSource

        return ArchiveSource(
            settings.replay,
            selection=archive_range(settings),
            deleted=deleted,
            speed=settings.speed,
            sleep=sleep,
        )
    path = settings.replay or str(sample_path())
    # The bundled sample declares its rules; another recording's are read on the way.
    declared = sample_rules() if _same_file(path, sample_path()) else None
    return ReplaySource(
        path, speed=settings.speed, loop=settings.replay_loops, clock=clock, declared=declared
    )


def _x_common(
    settings: Settings, newest_stored: ResumePoint, metrics: Metrics, clock: Clock
) -> dict[str, Any]:
    from relay.sources.xapi import load_rules, require_token

    return {
        "token": require_token(settings.x_bearer_token),
        "base_url": settings.x_api_base_url,
        "rules": load_rules(settings.rules_file),
        "rules_origin": f"the rules file {settings.rules_file}",
        "newest_stored": newest_stored,
        "metrics": metrics,
        "clock": clock,
    }


def _x_stream(
    settings: Settings,
    newest_stored: ResumePoint,
    metrics: Metrics,
    clock: Clock,
    sleep: Sleep,
    deleted: DeletedIds = nothing_deleted,
) -> Source:
    from relay.sources.x_stream import XStreamSource

    return XStreamSource(
        **_x_common(settings, newest_stored, metrics, clock),
        sleep=sleep,
        stall_timeout=settings.stall_timeout,
        backfill_pages=settings.backfill_pages,
    )


def _x_poll(
    settings: Settings,
    newest_stored: ResumePoint,
    metrics: Metrics,
    clock: Clock,
    sleep: Sleep,
    deleted: DeletedIds = nothing_deleted,
) -> Source:
    from relay.sources.x_poll import XPollSource

    return XPollSource(
        **_x_common(settings, newest_stored, metrics, clock),
        interval=settings.poll_interval,
        max_pages=settings.poll_max_pages,
    )


def archive_range(settings: Settings) -> ArchiveRange:
    """The part of an archive ``--since`` and ``--until`` name (the whole one without)."""
    try:
        since = (
            parse_bound(settings.replay_since, what="--since") if settings.replay_since else None
        )
        until = (
            parse_bound(settings.replay_until, what="--until") if settings.replay_until else None
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return ArchiveRange(since, until)


SOURCES: dict[str, Builder] = {"replay": _replay, "x-stream": _x_stream, "x-poll": _x_poll}
"""Every source ``--source`` names, by that name."""


def build_source(
    settings: Settings,
    newest_stored: ResumePoint,
    metrics: Metrics,
    clock: Clock,
    sleep: Sleep = asyncio.sleep,
    deleted: DeletedIds = nothing_deleted,
) -> Source:
    """The source ``settings.source`` names; ``clock`` and ``sleep`` pace its waits; a
    live source resumes where ``newest_stored`` says (the store's newest tweet id); a
    replay of an archive leaves out what ``deleted`` lists (the store's deletion record)."""
    builder = SOURCES.get(settings.source)
    if builder is None:
        raise ConfigError(f"unknown source {settings.source!r}")
    return builder(settings, newest_stored, metrics, clock, sleep, deleted)


class DeletingStore(Writer, Log, Protocol):
    """The active writer's store: it applies the deletion queue and reads the record."""


def deleted_ids(store: DeletingStore, metrics: Metrics) -> DeletedIds:
    """The :data:`DeletedIds` of the writer's store: every id of its deletion record,
    once the requests still queued (``relay delete`` before the start) are applied: a
    replay must not store a tweet a request queued for the job to delete a moment later
    while the tweet was not stored yet (the record would say "not stored" and keep it)."""
    from relay.jobs.deletions import apply_deletions

    async def read() -> frozenset[str]:
        await apply_deletions(store, metrics)
        return await recorded_ids(store)

    return read


async def check_source(settings: Settings, sleep: Sleep = asyncio.sleep) -> None:
    """Refuse a source that cannot work before anything starts: one clear line (an
    archive: its URL, bucket and credentials, by listing it; an endpoint that does not
    answer is waited for, as the database is)."""
    if settings.source == "replay" and is_archive_url(settings.replay):
        from relay.sources.archive import archive_objects

        if settings.loop:
            raise ConfigError("--loop replays a recording again with new ids, not an archive")
        archive_range(settings)
        await archive_objects(settings.replay, sleep=sleep)
        return
    if settings.source == "replay" and settings.replay:
        try:
            with open(settings.replay, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"cannot read replay file {settings.replay}: {exc.strerror}"
            ) from None
    if settings.source in ("x-stream", "x-poll"):
        from relay.sources.xapi import load_rules, require_token

        require_token(settings.x_bearer_token)
        load_rules(settings.rules_file)


def _same_file(path: str, other: Path) -> bool:
    try:
        return Path(path).resolve() == other.resolve()
    except OSError:
        return False
