"""Which rule channels exist: the rule set an ingester works with. Pure, no I/O.

A ``rule:<key>`` channel carries the tweets that matched one stream rule. Which keys
can ever carry a tweet depends on the source: the rules of a rules file (synced to the
X stream, or searched by x-poll) and the bundled sample's rules are known before any
tweet comes (a *closed* set); a recording's rules are known only once it has been read
through (*open* until the replay's first pass ends). The ingesting process records its
set in the store (state key :data:`STATE_KEY`), so that every serving process knows it,
whichever process and machine it runs on.

A serving process then knows a rule channel when its key is in the recorded set or a
stored tweet matched it (old tweets stay readable after the rules change). A channel it
does not know is refused (``unknown_channel``) when the set is closed; while the set is
open it is accepted and said to be unknown yet (``"known": false``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from relay.core.protocol import STATS_CHANNEL
from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX

STATE_KEY = "rule_set"
"""The store state key (``Writer.set_state``) the ingester records its set under."""
SHOWN_KEYS = 12
"""Keys a message lists before it says how many more there are."""


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The rule keys a source produces; ``closed``: no other key can come."""

    keys: frozenset[str]
    closed: bool
    origin: str
    """Where the set comes from, for people: ``the rules file config/rules.toml``."""

    def encode(self) -> str:
        return orjson.dumps(
            {"keys": sorted(self.keys), "closed": self.closed, "origin": self.origin}
        ).decode()

    @staticmethod
    def decode(text: str | None) -> RuleSet | None:
        """The set recorded as ``text``; None when nothing usable is recorded."""
        if not text:
            return None
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(value, dict):
            return None
        keys, closed, origin = value.get("keys"), value.get("closed"), value.get("origin")
        if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
            return None
        if not isinstance(closed, bool):
            return None
        return RuleSet(frozenset(keys), closed, origin if isinstance(origin, str) else "")


@dataclass(frozen=True, slots=True)
class Channels:
    """What a serving process knows of the channels now: the recorded rule set (None
    when no ingester has recorded one) and every key a stored tweet matched."""

    declared: RuleSet | None = None
    stored: frozenset[str] = frozenset()

    @property
    def closed(self) -> bool:
        """No rule channel beyond :meth:`keys` can ever carry a tweet."""
        return self.declared is not None and self.declared.closed

    def keys(self) -> list[str]:
        """Every known rule key, sorted."""
        declared = self.declared.keys if self.declared is not None else frozenset()
        return sorted(declared | self.stored)

    def knows(self, channel: str) -> bool:
        """``tweets``, ``$stats`` and the rule channels of a known key."""
        if not channel.startswith(RULE_PREFIX):
            return channel in (ALL_CHANNEL, STATS_CHANNEL)
        key = channel[len(RULE_PREFIX) :]
        return key in self.stored or (self.declared is not None and key in self.declared.keys)

    def names(self) -> list[str]:
        """Every channel known now: ``tweets``, ``$stats``, then the rule channels."""
        return [ALL_CHANNEL, STATS_CHANNEL, *(RULE_PREFIX + key for key in self.keys())]

    def unknown_message(self, channel: str) -> str:
        """One line for a rule channel outside a closed set: what the rules are."""
        origin = self.declared.origin if self.declared is not None else ""
        return (
            f"unknown channel {channel[:64]!r}: no such rule in {origin or 'the relay'}; "
            f"its rule channels: {listing(RULE_PREFIX + key for key in self.keys())}"
        )

    def matching(self, pattern: str) -> list[str]:
        """The known channels a token's channel pattern grants."""
        return [name for name in self.names() if fnmatch.fnmatchcase(name, pattern)]


def could_name_a_channel(pattern: str) -> bool:
    """Whether a channel pattern can match any channel name at all (``tweets``,
    ``$stats``, ``rule:<key>``), whatever the rules: ``nonsense`` cannot."""
    if fnmatch.fnmatchcase(ALL_CHANNEL, pattern) or fnmatch.fnmatchcase(STATS_CHANNEL, pattern):
        return True
    # A rule channel: the pattern's literal start must fit "rule:" (a key can be anything
    # after it, so only the prefix rules a pattern out).
    literal = pattern
    for index, char in enumerate(pattern):
        if char in "*?[":
            literal = pattern[:index]
            break
    else:
        return pattern.startswith(RULE_PREFIX) and len(pattern) > len(RULE_PREFIX)
    return literal.startswith(RULE_PREFIX) or RULE_PREFIX.startswith(literal)


def listing(names: Iterable[str]) -> str:
    """``a, b, c`` with at most :data:`SHOWN_KEYS` names, then how many more; ``none``."""
    every = list(names)
    if not every:
        return "none"
    shown = ", ".join(every[:SHOWN_KEYS])
    more = len(every) - SHOWN_KEYS
    return f"{shown} and {more} more" if more > 0 else shown
