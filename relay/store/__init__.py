"""Stores: where tweets live, in seq order, exactly once.

The store assigns each new tweet a ``seq`` that increases strictly within its
``epoch`` (an id made when the store is created), drops tweets whose id it
already holds, and answers the reads the hub and the object API need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from relay.query import TweetQuery
    from relay.tweets import Tweet


@dataclass(frozen=True, slots=True)
class StoredTweet:
    """A tweet the store holds: its position and its served object, encoded once."""

    seq: int
    channels: tuple[str, ...]
    body: bytes
    """The served object as JSON, encoded once and reused in every frame."""
    # What subscription filters look at, so they never decode the body.
    lang: str | None = None
    author: str | None = None
    has_media: bool = False
    text: str = ""


@dataclass(frozen=True, slots=True)
class AppendResult:
    stored: list[StoredTweet]
    duplicates: int


class Store(Protocol):
    epoch: str

    async def append(
        self, tweets: Sequence[Tweet], users: Sequence[dict[str, Any]], received_at: float
    ) -> AppendResult:
        """Store new tweets (dropping known ids) and return them with their seq."""
        ...

    async def head(self) -> int:
        """The highest seq stored, 0 when empty."""
        ...

    async def read_after(
        self, channel: str, after: int, until: int, limit: int, *, max_bytes: int | None = None
    ) -> list[StoredTweet]:
        """Tweets of ``channel`` with ``after < seq <= until``, in seq order.

        At most ``limit`` tweets, and no more once their bodies reach ``max_bytes``
        (the first one always comes).
        """
        ...

    async def count_after(
        self, channel: str, after: int, until: int, *, cap: int | None = None
    ) -> int:
        """How many tweets ``read_after`` would give in all; counting stops past ``cap``."""
        ...

    async def query(self, query: TweetQuery) -> tuple[list[bytes], int]:
        """Encoded objects for one page of the object API, and the total count."""
        ...

    async def tweet(self, tweet_id: str) -> bytes | None: ...

    async def user(self, user_id: str) -> bytes | None: ...

    async def rule_keys(self) -> list[str]:
        """Every rule key that some stored tweet matched."""
        ...

    async def highest_tweet_id(self, rule_key: str | None = None) -> str | None:
        """The newest stored tweet id, of one rule when ``rule_key`` is given."""
        ...

    async def get_state(self, key: str) -> str | None:
        """Small durable values for sources (``since_id``, offsets)."""
        ...

    async def set_state(self, key: str, value: str) -> None: ...

    async def close(self) -> None: ...
