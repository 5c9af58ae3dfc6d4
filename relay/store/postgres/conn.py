"""Connecting to PostgreSQL: URLs, liveness settings, waiting for a server that is not up.

A URL (``postgres://`` or ``postgresql://``, as PaaS add-ons give them) is shown in
logs and errors as ``HOST:PORT/DB``, never with its password. Every connection enables
TCP keepalives and a TCP user timeout, so that a peer that died without closing its
socket (a PaaS machine gone, a frozen process) is noticed in seconds, not hours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict

from relay.errors import StoreError, StoreUnreachable
from relay.obs.waits import Outage

log = logging.getLogger(__name__)

SCHEMES = ("postgres://", "postgresql://")
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,  # ms: unacknowledged data for longer means a dead peer
    "connect_timeout": 10,
    "application_name": "tweet-relay",
}
FIRST_WAIT = 1.0
LONGEST_WAIT = 10.0
PERMANENT = (
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "no password supplied",
    "password is required",
    "invalid connection option",
    "invalid uri",
    "invalid integer value",
    "permission denied",
)
"""Connection failures that waiting cannot fix: a URL that can never work."""


def is_postgres_url(url: str) -> bool:
    return url.startswith(SCHEMES)


def describe(url: str) -> str:
    """``HOST:PORT/DB`` of a URL, for logs and errors: never the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unreadable PostgreSQL URL"
    host = str(info.get("host") or "localhost")
    return f"{host}:{info.get('port') or 5432}/{info.get('dbname') or info.get('user') or ''}"


def redact(message: str, url: str) -> str:
    """``message`` without the URL's password, wherever a driver may have quoted it."""
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.ProgrammingError:
        password = None
    if password:
        message = message.replace(str(password), "***")
    return " ".join(message.split())  # one line


def conninfo(url: str) -> str:
    """The URL with the liveness options added; a URL that is not PostgreSQL's is a
    StoreError at once."""
    if not is_postgres_url(url):
        raise StoreError(f"not a PostgreSQL URL (it must start with {' or '.join(SCHEMES)})")
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"bad PostgreSQL URL: {redact(str(exc), url)}") from None
    return psycopg.conninfo.make_conninfo(url, **KEEPALIVES)


def is_permanent(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(marker in text for marker in PERMANENT)


class BytesJsonLoader(Loader):
    """json columns read as the bytes stored: bodies go to clients without decoding."""

    def load(self, data: Any) -> bytes:
        return bytes(data)


def configure_types(conn: psycopg.AsyncConnection[Any]) -> None:
    conn.adapters.register_loader("json", BytesJsonLoader)


async def connect(
    url: str,
    *,
    wait: bool = True,
    what: str = "PostgreSQL",
    give_up_after: float | None = None,
    outage: Outage | None = None,
) -> psycopg.AsyncConnection[Any]:
    """An autocommit connection; while the server is unreachable and ``wait`` is set,
    retries with backoff (1 s doubling to 10 s): one log line when the wait starts and
    one when it ends (``outage``, shared with the caller's other waits, when given).

    With ``give_up_after`` (seconds) a wait that long raises
    :class:`~relay.errors.StoreUnreachable` with one line instead of trying again.
    """
    info = conninfo(url)
    where = describe(url)
    outage = outage or Outage(log, f"{what} at {where}")
    delay = FIRST_WAIT
    started = time.monotonic()
    while True:
        options: dict[str, Any] = {}
        if give_up_after is not None:  # one try must not outlast the whole wait either
            left = give_up_after - (time.monotonic() - started)
            options["connect_timeout"] = max(2, min(10, int(left) + 1))
        try:
            conn = await psycopg.AsyncConnection.connect(info, autocommit=True, **options)
        except psycopg.OperationalError as exc:
            reason = redact(str(exc), url)
            if is_permanent(exc):
                raise StoreError(f"cannot use {what} at {where}: {reason}") from None
            if not wait:
                raise StoreError(f"cannot reach {what} at {where}: {reason}") from None
            if give_up_after is not None:
                waited = time.monotonic() - started
                if waited >= give_up_after:
                    raise StoreUnreachable(
                        f"{what} at {where} did not answer within {give_up_after:g} s "
                        f"(--wait): {reason}"
                    ) from None
                delay = min(delay, max(0.1, give_up_after - waited))
            outage.failed(reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, LONGEST_WAIT)
            continue
        outage.answered()
        configure_types(conn)
        return conn
