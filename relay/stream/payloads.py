"""One publish, built once: a channel's tweet payloads, and their frames per transport kind.

The hub builds each channel's payloads once per publish, however many sessions listen;
each transport kind with a listener frames them once (:meth:`ChannelBatch.framed`), and
every session of that kind gets the same bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.store import StoredTweet
    from relay.stream.transport import Framing


class Frames:
    """Frames of one transport kind in seq order, their seqs and their size in bytes: a
    channel's publish, shared by its sessions, or the part of it one session takes."""

    __slots__ = ("_joined", "frames", "seqs", "size")

    def __init__(
        self, frames: list[bytes] | None = None, seqs: list[int] | None = None, size: int = 0
    ) -> None:
        self.frames: list[bytes] = [] if frames is None else frames
        self.seqs: list[int] = [] if seqs is None else seqs
        self.size = size
        self._joined: bytes | None = None

    @property
    def joined(self) -> bytes:
        """The frames end to end, joined at the first ask and then shared: the one write
        of every session that has nothing else pending (not changed after that ask)."""
        joined = self._joined
        if joined is None:
            joined = self._joined = (
                self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            )
        return joined

    def add(self, frame: bytes, seq: int) -> None:
        self.frames.append(frame)
        self.seqs.append(seq)
        self.size += len(frame)


class ChannelBatch:
    """One channel's tweets of one publish in seq order, with their payloads."""

    __slots__ = ("_framed", "channel", "epoch", "payloads", "seqs", "tweets")

    def __init__(self, channel: str, epoch: str) -> None:
        self.channel = channel
        self.epoch = epoch
        self.tweets: list[StoredTweet] = []
        self.seqs: list[int] = []
        self.payloads: list[bytes] = []
        self._framed: dict[Framing, Frames] = {}

    def add(self, tweet: StoredTweet, payload: bytes) -> None:
        self.tweets.append(tweet)
        self.seqs.append(tweet.seq)
        self.payloads.append(payload)

    def framed(self, framing: Framing) -> Frames:
        """The batch in ``framing``'s frames: built at the first ask of each kind, then shared."""
        framed = self._framed.get(framing)
        if framed is None:
            frames = framing.tweets(self.channel, self.epoch, self.tweets, self.payloads)
            framed = self._framed[framing] = Frames(frames, self.seqs, sum(map(len, frames)))
        return framed
