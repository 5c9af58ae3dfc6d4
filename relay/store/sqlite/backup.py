"""A consistent copy of a SQLite store while the relay writes to it.

SQLite's online backup API copies every page inside one read transaction: in WAL mode
the writer goes on meanwhile, and the copy is the store as of one commit. The copy
gets a new epoch: a store restored from it holds fewer tweets than clients have seen,
so seqs they resume from would name other tweets; a new epoch makes them reset.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path

from relay.errors import ConfigError, StoreError
from relay.store.types import Backup


def backup(source: str | Path, target: str | Path) -> Backup:
    """Copy the store at ``source`` to ``target`` (replaced only once complete)."""
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise ConfigError(f"no database at {source}: give the store with --db or RELAY_DB")
    if target.resolve() == source.resolve():
        raise ConfigError("the backup must go to another file than the store itself")
    if not target.parent.is_dir():
        raise ConfigError(f"cannot write {target}: no folder {target.parent}")
    partial = target.with_name(target.name + ".part")
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {source}: {exc}") from None
    try:
        try:
            src.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        except sqlite3.DatabaseError:
            raise ConfigError(f"{source} is not a tweet-relay database") from None
        partial.unlink(missing_ok=True)
        dst = sqlite3.connect(partial)
        try:
            src.backup(dst)  # every page in one step: one snapshot, never restarted
            epoch = secrets.token_hex(8)
            with dst:
                dst.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
            counted = "SELECT count(*), coalesce(max(seq), 0) FROM tweets"
            tweets, head = dst.execute(counted).fetchone()
        finally:
            dst.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise StoreError(f"backup of {source} failed: {exc}") from None
    finally:
        src.close()
    os.replace(partial, target)
    return Backup(target, int(tweets), int(head), epoch)


def new_epoch(path: str | Path) -> str:
    """Give the store at ``path`` a new epoch (after restoring it by hand); returns it."""
    epoch = secrets.token_hex(8)
    conn = sqlite3.connect(path)
    try:
        with conn:
            changed = conn.execute("UPDATE meta SET value = ? WHERE key = 'epoch'", (epoch,))
        if changed.rowcount != 1:
            raise StoreError(f"{path} has no epoch: not a tweet-relay database")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot set a new epoch in {path}: {exc}") from None
    finally:
        conn.close()
    return epoch
