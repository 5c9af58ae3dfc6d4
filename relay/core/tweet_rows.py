"""A batch of parsed tweets as columns: what the parser process hands the store.

Shipping :class:`~relay.core.tweets.Tweet` objects from the parser process cost a
Python call a tweet on each side (pickling through ``__reduce__``, then rebuilding a
frozen dataclass and its rules), and the store's writer then read a dozen attributes a
tweet and encoded its rule keys again. :class:`TweetRows` holds the same values a list
per column, with what the writer would derive (the rule keys, their JSON, the channels)
derived once in the parser: a batch pickles as a few lists of strings and bytes, and the
writer zips the columns into its rows.

It is a ``Sequence[Tweet]`` too: a store or a test that wants objects gets each tweet
rebuilt on demand, equal to the one parsed (without the author object, which nothing
past the parser reads).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import overload

import orjson

from relay.core.tweets import ALL_CHANNEL, JSON, RULE_PREFIX, Rule, Tweet


@dataclass(frozen=True, slots=True)
class RuleColumns:
    """What the store writes for one set of matching rules, derived once per set."""

    rules: tuple[Rule, ...]
    keys: tuple[str, ...]
    """Each rule's channel key (its tag, else its id), in order, repeats kept."""
    unique: tuple[str, ...]
    """The keys without repeats: one ``tweet_rules`` row each."""
    keys_json: str
    """The ``rules`` column: the keys as a JSON array."""
    channels: tuple[str, ...]
    """Every channel a tweet with these rules is published on, ``tweets`` first."""

    @classmethod
    def of(cls, rules: tuple[Rule, ...]) -> RuleColumns:
        keys = tuple([rule.tag or rule.id for rule in rules])
        unique = tuple(dict.fromkeys(keys))
        channels = (ALL_CHANNEL, *[RULE_PREFIX + key for key in unique])
        return cls(rules, keys, unique, orjson.dumps(keys).decode(), channels)


_RULE_COLUMNS: dict[tuple[Rule, ...], RuleColumns] = {}
_MAX_RULE_SETS = 4096


def rule_columns(rules: tuple[Rule, ...]) -> RuleColumns:
    """The :class:`RuleColumns` of a set of rules: a stream has few distinct sets, so each
    is derived once (and, the same object, pickled once a batch)."""
    found = _RULE_COLUMNS.get(rules)
    if found is None:
        if len(_RULE_COLUMNS) >= _MAX_RULE_SETS:  # a stream of ever new rules: start over
            _RULE_COLUMNS.clear()
        found = _RULE_COLUMNS[rules] = RuleColumns.of(rules)
    return found


@dataclass(slots=True)
class TweetRows(Sequence[Tweet]):
    """Tweets as columns; the i-th entry of every list is the i-th tweet."""

    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    author_ids: list[str | None] = field(default_factory=list)
    usernames: list[str | None] = field(default_factory=list)
    langs: list[str | None] = field(default_factory=list)
    created: list[str | None] = field(default_factory=list)
    """The normalised ``created_at``, None when the tweet had no usable one."""
    media: list[bool] = field(default_factory=list)
    rules: list[RuleColumns] = field(default_factory=list)
    encoded: list[bytes] = field(default_factory=list)
    """The object as served (:attr:`Tweet.encoded`)."""
    objects: list[JSON | None] = field(default_factory=list)
    """The decoded object when the store cannot append its fields to ``encoded`` (it
    holds one of them already, or could not be encoded): the writer encodes it again.
    None for every other tweet (nearly all): no dict crosses the process boundary."""

    @classmethod
    def of(cls, tweets: Iterable[Tweet]) -> TweetRows:
        """The columns of ``tweets`` (a :class:`TweetRows` is returned as it is)."""
        if isinstance(tweets, TweetRows):
            return tweets
        rows = cls()
        for tweet in tweets:
            rows.add(tweet)
        return rows

    def add(self, tweet: Tweet) -> None:
        self.ids.append(tweet.id)
        self.texts.append(tweet.text)
        self.author_ids.append(tweet.author_id)
        self.usernames.append(tweet.author_username)
        self.langs.append(tweet.lang)
        self.created.append(tweet.created_at)
        self.media.append(tweet.has_media)
        self.rules.append(rule_columns(tweet.rules))
        self.encoded.append(tweet.encoded)
        self.objects.append(None if tweet.appendable else tweet.object)

    def extend(self, other: TweetRows) -> None:
        for name in _COLUMNS:
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.ids)

    @overload
    def __getitem__(self, index: int) -> Tweet: ...

    @overload
    def __getitem__(self, index: slice) -> TweetRows: ...

    def __getitem__(self, index: int | slice) -> Tweet | TweetRows:
        if isinstance(index, slice):
            part = TweetRows()
            for name in _COLUMNS:
                setattr(part, name, getattr(self, name)[index])
            return part
        decoded = self.objects[index]
        return Tweet(
            id=self.ids[index],
            text=self.texts[index],
            author_id=self.author_ids[index],
            author=None,
            lang=self.langs[index],
            created_at=self.created[index],
            rules=self.rules[index].rules,
            has_media=self.media[index],
            encoded=self.encoded[index],
            author_username=self.usernames[index],
            appendable=decoded is None,
            decoded=decoded,
        )

    def __iter__(self) -> Iterator[Tweet]:
        for index in range(len(self.ids)):
            yield self[index]


_COLUMNS = tuple(column.name for column in fields(TweetRows))
