"""The commands that talk to the X API: ``rules list``, ``rules sync``, ``record``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from relay.app.cli_support import (
    console,
    settings_from,
    setup_logging,
)
from relay.config import Settings
from relay.errors import ConfigError

if TYPE_CHECKING:
    from relay.store import Store


def _x_settings(args: argparse.Namespace) -> Settings:
    return Settings.load(file=args.config, environ=dict(os.environ))


def cmd_rules_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from relay.sources.xapi import current_rules, load_rules, require_token, stream_client

    settings = _x_settings(args)
    wanted = {(r.value, r.tag) for r in load_rules(settings.rules_file)}
    api = stream_client(require_token(settings.x_bearer_token), settings.x_api_base_url)
    listed = _api_call(lambda: current_rules(api), "listing stream rules", settings.x_api_base_url)
    if not listed:  # one line, not the borders of an empty table
        hint = (
            f"; `relay rules sync` adds the {len(wanted)} rule(s) of {settings.rules_file}"
            if wanted
            else ""
        )
        print(f"the X API holds no stream rules{hint}")
        return 0
    table = Table("id", "tag", "value", "in config")
    for rule in listed:
        table.add_row(
            rule.id,
            rule.tag,
            rule.value,
            "yes" if (rule.value, rule.tag) in wanted else "no: sync deletes it",
        )
    Console().print(table)
    return 0


def cmd_rules_sync(args: argparse.Namespace) -> int:
    from relay.sources.xapi import (
        apply_sync,
        current_rules,
        load_rules,
        plan_sync,
        require_token,
        stream_client,
    )

    settings = _x_settings(args)
    wanted = load_rules(settings.rules_file)
    api = stream_client(require_token(settings.x_bearer_token), settings.x_api_base_url)
    current = _api_call(lambda: current_rules(api), "listing stream rules", settings.x_api_base_url)
    plan = plan_sync(wanted, current)
    out = Console()
    for verb, rules in (("add", plan.add), ("delete", plan.delete), ("keep", plan.keep)):
        for rule in rules:
            out.print(f"{verb:6} {rule.tag or rule.id}: {rule.value}", highlight=False)
    _api_call(
        lambda: apply_sync(api, plan, dry_run=args.dry_run),
        "syncing stream rules",
        settings.x_api_base_url,
    )
    out.print(
        "dry run: the API accepted the new rules; nothing changed"
        if args.dry_run
        else f"synced: {len(plan.add)} added, {len(plan.delete)} deleted, {len(plan.keep)} kept"
    )
    return 0


def _api_call(call: Callable[[], Any], action: str, base_url: str) -> Any:
    import requests
    import tweepy

    from relay.errors import ConfigError
    from relay.sources.xapi import api_error

    try:
        return call()
    except tweepy.TweepyException as exc:
        raise api_error(exc, action) from None
    except requests.RequestException as exc:
        # Unreachable (DNS, refused, TLS, timeout): the user changes the network or
        # X_API_BASE_URL, so this is a setting's error, exit 2.
        reason = type(exc).__name__
        raise ConfigError(
            f"{action}: cannot reach the X API at {base_url} ({reason}); check the network "
            "or X_API_BASE_URL"
        ) from None


def cmd_record(args: argparse.Namespace) -> int:
    # A limit that stops before the first tweet is a mistake, not a recording of nothing.
    if args.max_tweets is not None and args.max_tweets < 1:
        raise ConfigError("--max-tweets must be at least 1")
    if args.duration is not None and not args.duration > 0:
        raise ConfigError("--duration must be more than 0 seconds")
    settings = settings_from(args)
    setup_logging(settings)
    resume = args.db is not None
    return asyncio.run(_record(settings, Path(args.out), args.max_tweets, args.duration, resume))


async def _resume_store(settings: Settings) -> Store | None:
    """The store ``--db`` names, opened to read only: where a live source resumes. None
    when there is no store there yet (nothing stored: the source starts from now)."""
    from relay.errors import StoreNotReady
    from relay.store.open import open_store

    try:
        return await open_store(settings, writer=False, serves=False, wait=False)
    except StoreNotReady as exc:
        logging.getLogger("relay").info("recording without a resume point: %s", exc)
        return None


async def _record(
    settings: Settings,
    out: Path,
    max_tweets: int | None,
    duration: float | None,
    resume: bool,
) -> int:
    """Record ``settings.source`` to ``out``; with ``resume``, a live source resumes
    after the newest tweet of the store the settings name (read only)."""
    import time

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from relay.app.sources import build_source
    from relay.obs.metrics import Metrics
    from relay.sources import nothing_stored
    from relay.sources.record import Recorded, record

    try:
        out.open("ab").close()  # the folder and the rights, before a source is started
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    store = await _resume_store(settings) if resume else None
    newest_stored = store.highest_tweet_id if store is not None else nothing_stored
    source = build_source(settings, newest_stored, Metrics(), time.time)
    started = time.monotonic()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    # The spinner only where someone watches it: in a log or a pipe, the last line says it all.
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(f"recording to {out}")

        def show(done: Recorded) -> None:
            rate = done.tweets / max(time.monotonic() - started, 1e-6)
            progress.update(
                task,
                description=f"recording to {out}: {done.tweets} tweets, "
                f"{done.lines} lines, {rate:.1f} tweets/s",
            )

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        recording = asyncio.create_task(
            record(source, out, max_tweets=max_tweets, duration=duration, progress=show)
        )
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([recording, stopper], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not recording.done():
            recording.cancel()
        try:
            done = await recording
        except asyncio.CancelledError:
            done = None
    if store is not None:
        await store.close()
    console.print(
        f"recorded {out}" + (f": {done.tweets} tweets in {done.lines} lines" if done else ""),
        highlight=False,
    )
    return 0
