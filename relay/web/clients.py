"""The serving side's record of each stream client, and the counts the connection limits read.

A :class:`Client` is what the server knows of one stream client beyond its fan-out
session: who it is (address, token grant), how fast it may send (its rate bucket),
and the watch on its token's expiry. The session (:mod:`relay.stream.session`) owns the
subscriptions and the send side; the record owns the rest, so that one connection has
one owner on each side and the fan-out core holds nothing only the server reads.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.core.auth import Grant, Policy, TokenBucket
    from relay.stream.session import Session


@dataclass(eq=False, slots=True)
class Client:
    """One stream client: made when its opening request is authorised, given its session
    when the upgrade is done, dropped when its connection is gone."""

    address: str
    """The client's address (behind trusted proxies, the one they forwarded)."""
    grant: Grant | None
    """The token's grant (None: no token, on an open relay); a refresh replaces it."""
    session: Session | None = None
    bucket: TokenBucket | None = None
    """The client's frame rate, operations and control frames together."""
    counted_subject: str | None = None
    """The subject this client is counted under (:class:`Clients`)."""
    refreshed: asyncio.Event | None = None
    """Set by each accepted refresh, for the expiry watch."""
    expiry: asyncio.Task[None] | None = None
    """The watch on the token's expiry (None: no token)."""
    started: float = 0.0
    """When the upgrade was done (``time.monotonic``), for the access log."""
    target: str = ""
    """The request's target (path and query), for the access line of an event stream."""

    def stop(self) -> None:
        """The connection is gone: the expiry watch ends."""
        if self.expiry is not None:
            self.expiry.cancel()


class Clients:
    """Open stream clients per address and per token subject, against the policy's limits."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._per_address: Counter[str] = Counter()
        self._per_subject: Counter[str] = Counter()

    def refusal(self, address: str, grant: Grant | None) -> str:
        """Why one more client from ``address`` with ``grant`` is refused; "" when it is not."""
        if self._per_address[address] >= self.policy.max_connections_per_address:
            return f"too many connections from {address}"[:120]
        if grant is not None and self.subject_full(grant):
            return f"too many connections for {grant.subject}"[:120]
        return ""

    def subject_full(self, grant: Grant) -> bool:
        """Whether ``grant``'s subject has all the connections its limit allows."""
        return self._per_subject[grant.subject] >= self.policy.limit(grant, "max_connections")

    def add(self, client: Client) -> None:
        self._per_address[client.address] += 1
        self.count_subject(client, client.grant)

    def remove(self, client: Client) -> None:
        address = client.address
        self._per_address[address] -= 1
        if not self._per_address[address]:
            del self._per_address[address]
        self.count_subject(client, None)

    def count_subject(self, client: Client, grant: Grant | None) -> None:
        """Move the client's count to ``grant``'s subject (None: uncount it)."""
        old, client.counted_subject = client.counted_subject, None
        if old is not None:
            self._per_subject[old] -= 1
            if not self._per_subject[old]:
                del self._per_subject[old]
        if grant is not None:
            self._per_subject[grant.subject] += 1
            client.counted_subject = grant.subject
