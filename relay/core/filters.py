"""Server-side subscription filters. Pure.

A subscription may ask for ``{"lang": "ja" | [...], "author": "name" | [...],
"has_media": true|false, "keyword": "word"}``; every given filter must hold. A token
may pin filters: the client's own can only narrow them (the languages and authors
are intersected, the keyword and media flag must agree), never widen them. A
subscription to ``tweets`` may also be bounded to some rule channels (``channels``: one
subscription over their union, as a server-sent events stream of several channels is).

One predicate, two forms: :meth:`TweetFilter.matches` on the stream, and
:meth:`TweetFilter.conditions` for a store, which compiles them with the very same
meaning (the author's username folded with ``str.lower()``, the keyword a substring
of ``text.lower()``). A value of the wrong type (a username that is not a string)
matches no name and never raises.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from relay.core.query import Condition, rules_condition
from relay.core.tweets import RULE_PREFIX
from relay.errors import BadRequest, Forbidden

KEYS = ("lang", "author", "has_media", "keyword")
MAX_VALUES = 50


@dataclass(frozen=True, slots=True)
class TweetFilter:
    langs: frozenset[str] | None = None
    authors: frozenset[str] | None = None
    has_media: bool | None = None
    keywords: tuple[str, ...] = ()
    channels: frozenset[str] | None = None
    """Rule channels (``rule:<key>``) a tweet must be on one of; None: any tweet."""

    def matches(
        self, lang: Any, author: Any, has_media: Any, text: Any, channels: Collection[str] = ()
    ) -> bool:
        """Whether a tweet with these fields, on ``channels``, passes every filter."""
        if self.channels is not None and self.channels.isdisjoint(channels):
            return False
        if self.langs is not None and (not isinstance(lang, str) or lang not in self.langs):
            return False
        if self.authors is not None and fold(author) not in self.authors:
            return False
        if self.has_media is not None and bool(has_media) != self.has_media:
            return False
        if not self.keywords:
            return True
        lowered = fold(text)
        return all(keyword in lowered for keyword in self.keywords)

    def conditions(self) -> tuple[Condition, ...]:
        """The same predicate as store conditions (see :mod:`relay.core.query`)."""
        out: list[Condition] = []
        if self.channels is not None:
            keys = (c[len(RULE_PREFIX) :] for c in self.channels if c.startswith(RULE_PREFIX))
            out.append(rules_condition(sorted(keys)))
        if self.langs is not None:
            out.append(Condition("lang", "in", tuple(sorted(self.langs))))
        if self.authors is not None:
            out.append(Condition("author", "in", tuple(sorted(self.authors))))
        if self.has_media is not None:
            out.append(Condition("has_media", "eq", (self.has_media,)))
        out.extend(Condition("text", "contains", (keyword,)) for keyword in self.keywords)
        return tuple(out)

    def narrowed_by(self, other: TweetFilter) -> TweetFilter:
        """Both filters at once; Forbidden when the client asks outside what is pinned."""
        langs = _intersect(self.langs, other.langs, "lang")
        authors = _intersect(self.authors, other.authors, "author")
        if self.has_media is not None and other.has_media not in (None, self.has_media):
            raise Forbidden("the token pins has_media; it cannot be changed")
        return TweetFilter(
            langs=langs,
            authors=authors,
            has_media=self.has_media if self.has_media is not None else other.has_media,
            keywords=tuple(dict.fromkeys(self.keywords + other.keywords)),
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.langs is not None:
            out["lang"] = sorted(self.langs)
        if self.authors is not None:
            out["author"] = sorted(self.authors)
        if self.has_media is not None:
            out["has_media"] = self.has_media
        if self.keywords:
            out["keyword"] = " ".join(self.keywords)
        return out


def fold(value: Any) -> str:
    """How filters compare names and text: ``str.lower()``; "" for anything not a string."""
    return value.lower() if isinstance(value, str) else ""


def parse_filter(value: Any) -> TweetFilter:
    """Validate a filter object from a client frame or a token claim."""
    if not isinstance(value, Mapping):
        raise BadRequest("filters must be an object")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise BadRequest(f"unknown filter {unknown[0][:40]!r}; known: {', '.join(KEYS)}")
    has_media = value.get("has_media")
    if has_media is not None and not isinstance(has_media, bool):
        raise BadRequest("filter has_media must be true or false")
    keyword = value.get("keyword")
    if keyword is not None and (
        not isinstance(keyword, str) or not keyword.strip() or len(keyword) > 200
    ):
        raise BadRequest("filter keyword must be a non-empty string of at most 200 characters")
    return TweetFilter(
        langs=_names(value.get("lang"), "lang", lower=False),
        authors=_names(value.get("author"), "author", lower=True),
        has_media=has_media,
        keywords=tuple(keyword.lower().split()) if keyword else (),
    )


def _names(value: Any, key: str, *, lower: bool) -> frozenset[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list)
        or not items
        or len(items) > MAX_VALUES
        or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in items)
    ):
        raise BadRequest(f"filter {key} must be a name or a list of 1 to {MAX_VALUES} names")
    return frozenset(i.lower().lstrip("@") if lower else i for i in items)


def _intersect(
    pinned: frozenset[str] | None, asked: frozenset[str] | None, key: str
) -> frozenset[str] | None:
    if pinned is None:
        return asked
    if asked is None:
        return pinned
    both = pinned & asked
    if not both:
        raise Forbidden(f"the token pins {key} to {', '.join(sorted(pinned))}")
    return both
