"""One stream, either transport: the access tests run each rule on WebSocket and on
server-sent events, so that a token can read no more over one than over the other.

A refusal is one word whatever the transport says it with (a 401 before the upgrade or
before the stream, an ``error`` frame, a close with 1008, a status of ``/v1/events``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.testing import RelayClient, RelayClientError, RelayServer, SseClient

TRANSPORTS = ("websocket", "sse")
Client = RelayClient | SseClient
STATUS_WORDS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "unknown_channel",
    429: "limit",
}


def open_stream(
    transport: str,
    relay: RelayServer,
    channels: str | Sequence[str] = "tweets",
    *,
    token: str | None = None,
    in_query: bool = False,
    filters: Mapping[str, Any] | None = None,
    since: tuple[str, int] | None = None,
) -> Client:
    """A stream of ``channels`` (every one subscribed on one WebSocket, or one event stream),
    its ``subscribed`` replies read."""
    names = [channels] if isinstance(channels, str) else list(channels)
    if transport == "sse":
        client = SseClient(
            relay.events_url,
            names,
            token=token,
            token_in_query=in_query,
            filters=filters,
            since=since,
        )
        client.next_event(until=lambda e: e.event == "subscribed")
        return client
    url = relay.ws_url + (f"?token={token}" if token and in_query else "")
    ws = RelayClient(url, token=None if in_query else token)
    try:
        for name in names:
            ws.subscribe(name, since=since, filters=filters)
    except BaseException:
        ws.close()
        raise
    return ws


def refusal(transport: str, relay: RelayServer, *args: Any, **kwargs: Any) -> str:
    """Why :func:`open_stream` is refused, as one word ("" when it is not)."""
    try:
        client = open_stream(transport, relay, *args, **kwargs)
    except InvalidStatus as refused:  # before the upgrade
        return STATUS_WORDS[refused.response.status_code]
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1008, closed
        return "limit"
    except RelayClientError as refused:
        if refused.frame is not None and "code" in refused.frame:  # an error frame
            return str(refused.frame["code"])
        if refused.code == 1008:  # a WebSocket past the connection limits
            return "limit"
        assert refused.code in STATUS_WORDS, refused
        return STATUS_WORDS[refused.code]
    client.close()
    return ""


def received(client: Client, count: int, timeout: float) -> list[dict[str, Any]]:
    """The first ``count`` tweets of the stream, those read with its replies too (a
    WebSocket's stored tweets may come before the reply to its next subscribe)."""
    deadline = time.monotonic() + timeout
    while len(tweets := [f for f in client.frames if f.get("type") == "tweet"]) < count:
        client.next_frame(max(0.01, deadline - time.monotonic()))
    return tweets[:count]


def ended(client: Client, timeout: float) -> tuple[int, dict[str, Any]]:
    """How the relay ended the stream: the close code and the reason's fields."""
    if isinstance(client, SseClient):
        closed = client.wait_closed(timeout)
        return int(closed["code"]), closed
    try:
        while True:
            client.next_frame(timeout)
    except RelayClientError as exc:
        assert exc.code is not None, exc
        return exc.code, orjson.loads(client.ws.close_reason or "{}")
