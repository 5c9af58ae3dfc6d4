"""Bus entries on a Redis stream: what one holds, as bytes in and items out (no I/O).

::

    tweet      id {seq}-0   body  the stored body, as the store encoded it
                            meta  JSON {"channels", "lang", "author", "has_media", "text",
                                  "received"}
    heartbeat  id {head}-N  head  the head seq, in decimal (N: Redis numbers
                                  heartbeats of one head 0, 1, 2...)

The id of a tweet's entry is its seq, so a hole in the stream is a hole in the
seqs and Redis itself refuses a re-publish (an id must be above the top). The
meta field holds exactly what subscription filters read, so a serving process
never decodes a body.
"""

from __future__ import annotations

from typing import Any

import orjson

from relay.bus import BusItem, Heartbeat
from relay.errors import MalformedEntry
from relay.store import StoredTweet

EntryId = tuple[int, int]


def encode_heartbeat(head: int) -> dict[bytes, bytes]:
    return {b"head": str(head).encode()}


def encode_tweet(tweet: StoredTweet) -> dict[bytes, bytes]:
    """The fields of a tweet's entry: the body as stored, and what filters look at."""
    meta = {
        "channels": tweet.channels,
        "lang": tweet.lang,
        "author": tweet.author,
        "has_media": tweet.has_media,
        "text": tweet.text,
        "received": tweet.received,
    }
    return {b"body": tweet.body, b"meta": orjson.dumps(meta)}


def _optional_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise MalformedEntry("lang and author must be strings or null")


def decode_entry(entry_id: bytes, fields: dict[bytes, bytes] | None) -> BusItem:
    """The tweet or heartbeat an entry holds; raises :class:`MalformedEntry` otherwise."""
    ms, n = parse_id(entry_id)
    if not isinstance(fields, dict):
        raise MalformedEntry("no fields")
    if b"head" in fields:
        if len(fields) != 1:
            raise MalformedEntry("a heartbeat holds only its head")
        try:
            head = int(fields[b"head"])
        except ValueError:
            raise MalformedEntry("the head is not a number") from None
        if head != ms:
            raise MalformedEntry(f"the head {head} is not the id's {ms}")
        return Heartbeat(head)
    if fields.keys() != {b"body", b"meta"}:
        raise MalformedEntry(f"unknown fields {sorted(fields)[:4]}")
    if n != 0 or ms <= 0:
        raise MalformedEntry("a tweet's id is {seq}-0")
    try:
        meta = orjson.loads(fields[b"meta"])
    except orjson.JSONDecodeError:
        raise MalformedEntry("meta is not JSON") from None
    if not isinstance(meta, dict):
        raise MalformedEntry("meta is not an object")
    channels = meta.get("channels")
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise MalformedEntry("channels must be a list of strings")
    has_media, text = meta.get("has_media"), meta.get("text")
    if not isinstance(has_media, bool) or not isinstance(text, str):
        raise MalformedEntry("has_media must be a boolean and text a string")
    return StoredTweet(
        seq=ms,
        channels=tuple(channels),
        body=fields[b"body"],
        lang=_optional_str(meta.get("lang")),
        author=_optional_str(meta.get("author")),
        has_media=has_media,
        text=text,
        received=_received(meta.get("received", 0.0)),
    )


def _received(value: Any) -> float:
    """The receive time is for the latency metric only: a bad one is 0 (unknown)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    return 0.0


def parse_id(entry_id: bytes | str) -> EntryId:
    text = entry_id.decode("ascii", "replace") if isinstance(entry_id, bytes) else entry_id
    ms, sep, n = text.partition("-")
    if not (sep and ms.isdigit() and n.isdigit()):
        raise MalformedEntry(f"bad entry id {text[:40]!r}")
    return int(ms), int(n)
