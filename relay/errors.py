"""The one exception tree of tweet-relay, and the WebSocket close codes.

::

    RelayError
    ├── ConfigError            bad setting, missing credential; the process exits
    ├── MalformedPayload       a stream line that is not a usable X API payload
    ├── StoreError             the store cannot be opened or written
    │   ├── StoreNotReady      not there yet (no schema, server down): wait and retry
    │   ├── StoreCorrupt       the file is damaged: reads cannot be trusted; the process stops
    │   ├── StoreUnreachable   no answer within the wait a command allows (migrate --wait)
    │   ├── WriterBusy         another live process is the writer (SQLite lock, PG lease)
    │   ├── StoreNotEmpty      a restore into a store that already holds tweets
    │   └── WriterFenced       another ingester took the writer lease: stop writing
    ├── SourceError            a source failed for good (bad token, unentitled)
    ├── ArchiveError           the archive's bucket or folder failed (retried while running)
    │   ├── ArchiveUnreachable no answer from its endpoint: wait and retry
    │   └── ArchiveDamaged     an object that is not one the archive writes
    └── ClientError            a client asked for something it cannot have
        ├── BadRequest         bad query parameter or bad frame (HTTP 400, error frame)
        ├── NotFound           unknown path or object (HTTP 404)
        ├── Unauthorized       missing or invalid token (HTTP 401, close 4001)
        │   └── TokenRevoked   a token on the revocation list (counted where it is found)
        ├── Forbidden          valid token, resource not granted (HTTP 403, close 4003)
        ├── MethodNotAllowed   an HTTP method other than GET and HEAD (HTTP 405)
        ├── TooManyRequests    this client has too many queries in flight (HTTP 429)
        └── Unavailable        no answer now, ask again later (HTTP 503)
            └── QueryTimeout   a query ran past its time limit (HTTP 503)

A :class:`ClientError` with ``retry_after`` set is answered with a ``Retry-After`` header.

Close codes come in two ranges, as in centrifuge: 1xxx are the RFC 6455 codes,
4xxx are ours. A client should reconnect and resume after 1001, 1011, 4008 and 4029;
after 1008, 4001 and 4003 it must change something (token, frames) first.
"""

from __future__ import annotations

from typing import Any

# RFC 6455 codes.
CLOSE_ABNORMAL = 1006  # never sent: a connection that ended without a close frame
CLOSE_GOING_AWAY = 1001  # shutdown: reconnect and resume from the last seq
CLOSE_POLICY = 1008  # a policy refused the connection (limits per subject or address)
CLOSE_TOO_BIG = 1009  # an inbound frame was larger than the limit
CLOSE_INTERNAL_ERROR = 1011  # delivering to this client failed: reconnect and resume
# Our range.
CLOSE_UNAUTHORIZED = 4001  # token missing, invalid or expired without refresh
CLOSE_FORBIDDEN = 4003  # token valid but not allowed here
CLOSE_SLOW_CONSUMER = 4008  # send buffer overflowed: resume from the store
CLOSE_RATE_LIMITED = 4029  # too many client operations


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """A setting is invalid or a required credential is missing."""


class MalformedPayload(RelayError):
    """A stream line could not be read as an X API v2 payload.

    ``reason`` is a short fixed word for counters (``not_json``, ``not_object``...).
    """

    def __init__(self, message: str, *, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(RelayError):
    """The store failed; the message says how."""


class StoreNotReady(StoreError):
    """The store is not there yet (a serving process started before any migration)."""


class StoreCorrupt(StoreError):
    """The store's file is damaged (SQLite said so, or a read found rows out of order or
    missing): what it reads cannot be trusted, so a read never passes for the end of the
    data. The relay counts it (``relay_store_damaged_total``), answers 503 and exits 1."""


class StoreUnreachable(StoreError):
    """The store's server did not answer within the wait the command allows (``relay
    migrate --wait``): a release phase fails instead of stalling a deploy."""


class WriterBusy(StoreError):
    """Another live process is the store's writer: it holds the SQLite file's writer lock,
    or PostgreSQL's writer lease (refused: ``relay migrate --new-epoch`` beside it)."""


class WriterFenced(StoreError):
    """This process lost the writer lease: another ingester writes now, this one must stop."""


class StoreNotEmpty(StoreError):
    """``relay restore`` keeps each tweet's seq: it refuses a store that holds tweets."""


class SourceError(RelayError):
    """A source cannot go on (for example the API refused the token)."""


class ArchiveError(RelayError):
    """Object storage refused or failed a read or a write (the message says which and
    why, in one line): the archive writer retries it with backoff while the relay runs."""


class ArchiveUnreachable(ArchiveError):
    """The archive's endpoint did not answer (refused, timed out): wait and retry, as
    for the database."""


class ArchiveDamaged(ArchiveError):
    """An object under the archive's prefix is not one the archive writes (not gzip, a
    line that is not a stored tweet): the message names it and the line."""


class ClientError(RelayError):
    """A client request that cannot be served; carries its HTTP status and reason."""

    status = 400
    reason = "badRequest"
    code = "bad_request"

    retry_after: int | None = None
    """Seconds after which the client may ask again (HTTP ``Retry-After``)."""
    about: str | None = None
    """The stream channel the refusal is about, when it is about one (its body names it)."""

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if retry_after is not None:
            self.retry_after = retry_after

    def as_body(self) -> dict[str, Any]:
        """The Enginio-shaped error body: ``{"errors": [{"message", "reason"}]}``, and the
        ``channel`` it is about when it is about one."""
        error: dict[str, Any] = {"message": self.message, "reason": self.reason}
        if self.about is not None:
            error["channel"] = self.about
        return {"errors": [error]}


class BadRequest(ClientError):
    status = 400
    reason = "badRequest"
    code = "bad_request"


class NotFound(ClientError):
    status = 404
    reason = "notFound"
    code = "not_found"


class Unauthorized(ClientError):
    status = 401
    reason = "unauthorized"
    code = "unauthorized"


class TokenRevoked(Unauthorized):
    """A token whose id is on the revocation list.

    :class:`~relay.access.decisions.Access` counts it (``relay_refused{reason="revoked"}``) where
    it finds it, so callers that count their own refusals leave this one out.
    """


class Forbidden(ClientError):
    status = 403
    reason = "forbidden"
    code = "forbidden"


class MethodNotAllowed(ClientError):
    status = 405
    reason = "methodNotAllowed"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow
        """The methods the resource answers (HTTP ``Allow``)."""


class TooManyRequests(ClientError):
    status = 429
    reason = "tooManyRequests"
    code = "too_many_requests"
    retry_after = 1


class Unavailable(ClientError):
    status = 503
    reason = "unavailable"
    code = "unavailable"
    retry_after = 1


class QueryTimeout(Unavailable):
    reason = "queryTimeout"
    code = "query_timeout"


class SessionClosed(RelayError):
    """The session stopped accepting frames (slow consumer, shutdown, gone)."""


class StreamRefused(SourceError):
    """The stream endpoint answered an HTTP error instead of a stream."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status


class BadForwardedFor(RelayError, ValueError):
    """The entry that names the client is not an IP address; the socket address is used."""


class ProtocolError(BadRequest):
    """A client frame the server cannot act on; answered with an ``error`` frame."""

    def __init__(
        self,
        code: str,
        message: str,
        op: str | None = None,
        ref: Any = None,
        channel: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.op = op
        self.ref = ref
        self.channel = channel
        """The channel the refused op named (a string, cut to 64 characters), if any."""


class MalformedEntry(RelayError):
    """A stream entry that is not one of ours (another writer, another version)."""


class MalformedRequest(RelayError, ValueError):
    """A request that is not HTTP/1.x, and what to answer it: the status, why (fixed text,
    never the client's bytes), and what of the request line could be read, for the log."""

    def __init__(self, status: int, reason: str, method: str = "", target: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.method = method
        self.target = target
