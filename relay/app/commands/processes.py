"""``relay run``, ``relay ingest`` and ``relay serve``: settings in, a relay process out."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING

from relay.app.cli_support import (
    settings_from,
    setup_logging,
)

if TYPE_CHECKING:
    pass


def cmd_run(args: argparse.Namespace) -> int:
    from relay.app import launch

    settings = settings_from(args)
    if args.exit_when_done and (settings.source != "replay" or settings.replay_loops):
        from relay.errors import ConfigError

        raise ConfigError("--exit-when-done needs a replay that ends: --replay FILE --no-loop")
    setup_logging(settings)
    launch.raise_open_files_limit()
    return asyncio.run(launch.run(settings, "run", exit_when_done=args.exit_when_done))


def cmd_ingest(args: argparse.Namespace) -> int:
    from relay.app import launch

    settings = settings_from(args)
    setup_logging(settings)
    if not settings.redis_url:
        logging.getLogger("relay").warning(
            "REDIS_URL is not set: `relay serve` processes see new tweets only by polling "
            "the store (every %g s)",
            settings.bus_check_interval,
        )
    return asyncio.run(launch.run(settings, "ingest", metrics_port=args.metrics_port))


def cmd_serve(args: argparse.Namespace) -> int:
    from relay.app import launch

    settings = settings_from(args)
    setup_logging(settings)
    launch.raise_open_files_limit()
    if not settings.redis_url:
        logging.getLogger("relay").warning(
            "REDIS_URL is not set: live tweets come from polling the store every %g s",
            settings.bus_check_interval,
        )
    return asyncio.run(launch.run(settings, "serve"))
