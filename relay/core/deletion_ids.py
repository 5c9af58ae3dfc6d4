"""Which tweets a deletion request names: ids on the command line, or the lines of a file
(one id a line, or X compliance output). Pure parsing, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from relay.core.tweets import tweet_id_of


def ids_from_lines(lines: Iterable[str]) -> tuple[list[str], list[str]]:
    """Tweet ids from a file: one id a line, or X compliance output (JSON lines of a batch
    compliance job, ``{"id": ..., "action": "delete"}``, or of the compliance stream,
    ``{"data": {"delete": {"tweet": {"id": ...}}}}``). Returns ``(ids, bad lines)``."""
    ids: list[str] = []
    bad: list[str] = []
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = _id_of(line)
        if found is None:
            bad.append(line[:80])
        elif found:
            ids.append(found)
    return list(dict.fromkeys(ids)), bad


def _id_of(line: str) -> str | None:
    """The id a line asks to delete; "" for a valid line that asks for no deletion."""
    if line.isdigit():
        return tweet_id_of(line)
    if not line.startswith("{"):
        return None
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict):
        return None
    data = event.get("data")
    if isinstance(data, dict):  # the compliance stream: only tweet deletions concern us
        delete = data.get("delete")
        tweet = delete.get("tweet") if isinstance(delete, dict) else None
        if tweet is None:
            return ""
        value = tweet.get("id") if isinstance(tweet, dict) else None
    else:  # a batch compliance job: every action (deleted, suspended, protected...) removes
        value = event.get("id")
    return tweet_id_of(value) if isinstance(value, str) else None


def check_ids(ids: Iterable[str]) -> list[str]:
    """The ids given on the command line, canonical (as the store keeps them), or
    ValueError naming the first bad one. An id is 64 bits: a longer one matches no tweet
    and would only sit in the queue."""
    checked: list[str] = []
    for given in ids:
        tweet_id = tweet_id_of(given)
        if tweet_id is None:
            raise ValueError(f"{given[:40]!r} is not a tweet id (decimal digits, at most 2^64-1)")
        checked.append(tweet_id)
    return list(dict.fromkeys(checked))
