"""One writer per SQLite file: an exclusive ``flock`` on a file beside the database.

SQLite itself would let a second process write too, and two writers each keeping
the next seq in memory take the same seq (``UNIQUE constraint failed: tweets.seq``,
the first one dies). The lock is the kernel's: it goes with the process, kill -9
included, so a crashed writer never leaves a stale lock behind. A separate file,
because closing any descriptor of the database file itself would drop SQLite's own
POSIX locks of this process. The holder writes its pid and host into the file, so
the refusal names who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from pathlib import Path

from relay.errors import WriterBusy


def describe_self() -> str:
    return f"process {os.getpid()} on {socket.gethostname()}"


class WriterLock:
    def __init__(self, database: str) -> None:
        self.path = Path(f"{database}-writer.lock")
        self.database = database
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> None:
        """Take the lock or raise :class:`WriterBusy` naming the file and its holder."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WriterBusy(
                f"{self.database} is already written by {holder}: one writer per SQLite file "
                "(stop it, give this one another --db, or read the same file with `relay serve`)"
            ) from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"{describe_self()} since {stamp}\n".encode(), 0)
        self._fd = fd

    def _open(self) -> int:
        """The lock file's descriptor, noting whether this process created the file."""
        while True:  # until one of the two opens wins (the file may come and go between)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                pass
            else:
                self._created = True
                return fd
            try:
                return os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the kernel drops the lock with the descriptor
            self._fd = None

    def abandon(self) -> None:
        """Release the lock of a database refused at open, and remove the lock file if
        this process created it: a file it could not use gets nothing beside it.

        Removed while still held, so no other process locks it in between; one that
        opened it before waits on nothing (its lock is not blocking) and would find the
        same database refused."""
        if self._fd is not None and self._created:
            with contextlib.suppress(OSError):
                self.path.unlink()
        self._created = False
        self.release()
