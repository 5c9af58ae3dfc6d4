"""Cross-origin reads (CORS): which web pages on other origins may read the relay's
answers, and the answers to their browsers' preflights.

A page on another origin that sends ``Authorization`` or ``Last-Event-ID`` (a fetch-based
event-stream client, a search box with a token) makes its browser ask first with an
``OPTIONS`` preflight; the relay answers it here, without a route, a token or the store.
Tokens travel in headers or the query, never in cookies, so no answer allows credentials.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

ANY_ORIGIN = "*"
ALLOWED_METHODS = "GET, HEAD, OPTIONS"
ALLOWED_HEADERS = "Authorization, Last-Event-ID, If-None-Match, Accept, Cache-Control"
"""Request headers a page may send: a token, an event stream's position, a revalidation."""
EXPOSED_HEADERS = "ETag, Retry-After, Allow"
"""Answer headers a page may read beside the simple ones."""
PREFLIGHT_MAX_AGE = "600"
"""Seconds a browser may keep a preflight's answer (browsers cap it: Chromium at 7200)."""

Headers = list[tuple[str, str]]


class CrossOrigin:
    """The origins allowed to read answers (``*``: any; empty: none but the relay's own)."""

    __slots__ = ("_any", "_origins")

    def __init__(self, origins: Sequence[str]) -> None:
        self._any = ANY_ORIGIN in origins
        self._origins = frozenset(origins)

    def headers(self, origin: str | None) -> Headers:
        """The CORS headers of an answer to a request from ``origin`` (its ``Origin``
        header; None when it sent none)."""
        if self._any:
            return [
                ("Access-Control-Allow-Origin", ANY_ORIGIN),
                ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
            ]
        if not self._origins:
            return []
        # The answer depends on the Origin sent: caches must keep one per origin.
        if origin is not None and origin in self._origins:
            return [
                ("Access-Control-Allow-Origin", origin),
                ("Access-Control-Expose-Headers", EXPOSED_HEADERS),
                ("Vary", "Origin"),
            ]
        return [("Vary", "Origin")]

    def preflight(self, request_headers: Mapping[str, str]) -> tuple[int, Headers]:
        """The answer to an ``OPTIONS`` request (header names lower case): 204 with what
        may be sent, for an allowed origin; 204 with no permission for another (the
        browser then refuses the page's request itself, and says why in its console)."""
        headers = [("Allow", ALLOWED_METHODS)]
        origin = request_headers.get("origin")
        allowed = self.headers(origin)
        headers.extend(allowed)
        if any(name == "Access-Control-Allow-Origin" for name, _ in allowed):
            headers += [
                ("Access-Control-Allow-Methods", ALLOWED_METHODS),
                ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
                ("Access-Control-Max-Age", PREFLIGHT_MAX_AGE),
            ]
        return 204, headers
