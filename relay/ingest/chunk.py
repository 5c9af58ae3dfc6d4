"""A batch of source lines parsed: what it held (:class:`ParsedChunk`), the one parsing
step (:func:`parse_chunk`), and its form across the parser process's pipes.

The form is :mod:`marshal`'s over plain values (the parser process runs the same
interpreter): the tweets as their columns (:class:`~relay.core.tweet_rows.TweetRows`),
each distinct set of rules once with an index a tweet, the users and API errors as the
JSON values they are. Pickling the same chunk cost about 4.3 µs a line in the parser
process and 3.5 µs to read back on the relay's event loop; this form 3.2 and 1.7
(20,000 synthetic lines, batches of 500).
"""

from __future__ import annotations

import marshal
from collections.abc import Sequence
from dataclasses import dataclass, field

from relay.core.stored import parse_stored
from relay.core.times import times_from_unix
from relay.core.tweet_rows import RuleColumns, TweetRows, rule_columns
from relay.core.tweets import JSON, Rule, Skip, parse_line
from relay.core.user_rows import UserRows
from relay.errors import MalformedPayload


@dataclass(slots=True)
class ParsedChunk:
    """What a batch of lines held, with the per-line outcomes ingest counts and logs."""

    tweets: TweetRows = field(default_factory=TweetRows)
    """As columns, ready for the store: a batch crosses from a parser process as a few
    lists, not an object a tweet."""
    tweet_lines: list[int] = field(default_factory=list)
    """The index in the batch of the line each tweet came in: whose receive time it keeps."""
    users: list[JSON] | UserRows = field(default_factory=list)
    """Included users with a text id, the last one of each id (the one the store keeps),
    in the place of its first (where the store would have met it a line at a time); as
    the rows the store upserts when the lines' times were given."""
    user_lines: list[int] = field(default_factory=list)
    """The index of the line each user last came in."""
    tweet_times: list[str] = field(default_factory=list)
    """Each tweet's receive time as the store's text, when the lines' times were given
    (formatted in the parser process, off the relay's busy process); else empty."""
    user_times: list[str] = field(default_factory=list)
    """Each user's, likewise."""
    payloads: int = 0
    keepalives: int = 0
    malformed: list[tuple[int, str, str]] = field(default_factory=list)
    """(index of the line in the batch, reason, detail) for each line that was no payload."""
    skipped: list[Skip] = field(default_factory=list)
    api_errors: list[JSON] = field(default_factory=list)


def parse_chunk(
    lines: Sequence[bytes], stored: bool = False, times: Sequence[float] | None = None
) -> ParsedChunk:
    """Parse every line (``stored``: each a stored tweet object, from an archive); a bad
    line is recorded in the result, never raised. ``times``, each line's receive time,
    are formatted as the store's text for its tweets and users."""
    chunk = ParsedChunk()
    users: dict[str, tuple[JSON, int]] = {}
    parse = parse_stored if stored else parse_line
    for index, line in enumerate(lines):
        try:
            parsed = parse(line)
        except MalformedPayload as exc:
            chunk.malformed.append((index, exc.reason, str(exc)))
            continue
        except Exception as exc:  # a parser bug must cost one line, not the batch
            chunk.malformed.append((index, "parse_error", f"{type(exc).__name__}: {exc}"))
            continue
        if parsed.keepalive:
            chunk.keepalives += 1
            continue
        chunk.payloads += 1
        chunk.skipped.extend(parsed.skipped)
        chunk.api_errors.extend(parsed.api_errors)
        for tweet in parsed.tweets:
            chunk.tweets.add(tweet)
        chunk.tweet_lines.extend([index] * len(parsed.tweets))
        for user in parsed.users:
            user_id = user.get("id")
            if isinstance(user_id, str):  # parse gives usable ids as text; others are no user
                users[user_id] = (user, index)  # the last one stands, in the first's place
    chunk.users = [user for user, _ in users.values()]
    chunk.user_lines = [index for _, index in users.values()]
    if times is not None:
        texts = times_from_unix(times)
        chunk.tweet_times = [texts[index] for index in chunk.tweet_lines]
        chunk.user_times = [texts[index] for index in chunk.user_lines]
        chunk.users = UserRows.of(chunk.users, chunk.user_times) or chunk.users
    return chunk


def encode_lines(
    lines: Sequence[bytes], stored: bool, times: Sequence[float] | None = None
) -> bytes:
    """A request to a parser process: the batch's lines, how to parse them, and each
    line's receive time (if known)."""
    return marshal.dumps((stored, list(lines), None if times is None else list(times)))


def decode_lines(data: bytes) -> tuple[bool, list[bytes], list[float] | None]:
    stored, lines, times = marshal.loads(data)
    return bool(stored), lines, times


def encode_chunk(chunk: ParsedChunk) -> bytes:
    """The chunk as bytes for :func:`decode_chunk`; raises ValueError when a value cannot
    go (nested past marshal's depth): the relay then parses that batch itself."""
    tweets = chunk.tweets
    rule_sets: dict[int, int] = {}
    distinct: list[tuple[tuple[str, str], ...]] = []
    indexes: list[int] = []
    for columns in tweets.rules:
        index = rule_sets.get(id(columns))
        if index is None:
            index = rule_sets[id(columns)] = len(distinct)
            distinct.append(tuple([(rule.id, rule.tag) for rule in columns.rules]))
        indexes.append(index)
    return marshal.dumps(
        (
            tweets.ids,
            tweets.texts,
            tweets.author_ids,
            tweets.usernames,
            tweets.langs,
            tweets.created,
            tweets.media,
            distinct,
            indexes,
            tweets.encoded,
            tweets.objects,
            chunk.tweet_lines,
            chunk.users.rows if isinstance(chunk.users, UserRows) else None,
            None if isinstance(chunk.users, UserRows) else chunk.users,
            chunk.user_lines,
            chunk.tweet_times,
            chunk.user_times,
            chunk.payloads,
            chunk.keepalives,
            chunk.malformed,
            [(skip.reason, skip.detail) for skip in chunk.skipped],
            chunk.api_errors,
        )
    )


def decode_chunk(data: bytes | None) -> ParsedChunk:
    """The chunk :func:`encode_chunk` sent; ValueError when the parser process sent none."""
    if not data:
        raise ValueError("the parser process could not send this batch back")
    (
        ids,
        texts,
        author_ids,
        usernames,
        langs,
        created,
        media,
        distinct,
        indexes,
        encoded,
        objects,
        tweet_lines,
        user_rows,
        users,
        user_lines,
        tweet_times,
        user_times,
        payloads,
        keepalives,
        malformed,
        skipped,
        api_errors,
    ) = marshal.loads(data)
    rule_sets: list[RuleColumns] = [
        rule_columns(tuple([Rule(rule_id, tag) for rule_id, tag in pairs])) for pairs in distinct
    ]
    tweets = TweetRows(
        ids,
        texts,
        author_ids,
        usernames,
        langs,
        created,
        media,
        [rule_sets[index] for index in indexes],
        encoded,
        objects,
    )
    return ParsedChunk(
        tweets,
        tweet_lines,
        users if user_rows is None else UserRows(user_rows),
        user_lines,
        tweet_times,
        user_times,
        payloads,
        keepalives,
        [tuple(entry) for entry in malformed],
        [Skip(reason, detail) for reason, detail in skipped],
        api_errors,
    )
