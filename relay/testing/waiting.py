"""Waiting for tweets, what both test clients share (:class:`~relay.testing.RelayClient`
over WebSocket, :class:`~relay.testing.SseClient` over server-sent events)."""

from __future__ import annotations

import time
from typing import Any

from relay.testing.errors import RelayClientError

Frame = dict[str, Any]


class TweetWaits:
    """``tweets`` and ``until_seq`` over a client's own ``_next_tweet(deadline)``, which
    keeps its other frames and records each channel's last seq in ``last_seq``."""

    timeout: float
    last_seq: dict[str, int]

    def _next_tweet(self, deadline: float) -> Frame:
        raise NotImplementedError

    def _default_channel(self) -> str:
        return "tweets"

    def tweets(self, count: int, *, timeout: float | None = None) -> list[Frame]:
        """The next ``count`` tweets (other frames are kept)."""
        out: list[Frame] = []
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(out) < count:
            try:
                out.append(self._next_tweet(deadline))
            except RelayClientError as exc:
                raise RelayClientError(f"got {len(out)} of {count} tweets: {exc}") from None
        return out

    def until_seq(
        self, seq: int, *, channel: str | None = None, timeout: float | None = None
    ) -> list[Frame]:
        """Tweets until one of ``channel`` (default: the client's first channel) with seq
        ``seq`` or later has come."""
        channel = channel or self._default_channel()
        out: list[Frame] = []
        deadline = time.monotonic() + (timeout or self.timeout)
        while self.last_seq.get(channel, 0) < seq:
            try:
                out.append(self._next_tweet(deadline))
            except RelayClientError as exc:
                last = self.last_seq.get(channel, 0)
                raise RelayClientError(f"waiting for seq {seq}, got to {last}: {exc}") from None
        return out
