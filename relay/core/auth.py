"""Tokens, grants and the access policy. Pure: the time is passed in, nothing is read or sent.

A token is a JWT signed with HS256 and the relay's secret (``RELAY_SECRET``). Claims:
``sub`` and ``exp`` (required), ``nbf`` (optional), ``channels`` (glob patterns such as
``tweets``, ``rule:*``, ``rule:cats``), ``filters`` (pinned subscription filters, see
:mod:`relay.core.filters`) and ``limits`` (``max_connections``, ``max_subscriptions``,
``ops_per_second``: a token may tighten or loosen the policy's defaults). Only HS256 is
accepted: a token signed otherwise, or not at all (``alg: none``), is refused.

Secrets over time (:class:`Secrets`): during a rotation the previous secret still verifies
tokens until an absolute time, so restarts never extend it; such a grant expires at that time
at the latest, so an open connection is asked to refresh with a current token then. Tokens
are only ever issued with the current secret. Every issued token carries a random ``jti``,
which is what a revocation list names (:mod:`relay.access.revocation` reads it).
"""

from __future__ import annotations

import fnmatch
import secrets as _random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import jwt

from relay.errors import BadRequest, Forbidden, Unauthorized

ALGORITHM = "HS256"
LEEWAY = 2.0
"""Seconds of clock skew tolerated on ``exp`` and ``nbf``."""
LIMIT_KEYS = ("max_connections", "max_subscriptions", "ops_per_second")


@dataclass(frozen=True, slots=True)
class Grant:
    """What one verified token allows."""

    subject: str
    channels: tuple[str, ...]
    expires_at: float
    filters: Mapping[str, Any] | None = None
    limits: Mapping[str, float] = field(default_factory=dict)
    jti: str | None = None
    """The token's id, the name a revocation list uses; None for a token without one."""
    retiring: bool = False
    """Signed with the previous secret: ``expires_at`` is at most that secret's end."""

    def allows(self, channel: str) -> bool:
        return matches(self.channels, channel)


@dataclass(frozen=True, slots=True)
class Policy:
    """Who may read what, and how much, without and with a token.

    No defaults here: they live in :class:`relay.config.Settings`, which builds this.
    """

    public_channels: tuple[str, ...]
    """Channel patterns anyone may read without a token; ``*`` is everything."""
    max_connections_per_subject: int
    max_connections_per_address: int
    max_subscriptions: int
    ops_per_second: float
    ops_burst: int

    @property
    def is_open(self) -> bool:
        return bool(self.public_channels)

    def is_public(self, channel: str) -> bool:
        return matches(self.public_channels, channel)

    def can_read(self, grant: Grant | None, channel: str) -> bool:
        return self.is_public(channel) or (grant is not None and grant.allows(channel))

    def check_read(self, grant: Grant | None, channel: str) -> None:
        """Raise Unauthorized (no token) or Forbidden (token without the grant)."""
        if self.can_read(grant, channel):
            return
        if grant is None:
            raise Unauthorized(f"channel {channel} needs a token")
        raise Forbidden(f"the token of {grant.subject!r} does not grant {channel}")

    def limit(self, grant: Grant | None, key: str) -> float:
        """A limit, the token's own when it carries one."""
        if grant is not None and key in grant.limits:
            return grant.limits[key]
        default: float = {
            "max_connections": self.max_connections_per_subject,
            "max_subscriptions": self.max_subscriptions,
            "ops_per_second": self.ops_per_second,
        }[key]
        return default


@dataclass(frozen=True, slots=True)
class Secrets:
    """The keys tokens are verified with: the current one, and the previous one for a while."""

    current: str
    previous: str = field(default="", repr=False)
    previous_until: float = 0.0
    """Unix time after which tokens signed with ``previous`` are refused."""

    def __repr__(self) -> str:  # never a key in a log or a traceback
        return f"Secrets(previous_until={self.previous_until})"


def new_token_id() -> str:
    """A random ``jti``: 128 bits, URL-safe, one short line in a revocation list."""
    return _random.token_urlsafe(16)


def matches(patterns: Iterable[str], channel: str) -> bool:
    return any(fnmatch.fnmatchcase(channel, pattern) for pattern in patterns)


def issue_token(
    secret: str,
    *,
    subject: str,
    channels: Sequence[str],
    ttl: float,
    now: float,
    filters: Mapping[str, Any] | None = None,
    limits: Mapping[str, float] | None = None,
    not_before: float | None = None,
    token_id: str | None = None,
) -> str:
    """A signed token; ``secret`` is the current one (never the previous)."""
    if not secret:
        raise BadRequest("a token needs RELAY_SECRET")
    if not subject:
        raise BadRequest("a token needs a subject (--sub)")
    if not channels:
        raise BadRequest("a token needs at least one channel pattern (--channel)")
    if ttl <= 0:
        raise BadRequest("the token's ttl must be positive")
    claims: dict[str, Any] = {
        "sub": subject,
        "channels": list(channels),
        "iat": int(now),
        "exp": int(now + ttl),
        "jti": token_id or new_token_id(),
    }
    if not_before is not None:
        claims["nbf"] = int(not_before)
    if filters:
        claims["filters"] = dict(filters)
    if limits:
        unknown = set(limits) - set(LIMIT_KEYS)
        if unknown:
            raise BadRequest(f"unknown token limit(s): {', '.join(sorted(unknown))}")
        claims["limits"] = dict(limits)
    encoded: str = jwt.encode(claims, secret, algorithm=ALGORITHM)
    return encoded


def verify_token(secret: str | Secrets, token: str, *, now: float) -> Grant:
    """The grant of a valid token; :class:`Unauthorized` saying why for any other.

    With :class:`Secrets`, a token whose signature fails with the current secret is tried
    with the previous one: accepted until ``previous_until`` (its grant expires then at the
    latest), refused after it as "signed with a retired secret".
    """
    keys = secret if isinstance(secret, Secrets) else Secrets(secret)
    if not keys.current:
        raise Unauthorized("this relay accepts no tokens (RELAY_SECRET is not set)")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise Unauthorized("the token is not a JWT") from None
    except jwt.PyJWTError as exc:  # a header PyJWT refuses (crit, kid...): whatever it raises
        raise Unauthorized(f"the token's header is not valid: {exc}") from None
    if header.get("alg") != ALGORITHM:
        raise Unauthorized(f"the token's algorithm {header.get('alg')!r} is not accepted")
    try:
        return _grant(_decode(token, keys.current), now)
    except jwt.InvalidSignatureError:
        if not keys.previous:
            raise Unauthorized("the token's signature is not valid") from None
    try:
        claims = _decode(token, keys.previous)
    except jwt.InvalidSignatureError:
        raise Unauthorized("the token's signature is not valid") from None
    if now > keys.previous_until:
        raise Unauthorized("the token is signed with a retired secret: get a new token")
    grant = _grant(claims, now)
    return replace(grant, expires_at=min(grant.expires_at, keys.previous_until), retiring=True)


def _decode(token: str, secret: str) -> dict[str, Any]:
    """The claims of a token signed with ``secret``; InvalidSignatureError when it was not."""
    try:
        # exp and nbf are checked in _grant against the given time, not the library's clock.
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["sub", "exp"],
            },
        )
    except jwt.MissingRequiredClaimError as exc:
        raise Unauthorized(f"the token lacks the {exc.claim!r} claim") from None
    except jwt.InvalidSignatureError:
        raise
    except jwt.PyJWTError as exc:  # the whole family: a new kind of refusal is still a 401
        raise Unauthorized(f"the token is not valid: {exc}") from None
    return claims


def _grant(claims: Mapping[str, Any], now: float) -> Grant:
    subject, exp, nbf = claims.get("sub"), claims.get("exp"), claims.get("nbf")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("the token's sub claim must be a non-empty string")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise Unauthorized("the token's exp claim must be a number")
    if now > exp + LEEWAY:
        raise Unauthorized("the token has expired")
    if nbf is not None:
        if not isinstance(nbf, (int, float)) or isinstance(nbf, bool):
            raise Unauthorized("the token's nbf claim must be a number")
        if now + LEEWAY < nbf:
            raise Unauthorized("the token is not valid yet")
    channels = claims.get("channels")
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise Unauthorized("the token's channels claim must be a list of patterns")
    filters = claims.get("filters")
    if filters is not None and not isinstance(filters, dict):
        raise Unauthorized("the token's filters claim must be an object")
    limits = claims.get("limits") or {}
    if not isinstance(limits, dict) or not all(
        key in LIMIT_KEYS and _number(value) for key, value in limits.items()
    ):
        raise Unauthorized("the token's limits claim is not valid")
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not jti):
        raise Unauthorized("the token's jti claim must be a non-empty string")
    return Grant(subject, tuple(channels), float(exp), filters, limits, jti)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TokenBucket:
    """A rate limit: ``rate`` operations a second on average, bursts up to ``burst``."""

    __slots__ = ("burst", "rate", "tokens", "updated")  # one per stream client: no dict each

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> bool:
        self._fill(now)
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        """Go on at ``rate`` and ``burst`` from ``now``, keeping what is left (up to ``burst``).

        What accrued until ``now`` accrued at the old rate; a new token's limits never
        hand out a fresh burst.
        """
        self._fill(now)
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)

    def _fill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now


def bearer_token(headers: Mapping[str, str], query: Mapping[str, Sequence[str]]) -> str | None:
    """The token of a request: ``Authorization: Bearer`` first, then ``?token=``."""
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    values = query.get("token")
    return values[0] if values and values[0] else None
