"""The access log: one line a request or a stream (logger ``relay.access``), every token
value hidden, whatever the route or transport."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import unquote_plus

from relay.obs.logs import JWT_SHAPE, REDACTED

access_log = logging.getLogger("relay.access")

LOGGED_TARGET = 200
"""Characters of a request target a log line shows, after the token is redacted."""
POLLED = frozenset({"/healthz", "/readyz", "/v1/info", "/metrics"})
"""Paths that probes, scrapers and every open page ask every few seconds: a successful
answer is access-logged at debug, so they do not drown the requests worth reading."""


def redact(target: str, limit: int = LOGGED_TARGET) -> str:
    """``target`` fit for a log line: every token value hidden, at most ``limit`` chars.

    Query parameters are compared by their decoded name (``tok%65n`` is ``token``), and
    anything shaped like a JWT is hidden wherever it is.
    """
    path, mark, query = target.partition("?")
    if mark:
        pieces = []
        for piece in query.split("&"):
            name, equals, _ = piece.partition("=")
            if equals and unquote_plus(name).strip().lower() == "token":
                piece = f"{name}={REDACTED}"
            pieces.append(piece)
        target = path + "?" + "&".join(pieces)
    target = JWT_SHAPE.sub(REDACTED, target)
    return target if len(target) <= limit else target[:limit] + "..."


def log_request(
    method: str,
    target: str,
    status: int,
    *,
    client: str,
    size: int,
    started: float,
    path: str = "",
    reason: str = "",
) -> None:
    """The access line of one HTTP request (logger ``relay.access``): its fields say it all.

    ``path`` is the route's path (no query), to tell a probe; ``reason`` why it was refused.
    """
    level = logging.DEBUG if path in POLLED and status < 400 else logging.INFO
    if not access_log.isEnabledFor(level):
        return
    fields: dict[str, Any] = {
        "client": client,
        "method": method[:10],
        "path": redact(target),
        "status": status,
        "bytes": size,
        "duration_ms": round((time.monotonic() - started) * 1000, 2),
    }
    if reason:
        fields["reason"] = reason[:200]
    access_log.log(level, "request", extra=fields)
