"""``relay check``: a full integrity check of a SQLite store, running or not.

A start reads what it must (the schema, the epoch, the newest tweet: see
:func:`relay.store.sqlite.damage.check_head`); a page in the middle of the file is read only
when a client or a query needs it, and a damaged one stops the relay then. This reads
every page now, in one read transaction beside the writer, so damage is found before a
client finds it: ``PRAGMA integrity_check`` (every page, every index against its table)
or, with ``quick``, ``PRAGMA quick_check`` (no index comparison, a few times faster).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from relay.errors import ConfigError, StoreCorrupt
from relay.store.sqlite.damage import check_head
from relay.store.types import Checked

MAX_PROBLEMS = 100
"""Problems listed at most: past a few, the answer (restore a backup) is the same."""


def integrity_check(path: str | Path, *, quick: bool = False) -> Checked:
    """Check every page of the store at ``path`` (read only: nothing is written)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no database at {path}: give the store with --db or RELAY_DB")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open {path}: {exc}") from None
    try:
        try:
            conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        except sqlite3.DatabaseError:
            raise ConfigError(f"{path} is not a tweet-relay database") from None
        problems: list[str] = []
        pages = 0
        try:
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            pragma = "quick_check" if quick else "integrity_check"
            rows = conn.execute(f"PRAGMA {pragma}({MAX_PROBLEMS:d})").fetchall()
            lines = [
                line
                for (text,) in rows
                for line in str(text).splitlines()
                if not line.startswith("*** in database")  # a heading, not a problem
            ]
            problems = [] if lines == ["ok"] else lines
        except sqlite3.DatabaseError as exc:  # too damaged to walk: that is the answer
            problems = [str(exc)]
        if not problems:
            try:
                check_head(conn)
            except (StoreCorrupt, sqlite3.DatabaseError) as exc:
                problems = [str(exc)]
        return Checked(pages, problems)
    finally:
        conn.close()
