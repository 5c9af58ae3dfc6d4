"""The one place a source is built from settings: a registry by ``settings.source``.

A new source registers a builder here; :func:`check_source` refuses, before anything
starts, a source that cannot work (a replay file that cannot be read, no X token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from relay.config import Settings
from relay.errors import ConfigError
from relay.obs.metrics import Metrics
from relay.sources import ResumePoint, Source
from relay.sources.replay import ReplaySource
from relay.sources.synth import sample_path, sample_rules

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Builder = Callable[[Settings, ResumePoint, Metrics, Clock, Sleep], Source]
"""Builds one kind of source; a source that resumes asks its :data:`ResumePoint`."""


def _replay(
    settings: Settings, newest_stored: ResumePoint, metrics: Metrics, clock: Clock, sleep: Sleep
) -> Source:
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
    settings: Settings, newest_stored: ResumePoint, metrics: Metrics, clock: Clock, sleep: Sleep
) -> Source:
    from relay.sources.x_stream import XStreamSource

    return XStreamSource(
        **_x_common(settings, newest_stored, metrics, clock),
        sleep=sleep,
        stall_timeout=settings.stall_timeout,
        backfill_pages=settings.backfill_pages,
    )


def _x_poll(
    settings: Settings, newest_stored: ResumePoint, metrics: Metrics, clock: Clock, sleep: Sleep
) -> Source:
    from relay.sources.x_poll import XPollSource

    return XPollSource(
        **_x_common(settings, newest_stored, metrics, clock),
        interval=settings.poll_interval,
        max_pages=settings.poll_max_pages,
    )


SOURCES: dict[str, Builder] = {"replay": _replay, "x-stream": _x_stream, "x-poll": _x_poll}
"""Every source ``--source`` names, by that name."""


def build_source(
    settings: Settings,
    newest_stored: ResumePoint,
    metrics: Metrics,
    clock: Clock,
    sleep: Sleep = asyncio.sleep,
) -> Source:
    """The source ``settings.source`` names; ``clock`` and ``sleep`` pace its waits; a
    live source resumes where ``newest_stored`` says (the store's newest tweet id)."""
    builder = SOURCES.get(settings.source)
    if builder is None:
        raise ConfigError(f"unknown source {settings.source!r}")
    return builder(settings, newest_stored, metrics, clock, sleep)


def check_source(settings: Settings) -> None:
    """Refuse a source that cannot work before anything starts: one clear line."""
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
