"""Times as the store and the API write them: one text format that sorts, never raising
on what a payload or a clock gives."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_TIME_LENGTH = 64
"""Longest time text looked at; a longer one is not a time."""
MIN_UNIX = -62135596800.0
"""0001-01-01T00:00:00Z, the first second a ``datetime`` holds."""
MAX_UNIX = 253402300799.0
"""9999-12-31T23:59:59Z, the last one."""
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def normalise_time(value: Any) -> str | None:
    """An X timestamp as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (sorts as text), or None.

    Never raises: anything but an ISO 8601 time that lies between the years 1
    and 9999 once in UTC (``0001-01-01T00:00:00+14:00`` does not) gives None.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_TIME_LENGTH:
        return None
    if _CANONICAL_TIME.fullmatch(value):
        # What X sends, already in the stored form: only whether the date exists is
        # left to check (a fifth of the cost of parsing and formatting it again).
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return None
        return value
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return _format_utc(moment)


_CANONICAL_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", re.ASCII)


def _format_utc(moment: datetime) -> str:
    # Not strftime("%Y"): it does not pad years before 1000 to four digits, and
    # stored times must sort as text.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


def usable_unix(seconds: Any) -> float | None:
    """``seconds`` as a float when it is a finite Unix time between the years 1 and 9999."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return None
    try:
        value = float(seconds)
    except OverflowError:  # an int past the range of a float
        return None
    if not math.isfinite(value) or not MIN_UNIX <= value <= MAX_UNIX:
        return None
    return value


def time_from_unix(seconds: float) -> str:
    """Unix seconds as the store's time text; never raises.

    A time out of range is pinned to its end of the range, NaN reads as 0. Callers
    that can do better (a source with a clock) check :func:`usable_unix` first.
    """
    value = usable_unix(seconds)
    if value is None:
        try:
            value = float(seconds)
        except (TypeError, ValueError, OverflowError):
            value = 0.0
        value = 0.0 if math.isnan(value) else min(max(value, MIN_UNIX), MAX_UNIX)
    return _format_utc(_UNIX_EPOCH + timedelta(seconds=value))


def times_from_unix(seconds: Iterable[float]) -> list[str]:
    """:func:`time_from_unix` of each value, the same text, at about half the cost a
    value: the date and time of day are formatted once per second the values fall in
    (an append's tweets, received milliseconds apart, share a few seconds)."""
    out: list[str] = []
    prefixes: dict[tuple[int, int], str] = {}
    for value in seconds:
        usable = usable_unix(value)
        if usable is None or usable < 0:  # the rare case, taken the slow way
            out.append(time_from_unix(value))
            continue
        since = timedelta(seconds=usable)  # rounds as time_from_unix does
        second = (since.days, since.seconds)
        prefix = prefixes.get(second)
        if prefix is None:
            prefix = prefixes[second] = time_from_unix(since.days * 86400 + since.seconds)[:-4]
        out.append(f"{prefix}{since.microseconds // 1000:03d}Z")
    return out
