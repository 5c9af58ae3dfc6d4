"""What the testing kit raises: ``AssertionError``s, so a test runner reports a failed
test, not a crash, and says what was waited for or what came instead."""

from __future__ import annotations

from typing import Any


class RelayServerError(AssertionError):
    """A relay that did not start, failed, or did not get somewhere in time."""


class RelayClientError(AssertionError):
    """An error frame, a closed connection, or a frame that did not come in time."""

    def __init__(
        self, message: str, frame: dict[str, Any] | None = None, code: int | None = None
    ) -> None:
        super().__init__(message)
        self.frame = frame
        """The error frame, when the server sent one."""
        self.code = code
        """The close code, when the connection closed."""
