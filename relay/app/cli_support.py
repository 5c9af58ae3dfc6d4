"""What every ``relay`` command shares: the error console, settings from flags, logging."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from rich.console import Console

from relay.config import Settings

if TYPE_CHECKING:
    pass


console = Console(stderr=True, soft_wrap=True)  # an error stays one line for log readers


Command = Callable[[argparse.Namespace], int]


LOG_LEVEL_HELP = "debug, info, warning, error or critical (info); also $RELAY_LOG_LEVEL"


MIGRATE_WAIT = 30.0
"""Seconds ``relay migrate`` waits for a PostgreSQL server that does not answer: a release
phase on a mistyped host fails the deploy instead of stalling it."""


FLAG_NAMES = (
    "host",
    "port",
    "db",
    "log_level",
    "source",
    "replay",
    "replay_since",
    "replay_until",
    "speed",
    "loop",
)


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    flags: dict[str, Any] = {name: getattr(args, name, None) for name in FLAG_NAMES}
    env = dict(os.environ) if environ is None else environ
    settings = Settings.load(file=getattr(args, "config", None), environ=env, flags=flags)
    if flags["db"] is not None and settings.database_url:
        # An explicit --db wins over DATABASE_URL, and says so (a surprise otherwise).
        console.print(
            f"relay: --db {flags['db']} given: storing in that SQLite file, not DATABASE_URL",
            highlight=False,
        )
        settings = replace(settings, database_url="")
    return settings


def setup_logging(settings: Settings) -> None:
    from relay.obs.logs import resolve_timestamps
    from relay.obs.logs import setup_logging as configure

    secrets = (settings.secret, settings.previous_secret, settings.x_bearer_token)
    configure(
        settings.log_level,
        settings.log_format,
        secrets=secrets,
        background=True,
        timestamps=resolve_timestamps(settings.log_timestamps, os.environ),
    )
