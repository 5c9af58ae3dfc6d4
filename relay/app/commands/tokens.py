"""``relay token`` (and the channels a token may name) and ``relay synth``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.app.cli_support import (
    console,
)
from relay.config import Settings
from relay.errors import ConfigError

if TYPE_CHECKING:
    from relay.core.rule_set import Channels


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
    from relay.store.open import open_store

    try:
        async with asyncio.timeout(10):
            store = await open_store(settings, writer=False, serves=False, wait=False)
            try:
                return await store.known_channels(), ""
            finally:
                await store.close()
    except (StoreError, OSError) as exc:
        return None, str(exc)
    except TimeoutError:
        return None, "the store did not answer within 10 s"
