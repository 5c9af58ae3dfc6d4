"""The commands that look after a store: ``migrate``, ``delete``, ``backup``, ``check``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from relay.app.cli_support import (
    console,
    settings_from,
    setup_logging,
)
from relay.errors import ConfigError

if TYPE_CHECKING:
    pass


def cmd_migrate(args: argparse.Namespace) -> int:
    from relay.app import launch

    settings = settings_from(args)
    setup_logging(settings)
    return asyncio.run(
        launch.migrate(settings, new_epoch=args.new_epoch, wait=args.wait, force=args.force)
    )


def cmd_delete(args: argparse.Namespace) -> int:
    from relay.core.deletion_ids import check_ids, ids_from_lines
    from relay.store.open import admin_for

    settings = settings_from(args)
    try:
        ids = check_ids(args.ids)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    bad: list[str] = []
    if args.from_file:
        try:
            with open(args.from_file, encoding="utf-8", errors="replace") as lines:
                found, bad = ids_from_lines(lines)
        except OSError as exc:
            raise ConfigError(f"cannot read {args.from_file}: {exc.strerror or exc}") from None
        ids = list(dict.fromkeys([*ids, *found]))
    skipped = f"{len(bad)} lines skipped (not an id), first: {bad[0]!r}" if bad else ""
    if not ids and bad:
        raise ConfigError(f"no tweet id in {args.from_file}: {skipped}")
    if not ids:
        raise ConfigError("no tweet ids given: name them, or give --from-file FILE")
    queued = asyncio.run(admin_for(settings).queue_deletions(ids))
    console.print(
        f"relay: queued {queued} deletions; the active writer applies them within a few "
        f"seconds{'; ' + skipped if skipped else ''}",
        highlight=False,
    )
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from relay.store.open import admin_for

    settings = settings_from(args)
    done = asyncio.run(admin_for(settings).backup(Path(args.out)))
    console.print(
        f"relay: backed up {settings.db} to {done.path}: {done.tweets} tweets up to seq "
        f"{done.head}; its epoch is {done.epoch} (new)",
        highlight=False,
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from relay.store.open import admin_for

    settings = settings_from(args)
    checked = asyncio.run(admin_for(settings).integrity_check(quick=args.quick))
    if not checked.problems:
        print(f"relay: {settings.db} is intact: ok ({checked.pages:,} pages read)", flush=True)
        return 0
    for problem in checked.problems:
        print(problem, flush=True)
    console.print(
        f"[bold red]relay:[/] {settings.db} is damaged ({len(checked.problems)} problems "
        "above): stop the relays on it and restore a backup (docs/deployment.md)",
        highlight=False,
    )
    return 1
