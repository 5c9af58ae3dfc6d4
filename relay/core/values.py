"""Setting values read from text (flags, environment, TOML): speeds, booleans, channel
patterns, times and durations. Pure: each parser raises ValueError saying what is wrong."""

from __future__ import annotations

from datetime import datetime
from typing import Any

SPEED_MAX = 0.0
"""``speed`` value meaning "as fast as possible" (``--speed max``)."""


def parse_speed(value: Any) -> float:
    if isinstance(value, str) and value.strip().lower() == "max":
        return SPEED_MAX
    speed = float(value)
    if speed <= 0:
        raise ValueError("speed must be > 0 or 'max'")
    return speed


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_patterns(value: Any) -> tuple[str, ...]:
    """Channel patterns from a TOML list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a list of channel patterns")
    return tuple(item.strip() for item in items if item.strip())


def parse_time(value: Any) -> float:
    """An absolute time: unix seconds, or ISO 8601 with a zone (``2026-12-01T12:00:00Z``)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    else:
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError("expected unix seconds or an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError("an ISO 8601 time needs a zone (Z or +00:00), so no host guesses it")
    return moment.timestamp()


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """Seconds, from a number or a string with a unit: ``90s``, ``30m``, ``12h``, ``7d``."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    text = str(value).strip().lower()
    factor = _DURATION_UNITS.get(text[-1:], 0.0)
    seconds = float(text[:-1] if factor else text) * (factor or 1.0)
    if not 0 <= seconds < float("inf"):
        raise ValueError("a duration is 0 or more seconds")
    return seconds


def parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("not an integer")
    return int(value)


def parse_origins(value: Any) -> tuple[str, ...]:
    """Web origins from a TOML list or a comma-separated string: ``*`` (any origin) or
    each ``scheme://host[:port]`` as a browser sends it in ``Origin``; empty: none."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a list of origins")
    origins = tuple(item.strip().rstrip("/") for item in items if item.strip())
    for origin in origins:
        scheme, sep, host = origin.partition("://")
        if origin != "*" and (
            not sep or scheme not in ("http", "https") or not host or "/" in host
        ):
            raise ValueError(
                f"an origin is '*' or scheme://host[:port] with no path, got {origin[:60]!r}"
            )
    if "*" in origins and len(origins) > 1:
        raise ValueError("'*' already allows every origin: list origins or '*', not both")
    return origins
