"""The revocation list: token ids (``jti``) the relay refuses, read from a file it watches.

The file holds one ``jti`` a line; ``#`` starts a comment, blank lines are ignored. It is
read at start and read again whenever its size, modification time or inode changes,
checked every ``revoked_tokens_interval`` seconds. A file that does not exist yet is an
empty list, watched like any other: the first revocation may create it (``echo ID >>
revoked.txt``). A file that exists but cannot be read, or a folder that does not exist (a
typo would otherwise be a list that never revokes anything), stops the start with one
line. A file that goes missing or unreadable later keeps the last good list, with one
warning until it is readable again: a half-written or deleted file must never un-revoke a
token.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from relay.errors import ConfigError

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 16 << 20
"""A list larger than this (about 700,000 ids) is refused as a mistake, not loaded."""


def parse_revoked(text: str) -> frozenset[str]:
    """The token ids in a revocation list's text."""
    ids = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return frozenset(token_id for token_id in ids if token_id)


class RevocationList:
    """The revoked ids of one file, kept current by :meth:`check` (called by :meth:`watch`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ids: frozenset[str] = frozenset()
        self._seen: tuple[int, int, int] | None = None
        self._warned = False

    @classmethod
    def open(cls, path: str | Path) -> RevocationList:
        """Read the list at start; ConfigError (one line, exit 2) when it cannot be read.
        A file not there yet in a folder that is reads as an empty list."""
        revocations = cls(path)
        try:
            revocations._read()
        except FileNotFoundError:
            if not revocations.path.parent.is_dir():
                raise ConfigError(
                    f"cannot read the revocation list {path}: its folder does not exist"
                ) from None
            log.info("revocation list %s does not exist yet: no token id revoked", path)
            return revocations
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"cannot read the revocation list {path}: {_why(exc)}") from None
        log.info("revocation list %s: %d token id(s)", path, len(revocations.ids))
        return revocations

    @property
    def stale(self) -> bool:
        """The file could not be read at the last check: the list is the last good one."""
        return self._warned

    def __contains__(self, token_id: object) -> bool:
        return token_id in self.ids

    def check(self) -> bool:
        """Read the file again if it changed; whether the list changed."""
        try:
            before = self.ids
            self._read()
        except FileNotFoundError as exc:
            if self._seen is None:
                return False  # not created yet: the empty list it was stays right
            return self._unreadable(exc)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return self._unreadable(exc)
        if self._warned:
            log.info("revocation list %s readable again", self.path)
            self._warned = False
        if self.ids != before:
            log.info("revocation list %s: %d token id(s)", self.path, len(self.ids))
            return True
        return False

    def _unreadable(self, exc: Exception) -> bool:
        """Keep the last good list; warn once until the file is readable again."""
        if not self._warned:
            log.warning(
                "revocation list %s unreadable (%s): keeping the last %d id(s)",
                self.path,
                _why(exc),
                len(self.ids),
            )
            self._warned = True
        return False

    async def watch(
        self, interval: float, on_change: Callable[[frozenset[str]], Awaitable[object]]
    ) -> None:
        """Check every ``interval`` seconds, forever; await ``on_change`` with the new ids."""
        while True:
            await asyncio.sleep(interval)
            # A stat and a small read; off the loop all the same, a slow disk must not stall it.
            if await asyncio.to_thread(self.check):
                await on_change(self.ids)

    def _read(self) -> None:
        stat = os.stat(self.path)
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen == self._seen:
            return
        if stat.st_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        self.ids = parse_revoked(self.path.read_text(encoding="utf-8"))
        self._seen = seen


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(exc)
