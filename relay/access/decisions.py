"""Access decisions for one relay: its secret, its policy and its clock, in one place.

The stream server and the object API both ask it: who is this request (a grant, or
nobody), may it read this channel, which rules may it see, which filters bind it.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from relay.core.auth import Grant, Policy, Secrets, bearer_token, verify_token
from relay.core.filters import TweetFilter, parse_filter
from relay.core.query import Condition, rules_condition
from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX
from relay.errors import Forbidden, TokenRevoked, Unauthorized

if TYPE_CHECKING:
    from relay.obs.metrics import Metrics


class Access:
    def __init__(
        self,
        policy: Policy,
        secret: str | Secrets,
        clock: Callable[[], float],
        *,
        revoked: Container[str] = frozenset(),
        metrics: Metrics | None = None,
    ) -> None:
        self.policy = policy
        self.secret = secret
        self.clock = clock
        self.revoked = revoked
        """Token ids refused wherever a token is shown (a live :class:`RevocationList`)."""
        self.metrics = metrics

    def authenticate(
        self, headers: Mapping[str, str], query: Mapping[str, Sequence[str]]
    ) -> Grant | None:
        """The request's grant; None without a token; Unauthorized for a bad one."""
        token = bearer_token(headers, query)
        return None if token is None else self.verify(token)

    def verify(self, token: str) -> Grant:
        grant = verify_token(self.secret, token, now=self.clock())
        if grant.jti is not None and grant.jti in self.revoked:
            if self.metrics is not None:
                self.metrics.refused.labels("revoked").inc()
            raise TokenRevoked("the token has been revoked")
        return grant

    def readable_rules(self, grant: Grant | None, keys: Iterable[str]) -> list[str] | None:
        """The rule keys ``grant`` may read; None means every tweet (``tweets`` is readable).

        Raises Unauthorized or Forbidden when nothing at all is readable, so that a
        caller never answers an empty success to a request it should refuse.
        """
        if self.policy.can_read(grant, ALL_CHANNEL):
            return None
        readable = [k for k in keys if self.policy.can_read(grant, RULE_PREFIX + k)]
        if readable or self.policy.is_open or (grant is not None and grant.channels):
            return readable
        if grant is None:
            raise Unauthorized("this relay needs a token (Authorization: Bearer or ?token=)")
        raise Forbidden(f"the token of {grant.subject!r} grants no channel")

    def scope(self, grant: Grant | None, keys: Iterable[str]) -> tuple[Condition, ...]:
        """Conditions bounding every tweet ``grant`` may read: its rules and pinned filters.

        The object API narrows each query, lookup and user check with them; the stream
        applies the same pinned filters through :meth:`subscription_filter`. Raises like
        :meth:`readable_rules` when nothing at all is readable.
        """
        readable = self.readable_rules(grant, keys)
        conditions = [] if readable is None else [rules_condition(readable)]
        if grant is not None and grant.filters:
            conditions.extend(parse_filter(grant.filters).conditions())
        return tuple(conditions)

    def subscription_filter(self, grant: Grant | None, requested: Any) -> TweetFilter | None:
        """The filter of a subscription: what the token pins, narrowed by the client."""
        asked = parse_filter(requested) if requested is not None else None
        pinned = parse_filter(grant.filters) if grant is not None and grant.filters else None
        if pinned is None:
            return asked
        return pinned.narrowed_by(asked) if asked is not None else pinned
