"""Sources: where raw payload lines come from.

A source is anything with an async ``lines()`` iterator of :class:`RawLine`. It
yields each payload line exactly as received (a blank line is a keep-alive) and
knows nothing of parsing or storage; the ingest pipeline does the rest. A source
stops when its iterator is closed or its task cancelled.

A source that reads in bulk (a recording at full speed) may also have an async
``batches()`` iterator of lists of :class:`RawLine`, the same lines in the same order:
ingest then takes them a list at a time, without a step of the event loop a line.

A source may also say which rule channels it produces: a ``rule_set`` attribute
(:class:`relay.core.rule_set.RuleSet`), read by ingest after every line and recorded in the
store when it changes. A source without one declares nothing: its set stays open.

A source that resumes (the X stream's gap filling, polling's ``since_id``) is handed a
:data:`ResumePoint` by the app: it asks where to resume, and never sees the store.

May import: obs, config, core, errors (a source gets a resume point, never the store: a
contract of ``make lint``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

ResumePoint = Callable[[str | None], Awaitable[str | None]]
"""``(rule key or None) -> the newest stored tweet id`` (of that rule; of any with None),
None when nothing is stored: where a source resumes after a restart or a reconnect. The
app hands in the store's :meth:`~relay.store.Catalog.highest_tweet_id`, or
:func:`nothing_stored`."""


async def nothing_stored(rule_key: str | None = None) -> str | None:
    """The resume point without a store (``relay record`` without ``--db``): nothing is
    stored, so a source starts from what the API gives now."""
    return None


LineKind = Literal["payload", "stored"]


@dataclass(frozen=True, slots=True)
class RawLine:
    """One payload line as received, without its line terminator."""

    data: bytes
    received_at: float
    """Unix seconds when the line arrived (or was recorded)."""
    kind: LineKind = "payload"
    """``payload``: an X API payload (:func:`relay.core.tweets.parse_line`); ``stored``:
    one tweet as a store served it, from an archive (:func:`relay.core.stored.parse_stored`),
    stored again as it was, with this receive time."""


DeletedIds = Callable[[], Awaitable[frozenset[str]]]
"""``() -> the ids in the store's record of deletions``: what a replay of an archive
leaves out (a tweet deleted is never stored again). The app hands it in, as it hands in a
:data:`ResumePoint`."""


async def nothing_deleted() -> frozenset[str]:
    """The deletion record without a store: empty."""
    return frozenset()


class Source(Protocol):
    """Where tweets come from: a recorded stream, the X filtered stream, search polling."""

    name: str

    def lines(self) -> AsyncIterator[RawLine]:
        """Yield payload lines until the stream ends or the iterator is closed."""
        ...
