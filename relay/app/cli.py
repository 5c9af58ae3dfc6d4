"""The ``relay`` command. Thin: flags into Settings, call the app, report errors in one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from relay import __version__
from relay.app.cli_support import (
    LOG_LEVEL_HELP,
    MIGRATE_WAIT,
    Command,
    console,
)
from relay.app.commands.processes import cmd_ingest, cmd_run, cmd_serve
from relay.app.commands.restore import cmd_restore
from relay.app.commands.store import cmd_backup, cmd_check, cmd_delete, cmd_migrate
from relay.app.commands.tokens import cmd_synth, cmd_token
from relay.app.commands.x_api import cmd_record, cmd_rules_list, cmd_rules_sync
from relay.errors import RelayError

if TYPE_CHECKING:
    pass


def run() -> NoReturn:
    """The ``relay`` command: :func:`main` on the process's arguments, then its exit code."""
    from relay.app.launch import leave

    leave(main())


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

    restore = commands.add_parser(
        "restore",
        help="rebuild an empty store from an archive (seqs and receive times kept)",
        description="Rebuild an empty store (the SQLite file, or DATABASE_URL after `relay "
        "migrate`) from the archive at URL: every tweet under its seq and receive time, the "
        "archive's cursor set to the last archived seq, then a new epoch (clients reset). "
        "Refuses a store that holds tweets, and one a writer holds. Progress: a bar on a "
        "terminal, lines otherwise.",
        epilog="example: DATABASE_URL=postgres://... relay restore s3://my-bucket/tweets",
    )
    restore.add_argument("url", metavar="URL", help="s3://bucket/prefix or file:///path")
    restore.add_argument("--db", help="the SQLite store, also $RELAY_DB (relay.db)")
    restore.add_argument("--config", metavar="FILE", help="TOML config file")
    restore.add_argument("--log-level", dest="log_level", help=LOG_LEVEL_HELP)
    restore.add_argument(
        "--wait",
        type=_duration,
        default=MIGRATE_WAIT,
        metavar="DURATION",
        help="how long to wait for an archive endpoint that does not answer (at the start "
        f"or between objects) before giving up (30s, 2m; {MIGRATE_WAIT:g}s)",
    )
    restore.set_defaults(command=cmd_restore)

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
    record.add_argument(
        "--db", help="a store to resume after: read only, never written (none: from now)"
    )
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


def _duration(text: str) -> float:
    from relay.core.values import parse_duration

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
    parser.add_argument(
        "--replay",
        metavar="FILE|URL",
        help="recorded stream (the bundled sample), or an archive: s3://bucket/prefix, "
        "file:///path",
    )
    parser.add_argument(
        "--since",
        dest="replay_since",
        metavar="SEQ|TIME",
        help="replaying an archive: from this seq or ISO 8601 time on (included)",
    )
    parser.add_argument(
        "--until",
        dest="replay_until",
        metavar="SEQ|TIME",
        help="replaying an archive: up to this seq or ISO 8601 time (included)",
    )
    parser.add_argument("--speed", help="replay pace: 1 recorded, N times faster, or max (1)")
    parser.add_argument(
        "--loop",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay again and again with fresh ids (on for the bundled sample)",
    )


if __name__ == "__main__":
    sys.exit(main())
