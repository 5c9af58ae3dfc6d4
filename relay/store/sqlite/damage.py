"""How the SQLite store tells a damaged file: SQLite's own errors, and rows out of order.

A damaged store never answers a read with less than it holds: each check here raises
:class:`~relay.errors.StoreCorrupt`, which stops the relay (``/readyz`` 503, exit 1)
rather than let a resume skip tweets quietly. ``relay check`` reads the whole file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from relay.errors import StoreCorrupt

T = TypeVar("T")

CORRUPTION_CODES = (11, 26)
"""SQLITE_CORRUPT and SQLITE_NOTADB (primary codes; the extended ones share the low byte)."""


def is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """SQLite found the file damaged ("database disk image is malformed", ...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in CORRUPTION_CODES
    return "malformed" in str(exc)


def checked(path: str, run: Callable[[sqlite3.Connection], T], conn: sqlite3.Connection) -> T:
    """``run(conn)``, with SQLite's corruption errors raised as :class:`StoreCorrupt`."""
    try:
        return run(conn)
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc):
            raise StoreCorrupt(f"the store {path} is damaged: {exc}") from None
        raise


def check_order(path: str, previous: int, seq: int) -> None:
    """Rows of a range come in strictly increasing seq order, or the file is damaged."""
    if seq <= previous:
        raise StoreCorrupt(
            f"the store {path} is damaged: seq {seq} comes after seq {previous} "
            "(rows out of order: run `relay check`)"
        )


def newest_seq(conn: sqlite3.Connection) -> int:
    """The newest tweet's seq (0 when there is none), read with the one before it.

    A damaged last page can make ``max(seq)`` read a row whose seq is garbage (96 in a
    store of 1,500: every serving process would then end its data there). Walking back
    two rows costs the same descent; the two must come out in order.
    """
    rows = conn.execute("SELECT seq FROM tweets ORDER BY seq DESC LIMIT 2").fetchall()
    if len(rows) == 2 and rows[1][0] >= rows[0][0]:
        raise StoreCorrupt(
            f"damaged: seq {rows[1][0]} comes before its newest seq {rows[0][0]} "
            "(rows out of order): run `relay check`"
        )
    return int(rows[0][0]) if rows else 0


def check_head(conn: sqlite3.Connection) -> tuple[int, int]:
    """The highest seq ever given and the newest tweet's, checked against each other at
    open: what a start can check without reading the whole file (``relay check`` does).

    Reading the newest tweets walks the table's pages from its root to its last leaf,
    so a file damaged there fails here, in one line. The newest seq can never be past
    the highest ever given (SQLite raises that with every insert): if it is, that seq is
    damaged, and the writer would go on numbering after it, leaving a hole.
    """
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'tweets'").fetchone()
    given = int(row[0]) if row else 0
    head = newest_seq(conn)
    if head > given:
        raise StoreCorrupt(
            f"damaged: its newest seq {head} is past the highest seq ever given ({given}); "
            "run `relay check`"
        )
    return given, head


def range_end(path: str, seq: int, rows: sqlite3.Cursor) -> None:
    """``seq``, the first row past a read's range, is where the range ends only if it is
    in order with the row after it (or, the last row, no higher than any seq ever
    given): a row with a damaged seq would otherwise end the read early, quietly."""
    following = rows.fetchone()
    if following is not None:
        check_order(path, seq, following[0])
        return
    # Read after the rows' snapshot: a later one can only have given more seqs.
    given = rows.connection.execute(
        "SELECT seq FROM sqlite_sequence WHERE name = 'tweets'"
    ).fetchone()
    if given is not None and seq > given[0]:
        raise StoreCorrupt(
            f"the store {path} is damaged: seq {seq} is past the highest seq ever "
            f"given ({given[0]}): run `relay check`"
        )


def missing(path: str, channel: str, seq: int) -> StoreCorrupt:
    """A row the range (or a query's page) lists that the tweets table does not hold."""
    return StoreCorrupt(
        f"the store {path} is damaged: {channel} lists seq {seq}, which the tweets table "
        "does not hold: run `relay check`"
    )
