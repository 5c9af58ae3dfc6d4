"""What the demo client says when it stops: one error it exits with, and how it reads a
relay's refusals and close reasons (the same on WebSocket and server-sent events)."""

from __future__ import annotations

import orjson

# Close codes after which reconnecting cannot help without a change by the person.
TERMINAL_CLOSES = {
    1008: "refused by policy (too many connections)",
    4001: "the token is no longer accepted",
    4003: "forbidden",
}
# What a 4001 means, by the word in its JSON reason (docs/protocol.md, close codes).
UNAUTHORIZED_CLOSES = {
    "expired": "the token expired and was not refreshed (give --token-command to refresh it)",
    "revoked": "the token was revoked: ask for a new one",
    "invalid": "the token is no longer valid",
}
NO_TOKEN = "the relay needs a token: give --token or set RELAY_DEMO_TOKEN"


class DemoError(Exception):
    """Something the person must fix (a bad URL, a missing or refused token); ``code``
    is the exit status: 1 for the relay or the token, 2 for a channel."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def refused(token: str | None, status: int | str) -> DemoError:
    """The message for a 401/403: no token given, or the token refused."""
    if not token:
        return DemoError(NO_TOKEN)
    return DemoError(f"the relay refused the token ({status})")


def unauthorized(reason: str) -> str:
    """What a 4001 close says, from its reason: JSON naming why (``expired``, ``revoked``,
    ``invalid``) with a message; a reason this client cannot read is shown as it came."""
    try:
        fields = orjson.loads(reason)
    except orjson.JSONDecodeError:
        fields = None
    if not isinstance(fields, dict):
        return f"{TERMINAL_CLOSES[4001]} ({one_line(reason) or 'no reason given'})"
    why = str(fields.get("reason", ""))
    message = one_line(str(fields.get("message") or ""))
    said = UNAUTHORIZED_CLOSES.get(why)
    if said is None:  # a reason added after this client: the relay's words, as they are
        return f"{TERMINAL_CLOSES[4001]} ({message or one_line(why) or 'no reason given'})"
    if why == "invalid" and message:
        return f"{said}: {message}"
    return said


def one_line(text: str) -> str:
    """``text`` cut to 200 characters, on one line, without control characters."""
    return " ".join("".join(c if c.isprintable() else " " for c in text[:200]).split())
