"""Types every store shares, whichever database holds it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Deleted:
    """One applied request: ``seq`` 0 and no channels when the store did not hold it."""

    n: int
    """Its place in the record (increasing)."""
    tweet_id: str
    seq: int
    channels: tuple[str, ...]
