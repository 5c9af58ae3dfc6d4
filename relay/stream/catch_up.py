"""Catch-up reads: a resume's stored tweets, read from the store in pages and written to
the client as fast as it takes them.

Bounded: a fixed number of store reads at once over every connection, small pages read
only when the client has taken most of what it was sent (the transport's buffer drained
to a quarter of the send buffer), one page read ahead, and ``recovered`` counted up to a
cap. A page is read as ``(seq, body)`` rows and turned into the frames of the session's
transport kind, end to end in one bytes object, where the store reads it
(:meth:`Log.read_bodies` with the kind's page builder): the loop only writes it. A
subscription's filter is tested in the store, over windows of at most ``scan`` seqs: a
filter that matches nothing reads no tweet out; a page read under a filter that a
refresh has since replaced is read again.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING

from relay.errors import SessionClosed

if TYPE_CHECKING:
    from relay.core.filters import TweetFilter
    from relay.obs.metrics import Metrics
    from relay.store import BodyPage, Log, StoredTweet
    from relay.stream.session import Session, Subscription

_Page = tuple["BodyPage[bytes]", int, "TweetFilter | None"]
"""A catch-up page: its frames, the seq the read looked up to, the filter it was read with."""

CATCH_UP_PAGE = 1000
"""Most tweets one catch-up read takes from the store (also bounded in bytes: half
the send buffer), written to the client in one write."""
CATCH_UP_SCAN = 4096
"""Most seqs one filtered catch-up read looks through: a filter that matches little
cannot hold a store reader for a whole scan of the store in one read."""


class CatchUpReader:
    """The store reads of every catch-up of one process, and their bounds."""

    def __init__(
        self,
        store: Log,
        metrics: Metrics,
        *,
        at_once: int = 2,
        recovered_cap: int = 1000,
        scan: int = CATCH_UP_SCAN,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.recovered_cap = recovered_cap
        self.scan = scan
        """Seqs one filtered catch-up read looks through at most."""
        self._reads = asyncio.Semaphore(at_once)
        """Store reads of catch-ups at once, over every connection."""

    async def seq_at(self, moment: float) -> int:
        """Where a rewind to ``moment`` starts (:meth:`Log.seq_at`): the first seq received
        at or after it, or past the store's head."""
        async with self._reads:
            return await self.store.seq_at(moment)

    async def tweets(
        self, sub: Subscription, last: int, head: int, max_bytes: int
    ) -> tuple[list[StoredTweet], int, TweetFilter | None]:
        """One page of the channel's stored tweets after ``last`` with their receive times
        (a paced rewind sends them at their own moments), how far it looked, and the
        filter it was read with; the slot is held for the read only."""
        read_with = sub.filter
        conditions = read_with.conditions() if read_with is not None else ()
        until = min(head, last + self.scan) if conditions else head
        async with self._reads:
            tweets = await self.store.read_after(
                sub.channel,
                last,
                until,
                CATCH_UP_PAGE,
                max_bytes=max_bytes,
                conditions=conditions,
            )
        # A short page under the byte budget holds every match up to until (Log.read_after).
        complete = len(tweets) < CATCH_UP_PAGE and sum(len(t.body) for t in tweets) < max_bytes
        return tweets, until if complete else tweets[-1].seq, read_with

    async def count(self, channel: str, after: int, head: int) -> tuple[int, int]:
        """The oldest seq the store keeps, and how many tweets of ``channel`` it holds
        after ``after`` up to ``head`` (the count stops past :attr:`recovered_cap`)."""
        async with self._reads:
            oldest = await self.store.oldest_seq()
            counted = await self.store.count_after(channel, after, head, cap=self.recovered_cap)
        return oldest, counted

    async def copy(
        self, session: Session, sub: Subscription, last: int, head: int, epoch: str
    ) -> int:
        """Copy the channel's stored tweets ``last < seq <= head`` to the client, paced;
        the seq it copied up to.

        Each page goes out in one write once the client has taken all but a quarter of
        the buffer; the next page is read while the client takes this one, so the client
        never waits for the store (one page ahead: at most the buffer's worth held).
        """
        page_bytes = max(1, session.limit // 2)
        ahead: asyncio.Future[_Page] | None = None
        try:
            while last < head:
                if ahead is None:
                    ahead = asyncio.ensure_future(
                        self._page(session, sub, last, head, epoch, page_bytes)
                    )
                page, until, read_with = await ahead
                ahead = None
                # A complete page holds every match up to until (Log.read_bodies).
                after = until if page.complete else page.last
                if after < head:
                    ahead = asyncio.ensure_future(
                        self._page(session, sub, after, head, epoch, page_bytes)
                    )
                await session.wait_room()
                if session.closed:
                    raise SessionClosed
                if read_with is not sub.filter:
                    # A refresh changed the filter while this page was read or waited for
                    # room: read it again under the filter now in force.
                    if ahead is not None:
                        ahead.cancel()
                        ahead = None
                    continue
                if page.count:
                    # The frames of the page, built by the store's reader, in one write.
                    session.send_page(page.built, page.count, page.last)
                    self.metrics.recovered.inc(page.count)
                last = after
        finally:
            if ahead is not None:
                ahead.cancel()  # a read of a page nobody will send
        return last

    async def _page(
        self,
        session: Session,
        sub: Subscription,
        last: int,
        head: int,
        epoch: str,
        page_bytes: int,
    ) -> _Page:
        """One page of the channel's stored tweets after ``last`` as frames, how far it
        looked, and the filter it was read with."""
        # The filter goes to the store, so tweets it refuses are never read out (the
        # store's conditions mean what TweetFilter.matches means); taken afresh for each
        # page, as a refresh may narrow it.
        read_with = sub.filter
        conditions = read_with.conditions() if read_with is not None else ()
        until = min(head, last + self.scan) if conditions else head
        channel = sub.channel
        async with self._reads:
            page = await self.store.read_bodies(
                channel,
                last,
                until,
                CATCH_UP_PAGE,
                partial(session.transport.framing.page, channel, epoch),
                max_bytes=page_bytes,
                conditions=conditions,
            )
        return page, until, read_with
