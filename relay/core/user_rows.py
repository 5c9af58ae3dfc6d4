"""A batch's users as the rows a store upserts, built where the batch is parsed.

The store's writer built each user's stored object (a copy of the dict, its times, one
encoding) inside the relay's busiest process, a seventh of the time it held the GIL at
full speed. The parser process has each line's receive time as text, so it builds the
rows there: :class:`UserRows` carries them across and is still the ``Sequence`` of user
dicts a store takes (each dict decoded again on demand, for a store that builds its own
rows, such as PostgreSQL's).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import orjson

from relay.core.times import MAX_TIME_LENGTH, normalise_time
from relay.core.tweets import JSON, display_name_of, username_of

UserRow = tuple[str, str | None, str | None, bytes, str]
"""A user as a store keeps it: id, username, display name, the stored object encoded,
and when it was received (store time text). A plain tuple: it crosses the parser
process's pipe as it is."""


def stored_user(user: Mapping[str, Any], received: str) -> dict[str, Any]:
    """The object a store keeps for ``user`` received at ``received`` (store time text)."""
    obj = dict(user)
    obj["objectType"] = "objects.users"
    created = user.get("created_at")
    obj["createdAt"] = (
        # Only short text is remembered: a hostile megabyte "time" is not kept.
        _normalised(created)
        if isinstance(created, str) and len(created) <= MAX_TIME_LENGTH
        else normalise_time(created)
    ) or received
    obj["updatedAt"] = received
    return obj


def user_row(user: Mapping[str, Any], received: str) -> UserRow | None:
    """The row of ``user``; None when it has no text id (no user). Raises what encoding
    raises (TypeError, ValueError) for a value JSON cannot hold."""
    user_id = user.get("id")
    if not isinstance(user_id, str):  # parse gives ids as text; anything else is no user
        return None
    obj = orjson.dumps(stored_user(user, received))
    return (user_id, username_of(user), display_name_of(user), obj, received)


@functools.lru_cache(maxsize=8192)
def _normalised(value: str) -> str | None:
    """normalise_time for a user's created_at: the same few authors come back batch
    after batch, and checking a time is a third of building their row."""
    return normalise_time(value)


@dataclass(slots=True)
class UserRows(Sequence[JSON]):
    """Users as their rows; as a sequence, each user's stored object decoded."""

    rows: list[UserRow] = field(default_factory=list)

    @classmethod
    def of(cls, users: Sequence[Mapping[str, Any]], times: Sequence[str]) -> UserRows | None:
        """The rows of ``users``, each received at its time; None when one cannot be
        encoded (the store then builds them, leaving out what fails)."""
        try:
            rows = [user_row(user, text) for user, text in zip(users, times, strict=True)]
        except (TypeError, ValueError, OverflowError):
            return None
        return cls([row for row in rows if row is not None])

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> JSON: ...

    @overload
    def __getitem__(self, index: slice) -> UserRows: ...

    def __getitem__(self, index: int | slice) -> JSON | UserRows:
        if isinstance(index, slice):
            return UserRows(self.rows[index])
        user: JSON = orjson.loads(self.rows[index][3])
        return user

    def __iter__(self) -> Iterator[JSON]:
        for row in self.rows:
            yield orjson.loads(row[3])
