"""A test's GET of a relay's HTTP API: the status and the decoded JSON body."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any, NamedTuple

import orjson


class Response(NamedTuple):
    """What :meth:`RelayServer.get <relay.testing.RelayServer.get>` got back.

    A tuple, so ``status, body = relay.get("/readyz")`` works as before it had names.
    """

    status: int
    """The HTTP status: 200, or an error's (401, 404, 503...), never raised."""
    body: Any
    """The body decoded from JSON (a dict for every relay endpoint); None when empty."""


def get_json(url: str, *, token: str | None = None, timeout: float) -> Response:
    """GET ``url`` (``token`` as ``Authorization: Bearer``); an error status is returned
    like any other, with its JSON body."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Response(response.status, _decoded(response.read()))
    except urllib.error.HTTPError as error:
        return Response(error.code, _decoded(error.read()))


def _decoded(data: bytes) -> Any:
    return orjson.loads(data) if data else None
