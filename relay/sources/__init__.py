"""Sources: where raw payload lines come from.

A source is anything with an async ``lines()`` iterator of :class:`RawLine`. It
yields each payload line exactly as received (a blank line is a keep-alive) and
knows nothing of parsing or storage; the ingest pipeline does the rest. A source
stops when its iterator is closed or its task cancelled.

A source may also say which rule channels it produces: a ``rule_set`` attribute
(:class:`relay.core.rule_set.RuleSet`), read by ingest after every line and recorded in the
store when it changes. A source without one declares nothing: its set stays open.

May import: store types, obs, config, core, errors (a source gets a resume point, not a
store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RawLine:
    """One payload line as received, without its line terminator."""

    data: bytes
    received_at: float
    """Unix seconds when the line arrived (or was recorded)."""


class Source(Protocol):
    """Where tweets come from: a recorded stream, the X filtered stream, search polling."""

    name: str

    def lines(self) -> AsyncIterator[RawLine]:
        """Yield payload lines until the stream ends or the iterator is closed."""
        ...
