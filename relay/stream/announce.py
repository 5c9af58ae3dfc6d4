"""The deletion announcer: a serving process sends ``deleted`` frames for what the
active writer removed (the record ``relay.jobs.deletions`` keeps in the store).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.core import protocol

if TYPE_CHECKING:
    from relay.store import Log
    from relay.stream.hub import Hub


RECORD_PAGE = 500
"""Record entries read per store query."""


class DeletionAnnouncer:
    """A serving process's job: ``deleted`` frames for what the writer removed."""

    def __init__(self, store: Log, hub: Hub) -> None:
        self.store = store
        self.hub = hub
        self.after: int | None = None
        """The last record entry announced; None until the first run, which starts at
        the record's end: a process announces what is deleted while it serves."""

    async def run(self) -> int:
        if self.after is None:
            self.after = await self.store.last_deletion()
            return 0
        sent = 0
        while True:
            record = await self.store.deletions_after(self.after, RECORD_PAGE)
            for entry in record:
                for channel in entry.channels:
                    sent += self.hub.announce(
                        channel,
                        protocol.deleted(channel, entry.tweet_id, entry.seq),
                        on=entry.channels,
                    )
                self.after = entry.n
            if len(record) < RECORD_PAGE:
                return sent
