"""The hub: who listens to which channel, and gap-free delivery to them.

``publish`` runs on the event loop, never awaits, and encodes each tweet frame
once per channel, however many sessions listen. Resume works without locks:
a subscription registers and snapshots the last published seq in the same
tick, so every tweet up to that seq is already in the store (persist before
publish) and every later one is published after registration and held until
the store catch-up is done. Dropping held frames by seq then gives no gap and
no duplicate (invariant 3).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from relay import protocol
from relay.protocol import Position
from relay.session import Session, SessionClosed, Subscription, wanted
from relay.store import Store, StoredTweet

if TYPE_CHECKING:
    from relay.filters import TweetFilter
    from relay.metrics import Metrics

log = logging.getLogger(__name__)

CATCH_UP_PAGE = 200


class Hub:
    def __init__(self, store: Store, metrics: Metrics, *, head: int = 0) -> None:
        self.store = store
        self.metrics = metrics
        self.head = head
        """The last seq published; every tweet up to it is in the store."""
        self.sessions: set[Session] = set()
        self._listeners: dict[str, set[Session]] = {}

    @property
    def epoch(self) -> str:
        return self.store.epoch

    def add(self, session: Session) -> None:
        self.sessions.add(session)
        self.metrics.connections.set(len(self.sessions))

    def remove(self, session: Session) -> None:
        session.stop()
        for channel in session.subscriptions:
            self._unlisten(channel, session)
        session.subscriptions.clear()
        self.sessions.discard(session)
        self.metrics.connections.set(len(self.sessions))

    def publish(self, tweets: Sequence[StoredTweet]) -> None:
        """Fan new tweets out; they must come in seq order and be in the store already."""
        for tweet in tweets:
            if tweet.seq <= self.head:
                continue  # a bus may redeliver after a reconnect
            self.head = tweet.seq
            for channel in tweet.channels:
                listeners = self._listeners.get(channel)
                if not listeners:
                    continue
                frame = protocol.tweet(channel, tweet.seq, tweet.body)
                for session in tuple(listeners):
                    session.deliver(channel, tweet, frame)

    def subscribe(
        self,
        session: Session,
        channel: str,
        since: Position | None,
        ref: object = None,
        tweet_filter: TweetFilter | None = None,
    ) -> None:
        """Start a subscription; a resume runs its store catch-up in a task."""
        if channel in session.subscriptions:
            session.push(
                protocol.error(
                    "already_subscribed", f"already subscribed to {channel}", "subscribe", ref
                )
            )
            return
        sub = Subscription(channel, tweet_filter)
        session.subscriptions[channel] = sub
        filters = tweet_filter.as_dict() if tweet_filter else None
        self._listeners.setdefault(channel, set()).add(session)
        head = self.head  # same tick as registration: see the module docstring
        if since is None:
            session.push(protocol.subscribed(channel, self.epoch, head, 0, ref, filters))
            self._go_live(session, sub, after=None)
        elif since.epoch != self.epoch or since.seq > head:
            session.push(protocol.reset(channel, self.epoch, head))
            session.push(protocol.subscribed(channel, self.epoch, head, 0, ref, filters))
            self._go_live(session, sub, after=None)
        else:
            sub.task = asyncio.create_task(
                self._catch_up(session, sub, since.seq, head, ref, filters),
                name=f"catch-up {channel}",
            )

    def unsubscribe(self, session: Session, channel: str, ref: object = None) -> None:
        sub = session.subscriptions.pop(channel, None)
        if sub is None:
            session.push(
                protocol.error("not_subscribed", f"not subscribed to {channel}", "unsubscribe", ref)
            )
            return
        if sub.task is not None:
            sub.task.cancel()
        self._unlisten(channel, session)
        session.push(protocol.unsubscribed(channel, ref))

    async def close_all(self, timeout: float) -> None:
        """Shutdown: every session gets what is queued, then 1001 with its last seq."""
        sessions = list(self.sessions)
        if sessions:
            await asyncio.gather(*(s.shutdown(timeout) for s in sessions))

    def channels(self) -> Iterable[str]:
        return self._listeners.keys()

    async def _catch_up(
        self,
        session: Session,
        sub: Subscription,
        after: int,
        head: int,
        ref: object,
        filters: dict[str, object] | None,
    ) -> None:
        channel = sub.channel
        try:
            recovered = await self.store.count_after(channel, after, head)
            session.push(protocol.subscribed(channel, self.epoch, head, recovered, ref, filters))
            last = after
            while True:
                while last < head:
                    page = await self.store.read_after(channel, last, head, CATCH_UP_PAGE)
                    if not page:
                        break
                    for tweet in page:
                        last = tweet.seq
                        if wanted(sub, tweet):
                            await session.push_paced(
                                protocol.tweet(channel, tweet.seq, tweet.body), tweet.seq
                            )
                    self.metrics.recovered.inc(len(page))
                if not sub.overflowed:
                    break
                # Live frames were dropped while we read: read on up to the new head.
                sub.overflowed = False
                head = self.head
            self._go_live(session, sub, after=last)
        except SessionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("catch-up of %s for %s failed", channel, session.peer)
            session.push(
                protocol.error("internal", "catch-up failed; resubscribe", "subscribe", ref)
            )
            session.subscriptions.pop(channel, None)
            self._unlisten(channel, session)

    @staticmethod
    def _go_live(session: Session, sub: Subscription, after: int | None) -> None:
        for seq, frame in sub.held:
            if after is None or seq > after:
                session.push(frame, seq)
        sub.held.clear()
        sub.held_bytes = 0
        sub.live = True
        sub.task = None

    def _unlisten(self, channel: str, session: Session) -> None:
        listeners = self._listeners.get(channel)
        if listeners is not None:
            listeners.discard(session)
            if not listeners:
                del self._listeners[channel]
