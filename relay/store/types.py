"""Types every store shares, whichever database holds it: what the roles take and give."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from relay.core.times import times_from_unix
from relay.core.tweets import ALL_CHANNEL, RULE_PREFIX

if TYPE_CHECKING:
    from relay.core.tweets import Tweet

T = TypeVar("T")


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
    received: float = 0.0
    """When its line was received (unix seconds, to the millisecond once stored; 0 when
    not known): the delivery latency metric measures from here, a paced rewind keeps the
    gaps between them."""

    @classmethod
    def written(
        cls,
        seq: int,
        tweet: Tweet,
        body: bytes,
        received_at: float,
        channels: tuple[str, ...] | None = None,
    ) -> StoredTweet:
        """``tweet`` as an append stored it under ``seq`` (``channels``: its
        :attr:`~relay.core.tweets.Tweet.channels`, when the writer has them at hand)."""
        return cls(
            seq,
            tweet.channels if channels is None else channels,
            body,
            tweet.lang,
            tweet.author_username,
            tweet.has_media,
            tweet.text,
            received_at,
        )

    @classmethod
    def read(
        cls,
        seq: int,
        rule_keys: Iterable[str],
        body: bytes,
        lang: str | None,
        author: str | None,
        has_media: bool,
        text: str,
        received: float,
    ) -> StoredTweet:
        """A stored tweet as a range read gives it back."""
        channels = (ALL_CHANNEL, *(RULE_PREFIX + key for key in rule_keys))
        return cls(seq, channels, body, lang, author, has_media, text, received)


StoredBody = tuple[int, bytes]
"""A stored tweet's seq and its served object: all a catch-up sends (a plain tuple, the
row as the database gives it, so a page of them costs no object a tweet)."""


@dataclass(frozen=True, slots=True)
class BodyPage(Generic[T]):
    """One :meth:`~relay.store.Log.read_bodies` read: what its ``build`` made of the rows,
    and where the read stopped."""

    built: T
    count: int
    """Rows read."""
    last: int
    """The seq of the last row read; 0 when none."""
    complete: bool
    """Neither ``limit`` nor ``max_bytes`` cut the read: no match is left up to ``until``."""


@dataclass(frozen=True, slots=True)
class Received:
    """When each tweet and each user of an append was received (unix seconds): the time
    of the line each came in (for a user met twice, the last one), in the order
    :meth:`~relay.store.Writer.append` takes them.

    What keeps a batch from changing what is stored: a tweet's ``received_at`` (and a
    user's ``updatedAt``) is its own line's, whichever lines happened to share its batch.
    """

    tweets: Sequence[float]
    users: Sequence[float]
    tweet_texts: Sequence[str] | None = None
    """The same times as the store's text, when already formatted (by the parser
    process, beside the relay's busy process); else :meth:`tweet_times` formats them."""
    user_texts: Sequence[str] | None = None

    def tweet_times(self) -> Sequence[str]:
        """Each tweet's time as the store's text."""
        if self.tweet_texts is not None:
            return self.tweet_texts
        return times_from_unix(self.tweets)

    def user_times(self) -> Sequence[str]:
        """Each user's time as the store's text."""
        if self.user_texts is not None:
            return self.user_texts
        return times_from_unix(self.users)

    @classmethod
    def of(cls, received_at: float | Received, tweets: int, users: int) -> Received:
        """``received_at`` as one time for each: a single time stands for all of them."""
        if isinstance(received_at, Received):
            if len(received_at.tweets) != tweets or len(received_at.users) != users:
                raise ValueError(
                    f"{len(received_at.tweets)} tweet and {len(received_at.users)} user "
                    f"receive times for {tweets} tweets and {users} users"
                )
            return received_at
        return cls([received_at] * tweets, [received_at] * users)


@dataclass(frozen=True, slots=True)
class AppendResult:
    stored: list[StoredTweet]
    duplicates: int
    unstorable: tuple[tuple[str, str], ...] = ()
    """``(tweet id, why)`` of each tweet the store could not hold (skipped, not retried)."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What /v1/stats and retention need to know of the store as a whole."""

    size_bytes: int
    """On disk: the SQLite file with its WAL, the PostgreSQL database."""
    oldest_seq: int
    """The seq of the oldest kept tweet, 0 when empty (history starts there)."""
    oldest_received_at: float | None
    """When the oldest kept tweet was received (unix seconds), None when empty."""
    wal_bytes: int = 0
    """Of ``size_bytes``, the SQLite write-ahead log (kept small when idle); 0 elsewhere."""


@dataclass(frozen=True, slots=True)
class Trimmed:
    """What one retention step deleted."""

    deleted: int
    oldest_seq: int
    """The oldest kept seq afterwards (history starts there); 0 when empty."""


@dataclass(frozen=True, slots=True)
class Deleted:
    """One applied request: ``seq`` 0 and no channels when the store did not hold it."""

    n: int
    """Its place in the record (increasing)."""
    tweet_id: str
    seq: int
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Migrated:
    """What ``relay migrate`` did."""

    version: int
    """The schema version the store is at now."""
    new_epoch: str = ""
    """The epoch it was given, when asked for one."""


@dataclass(frozen=True, slots=True)
class Backup:
    path: Path
    tweets: int
    head: int
    epoch: str
    """The copy's epoch (new): what clients see after a restore from it."""


@dataclass(frozen=True, slots=True)
class Checked:
    pages: int
    problems: list[str]
    """SQLite's lines (and the relay's own check of the newest seq); empty when intact."""


@dataclass(frozen=True, slots=True)
class RestoredTweet:
    """One tweet of a restore (``relay restore``): stored under the seq and the receive
    time it had, not the next ones."""

    seq: int
    received_at: float
    """Unix seconds, to the millisecond (as the store keeps it)."""
    tweet: Tweet
    body: bytes = b""
    """The stored object as it goes in, when the caller has it (an archive's line for this
    very seq and receive time: no need to encode the tweet again); empty: built from
    ``tweet``."""


@dataclass(frozen=True, slots=True)
class RestoreBatch:
    """Tweets in increasing seq order and the users they hold, with the state to keep;
    the last batch of a restore also gives the store its new epoch: one transaction."""

    tweets: Sequence[RestoredTweet]
    users: Sequence[dict[str, Any]] = ()
    state: Mapping[str, str] = field(default_factory=dict)
    """Keys of the writer's state (:meth:`relay.store.Writer.set_state`) to set."""
    epoch: str = ""
    """The store's new epoch, when given."""


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore did."""

    tweets: int
    head: int
    """The highest seq restored (0 when none)."""
    epoch: str
    """The store's epoch now (new): clients reset instead of resuming."""
