"""A paced rewind: the stored tweets after a moment, sent at ``pace`` times the pace at
which the relay received them, then live once the replay has caught up with the head.

A wall display that re-lives the last hour at ``pace`` 4 shows it in 15 minutes and then
goes on live. Each tweet goes out when its turn comes: the first at once, each next one
when the time between their receive times, divided by ``pace``, has passed since the
first (a receive time before the one sent last: at once; tweets always go in seq order).
Tweets due together go out in one write.

The replay waits holding nothing: no store read slot (a page is read under one of the
catch-up reader's slots, then the slot is free while the page's tweets wait their time),
and not its connection's catch-up turn (taken for each read only), so other catch-ups,
of this connection or others, go on meanwhile. A page is at most the catch-up's page
(1,000 tweets, half the send buffer of bodies). Tweets the hub publishes meanwhile are
held by the session as during any catch-up (and dropped past its bound: they are read
from the store when their turn comes); the replay goes on past the head it started
from, and goes live when it has sent everything up to the hub's head: no gap, no
duplicate. An unsubscribe or the end of the session cancels it where it waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from relay.errors import SessionClosed

if TYPE_CHECKING:
    from relay.core.filters import TweetFilter
    from relay.store import StoredTweet
    from relay.stream.catch_up import CatchUpReader
    from relay.stream.session import Session, Subscription


async def replay_paced(
    reader: CatchUpReader,
    session: Session,
    sub: Subscription,
    last: int,
    epoch: str,
    pace: float,
    head: Callable[[], int],
) -> int:
    """Send the channel's stored tweets after ``last`` at ``pace`` times their recorded
    pace until every tweet up to ``head()`` (the hub's last published seq) has gone; the
    seq it sent up to, from where the subscription goes live."""
    clock = asyncio.get_running_loop().time
    origin: tuple[float, float] | None = None
    """(loop time, receive time) of the first tweet sent: the others are due from there."""
    page_bytes = max(1, session.limit // 2)
    while last < (until := head()):
        async with session.catch_up_turn:
            tweets, reached, read_with = await reader.tweets(sub, last, until, page_bytes)
        due_now: list[StoredTweet] = []
        try:
            for tweet in tweets:
                if origin is None:
                    origin = (clock(), tweet.received)
                wait = origin[0] + max(0.0, tweet.received - origin[1]) / pace - clock()
                if wait > 0:
                    last = await _send(reader, session, sub, read_with, due_now, epoch, last)
                    due_now = []
                    await asyncio.sleep(wait)
                due_now.append(tweet)
            await _send(reader, session, sub, read_with, due_now, epoch, last)
            last = reached
        except _Refiltered:
            pass  # read on from the last tweet sent, under the filter now in force
    return last


class _Refiltered(Exception):
    """A refresh changed the subscription's filter after its page was read."""


async def _send(
    reader: CatchUpReader,
    session: Session,
    sub: Subscription,
    read_with: TweetFilter | None,
    tweets: list[StoredTweet],
    epoch: str,
    last: int,
) -> int:
    """Write ``tweets`` (due now) in one write once the client has room; the seq sent up to."""
    if not tweets:
        return last
    await session.wait_room()
    if session.closed:
        raise SessionClosed
    if read_with is not sub.filter:
        raise _Refiltered
    rows = [(tweet.seq, tweet.body) for tweet in tweets]
    frames = session.transport.framing.page(sub.channel, epoch, rows)
    session.send_page(frames, len(rows), rows[-1][0])
    reader.metrics.recovered.inc(len(rows))
    return rows[-1][0]
