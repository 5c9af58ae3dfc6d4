"""The ``relay`` command. Thin: flags into Settings, call the app, report errors in one line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from relay import __version__
from relay.config import Settings
from relay.errors import ConfigError, RelayError

if TYPE_CHECKING:
    from relay.core.rule_set import Channels

console = Console(stderr=True, soft_wrap=True)  # an error stays one line for log readers
Command = Callable[[argparse.Namespace], int]
LOG_LEVEL_HELP = "debug, info, warning, error or critical (info); also $RELAY_LOG_LEVEL"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "command", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        return command(args)
    except RelayError as exc:
        console.print(f"[bold red]relay:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Ingest a tweet stream, store every tweet, broadcast it over WebSocket.",
    )
    parser.add_argument("--version", action="version", version=f"tweet-relay {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run source and server in one process (the embedded relay)",
        description="Run source and server in one process. With no options it replays the "
        "bundled sample stream in a loop and serves http://localhost:8080.",
        epilog="example: relay run --replay stream.jsonl --speed max --port 0",
    )
    add_server_flags(run)
    add_source_flags(run)
    run.add_argument(
        "--exit-when-done",
        action="store_true",
        dest="exit_when_done",
        help="with a replay that ends (--no-loop): once it is stored and published, drain "
        "clients and exit 0",
    )
    run.set_defaults(command=cmd_run)

    ingest = commands.add_parser(
        "ingest",
        help="the worker: source -> store -> bus, no client port (one active, others stand by)",
        description="Ingest the source into the store (DATABASE_URL, else the SQLite file) and "
        "publish each committed batch on the bus (REDIS_URL) for `relay serve` processes. One "
        "ingester writes at a time: a second one stands by (PostgreSQL) and takes over within "
        "about 2 x RELAY_LEASE_TTL of the first one's death; on SQLite it refuses to start.",
        epilog="example: DATABASE_URL=postgres://... REDIS_URL=redis://... relay ingest",
    )
    ingest.add_argument("--config", metavar="FILE", help="TOML config file (see config/relay.toml)")
    ingest.add_argument("--db", help="SQLite database file, also $RELAY_DB (relay.db)")
    ingest.add_argument("--log-level", dest="log_level", help=LOG_LEVEL_HELP)
    ingest.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="serve /healthz, /readyz and /metrics on this port (none)",
    )
    ingest.add_argument("--host", help="interface of the metrics port (127.0.0.1)")
    add_source_flags(ingest)
    ingest.set_defaults(command=cmd_ingest)

    serve = commands.add_parser(
        "serve",
        help="a web process: bus -> WebSocket clients, object API, demo page (any number)",
        description="Serve clients from the store and the bus that `relay ingest` publishes on "
        "(REDIS_URL; without it live tweets come from polling the store). Run as many as needed.",
        epilog="example: relay serve --host 0.0.0.0 --port $PORT",
    )
    add_server_flags(serve)
    serve.set_defaults(command=cmd_serve)

    migrate = commands.add_parser(
        "migrate",
        help="create or update the store's schema (the release phase)",
        description="Bring the schema of the store (DATABASE_URL, else the SQLite file) up to "
        "date. Idempotent; refuses a schema newer than this relay and another application's "
        "database.",
        epilog="example: DATABASE_URL=postgres://... relay migrate",
    )
    migrate.add_argument("--config", metavar="FILE", help="TOML config file")
    migrate.add_argument("--db", help="SQLite database file, also $RELAY_DB (relay.db)")
    migrate.add_argument("--log-level", dest="log_level", help=LOG_LEVEL_HELP)
    migrate.add_argument(
        "--new-epoch",
        dest="new_epoch",
        action="store_true",
        help="also give the store a new epoch (after restoring a backup; relays stopped)",
    )
    migrate.add_argument(
        "--wait",
        type=_duration,
        default=MIGRATE_WAIT,
        metavar="DURATION",
        help="how long to wait for a PostgreSQL server that does not answer before giving "
        f"up with exit 1 (30s, 2m; {MIGRATE_WAIT:g}s)",
    )
    migrate.add_argument(
        "--force",
        action="store_true",
        help="with --new-epoch: go on although the writer lease names a holder (only when "
        "that process is known to be dead)",
    )
    migrate.set_defaults(command=cmd_migrate)

    delete = commands.add_parser(
        "delete",
        help="delete tweets from the store and tell clients (X compliance)",
        description="Queue tweet ids for deletion. The active writer removes each tweet from "
        "the store and search within a few seconds and every serving process sends a "
        "`deleted` frame on its channels. Requests made while no relay runs are applied when "
        "one starts. --from-file reads one id a line or X compliance output (JSON lines).",
        epilog="example: relay delete 1500000000000000001 --from-file compliance.jsonl",
    )
    delete.add_argument("ids", nargs="*", metavar="ID", help="tweet ids")
    delete.add_argument(
        "--from-file", dest="from_file", metavar="FILE", help="ids, or compliance JSON lines"
    )
    delete.add_argument("--db", help="the SQLite store, also $RELAY_DB (relay.db)")
    delete.add_argument("--config", metavar="FILE", help="TOML config file")
    delete.set_defaults(command=cmd_delete)

    backup = commands.add_parser(
        "backup",
        help="copy the SQLite store while the relay runs (consistent, with a new epoch)",
        description="Write a consistent copy of the SQLite store, as of one commit, while the "
        "relay keeps writing. The copy has a new epoch, so clients of a relay restored from it "
        "reset instead of resuming. PostgreSQL: use pg_dump (docs/deployment.md).",
        epilog="example: relay backup backups/relay-$(date +%F).db",
    )
    backup.add_argument("out", metavar="OUT.db", help="the file to write (replaced when done)")
    backup.add_argument("--db", help="the SQLite store, also $RELAY_DB (relay.db)")
    backup.add_argument("--config", metavar="FILE", help="TOML config file")
    backup.set_defaults(command=cmd_backup)

    check = commands.add_parser(
        "check",
        help="read every page of the SQLite store and report damage (integrity check)",
        description="Run SQLite's full integrity check (every page, every index against its "
        "table) on the store, beside a running relay or not; nothing is written. Exit 0 when "
        "it is intact, 1 with SQLite's lines when it is damaged (restore a backup). A start "
        "checks only the schema and the newest tweet (docs/security.md).",
        epilog="example: relay check --db relay.db",
    )
    check.add_argument("--db", help="the SQLite store, also $RELAY_DB (relay.db)")
    check.add_argument("--config", metavar="FILE", help="TOML config file")
    check.add_argument(
        "--quick",
        action="store_true",
        help="PRAGMA quick_check: no index comparison, a few times faster",
    )
    check.set_defaults(command=cmd_check)

    synth = commands.add_parser(
        "synth",
        help="write a deterministic synthetic stream (JSONL)",
        description="Write a wire-accurate synthetic X API v2 filtered stream, the same for "
        "the same seed.",
        epilog="example: relay synth --count 10000 --seed 7 --out stream.jsonl.gz",
    )
    synth.add_argument("--count", type=int, default=1000, help="tweets to write (1000)")
    synth.add_argument("--seed", type=int, default=1, help="random seed (1)")
    synth.add_argument("--out", required=True, help="output file; .gz compresses")
    synth.set_defaults(command=cmd_synth)

    rules = commands.add_parser(
        "rules",
        help="list or sync the filtered stream's rules (needs X_BEARER_TOKEN)",
        description="The stream rules on the X API, against config/rules.toml.",
        epilog="example: relay rules sync --dry-run",
    )
    rules.set_defaults(command=lambda _args: _usage(rules))
    rules_commands = rules.add_subparsers(title="rules commands", metavar="ACTION")
    rules_list = rules_commands.add_parser("list", help="show the API's rules and the config's")
    rules_list.add_argument("--config", metavar="FILE", help="TOML config file")
    rules_list.set_defaults(command=cmd_rules_list)
    rules_sync = rules_commands.add_parser(
        "sync", help="add missing rules, delete unknown ones, keep the rest"
    )
    rules_sync.add_argument("--config", metavar="FILE", help="TOML config file")
    rules_sync.add_argument(
        "--dry-run", action="store_true", help="show the plan; the API validates, applies nothing"
    )
    rules_sync.set_defaults(command=cmd_rules_sync)

    record = commands.add_parser(
        "record",
        help="record a source's payload lines to a JSONL file the replay source reads",
        description="Write exactly the payload lines a source receives, with receive times, "
        "so the session can be replayed bit for bit later.",
        epilog="example: relay record session.jsonl --source x-stream --duration 600",
    )
    record.add_argument("out", metavar="OUT.jsonl", help="the file to write")
    record.add_argument("--config", metavar="FILE", help="TOML config file")
    record.add_argument("--db", help="the store the gap filler reads (relay.db)")
    add_source_flags(record)
    record.add_argument("--max-tweets", type=int, dest="max_tweets", help="stop after N tweets")
    record.add_argument("--duration", type=float, help="stop after S seconds")
    record.set_defaults(command=cmd_record)

    token = commands.add_parser(
        "token",
        help="print an access token (needs RELAY_SECRET)",
        description="Print a JWT (HS256, signed with RELAY_SECRET) granting channel patterns. "
        "The token alone goes to stdout; its id (jti), the name to put in the revocation "
        "list (RELAY_REVOKED_TOKENS) to revoke it, goes to stderr.",
        epilog="example: relay token --sub alice --channel 'rule:*' --ttl 3600",
    )
    token.add_argument("--config", metavar="FILE", help="TOML config file holding the secret")
    token.add_argument("--sub", required=True, help="who the token is for")
    token.add_argument(
        "--channel",
        action="append",
        required=True,
        metavar="PATTERN",
        help="channel pattern to grant (tweets, rule:*, rule:cats); repeatable",
    )
    token.add_argument("--ttl", type=float, default=3600, help="lifetime in seconds (3600)")
    token.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="pin a filter: lang=ja, author=name, has_media=true, keyword=word",
    )
    token.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="KEY=N",
        help="per-token limit: max_connections, max_subscriptions, ops_per_second",
    )
    token.add_argument(
        "--db", help="the SQLite store whose channels the patterns are checked against (relay.db)"
    )
    token.add_argument(
        "--force",
        action="store_true",
        help="issue the token although a --channel pattern matches no channel of the relay",
    )
    token.set_defaults(command=cmd_token)
    return parser


MIGRATE_WAIT = 30.0
"""Seconds ``relay migrate`` waits for a PostgreSQL server that does not answer: a release
phase on a mistyped host fails the deploy instead of stalling it."""


def _duration(text: str) -> float:
    from relay.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (seconds, or 30s, 2m, 1h)"
        ) from None


def _usage(parser: argparse.ArgumentParser) -> int:
    """A command group run without its action: its own usage on stderr, exit 2."""
    parser.print_help(sys.stderr)
    return 2


def add_server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (see config/relay.toml)")
    parser.add_argument("--host", help="interface to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, help="port, also $PORT; 0 picks a free one (8080)")
    parser.add_argument("--db", help="SQLite database file, also $RELAY_DB (relay.db)")
    parser.add_argument("--log-level", dest="log_level", help=LOG_LEVEL_HELP)


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source", help="where tweets come from: replay, x-stream or x-poll (replay)"
    )
    parser.add_argument("--replay", metavar="FILE", help="recorded stream (the bundled sample)")
    parser.add_argument("--speed", help="replay pace: 1 recorded, N times faster, or max (1)")
    parser.add_argument(
        "--loop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay again and again with fresh ids (on for the bundled sample)",
    )


FLAG_NAMES = ("host", "port", "db", "log_level", "source", "replay", "speed", "loop")


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


def cmd_migrate(args: argparse.Namespace) -> int:
    from relay.app import launch

    settings = settings_from(args)
    setup_logging(settings)
    return asyncio.run(
        launch.migrate(settings, new_epoch=args.new_epoch, wait=args.wait, force=args.force)
    )


def cmd_delete(args: argparse.Namespace) -> int:
    from relay.core.deletion_ids import check_ids, ids_from_lines
    from relay.errors import ConfigError

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
    if settings.database_url:
        from relay.store.postgres.deletions import queue_deletions as queue_pg

        queued = asyncio.run(queue_pg(settings.database_url, ids))
    else:
        from relay.store.sqlite.deletions import queue_deletions

        queued = queue_deletions(settings.db, ids)
    console.print(
        f"relay: queued {queued} deletions; the active writer applies them within a few "
        f"seconds{'; ' + skipped if skipped else ''}",
        highlight=False,
    )
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from relay.errors import ConfigError
    from relay.store.sqlite.backup import backup

    settings = settings_from(args)
    if settings.database_url:
        raise ConfigError(
            "DATABASE_URL is set: back up PostgreSQL with pg_dump (docs/deployment.md); "
            "give --db to copy a SQLite store"
        )
    done = backup(settings.db, Path(args.out))
    console.print(
        f"relay: backed up {settings.db} to {done.path}: {done.tweets} tweets up to seq "
        f"{done.head}; its epoch is {done.epoch} (new)",
        highlight=False,
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from relay.errors import ConfigError
    from relay.store.sqlite.check import integrity_check

    settings = settings_from(args)
    if settings.database_url:
        raise ConfigError(
            "DATABASE_URL is set: check PostgreSQL with pg_amcheck; give --db to check a "
            "SQLite store"
        )
    checked = integrity_check(settings.db, quick=args.quick)
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


def cmd_synth(args: argparse.Namespace) -> int:
    from relay.sources.synth import write_stream

    if args.count < 1:
        console.print("[bold red]relay:[/] --count must be at least 1")
        return 2
    try:
        written = write_stream(Path(args.out), args.count, args.seed)
    except OSError as exc:
        raise ConfigError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    console.print(f"wrote {written} tweets to {args.out}", highlight=False)
    return 0


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
    return asyncio.run(_record(settings, Path(args.out), args.max_tweets, args.duration))


async def _record(
    settings: Settings, out: Path, max_tweets: int | None, duration: float | None
) -> int:
    import time

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from relay.app.sources import build_source
    from relay.obs.metrics import Metrics
    from relay.sources.record import Recorded, record
    from relay.store.sqlite.store import SQLiteStore

    try:
        out.open("ab").close()  # the folder and the rights, before a source is started
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    store = await SQLiteStore.open(settings.db)
    source = build_source(settings, store, Metrics(), time.time)
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
    await store.close()
    console.print(
        f"recorded {out}" + (f": {done.tweets} tweets in {done.lines} lines" if done else ""),
        highlight=False,
    )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    import time

    from relay.core.auth import issue_token, new_token_id
    from relay.core.filters import parse_filter
    from relay.errors import ConfigError

    flags = {"db": args.db} if args.db else None
    settings = Settings.load(file=args.config, environ=dict(os.environ), flags=flags)
    if not settings.secret:
        raise ConfigError("relay token needs RELAY_SECRET (the key the relay verifies with)")
    check_channels(settings, args.channel, force=args.force)
    filters: dict[str, Any] = {}
    for item in args.filter:
        key, _, value = item.partition("=")
        filters[key] = (
            {"true": True, "false": False}.get(value, value) if key == "has_media" else value
        )
    parse_filter(filters)  # refuse a bad filter now, not at the first subscribe
    limits: dict[str, float] = {}
    for item in args.limit:
        key, _, value = item.partition("=")
        try:
            limits[key] = float(value)
        except ValueError:
            raise ConfigError(f"--limit {item!r}: the value must be a number") from None
    token_id = new_token_id()
    token = issue_token(
        settings.secret,
        subject=args.sub,
        channels=args.channel,
        ttl=args.ttl,
        now=time.time(),
        filters=filters or None,
        limits=limits or None,
        token_id=token_id,
    )
    print(token)
    # stdout is the token only (scripts capture it); the id to revoke it by goes beside.
    print(f"jti: {token_id}", file=sys.stderr)
    return 0


def check_channels(settings: Settings, patterns: Sequence[str], *, force: bool) -> None:
    """Refuse (:class:`ConfigError`, exit 2) channel patterns that match no channel of the
    relay today, unless ``force``: one that can name no channel at all, and one outside
    a closed rule set. While the set is still open a rule pattern matching nothing yet
    is only warned about, and so is every pattern when the store cannot be read."""
    from relay.core.rule_set import could_name_a_channel, listing
    from relay.errors import ConfigError

    channels, unread = asyncio.run(_known_channels(settings))
    refused: list[str] = []
    warned: list[str] = []
    for pattern in patterns:
        if not could_name_a_channel(pattern):
            refused.append(
                f"--channel {pattern!r} can match no channel (channels are tweets, $stats "
                "and rule:<tag>)"
            )
        elif channels is not None and not channels.matching(pattern):
            origin = channels.declared.origin if channels.declared else "the relay's source"
            if channels.closed:
                refused.append(
                    f"--channel {pattern!r} matches no channel of the relay (rules of "
                    f"{origin}: {listing(channels.keys())})"
                )
            else:
                warned.append(
                    f"--channel {pattern!r} matches no channel yet: no tweet has matched "
                    f"such a rule so far ({origin} may still bring one)"
                )
    if refused and not force:
        raise ConfigError(f"{refused[0]}; give --force to issue the token anyway")
    for line in [*refused, *warned]:
        console.print(f"relay: warning: {line}", highlight=False)
    if channels is None and not refused:
        console.print(
            f"relay: warning: cannot check the channels against the store ({unread})",
            highlight=False,
        )


async def _known_channels(settings: Settings) -> tuple[Channels | None, str]:
    """The store's known channels, or None and why they cannot be read (no store yet)."""
    from relay.errors import StoreError
    from relay.store import Store, read_channels

    try:
        async with asyncio.timeout(10):
            store: Store
            if settings.database_url:
                from relay.store.postgres.store import PostgresStore

                store = await PostgresStore.open(
                    settings.database_url, writer=False, readers=1, query_readers=1, wait=False
                )
            else:
                from relay.store.sqlite.store import SQLiteStore

                store = await SQLiteStore.open(settings.db, writer=False, query_readers=1)
            try:
                return await read_channels(store), ""
            finally:
                await store.close()
    except (StoreError, OSError) as exc:
        return None, str(exc)
    except TimeoutError:
        return None, "the store did not answer within 10 s"


if __name__ == "__main__":
    sys.exit(main())
