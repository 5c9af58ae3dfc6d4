"""Handing one publish to the sessions that listen: each takes its part (the frames every
session of its transport kind shares, when its subscription is live and takes all), and
a session with frames to write is queued once for the hub's next flush. One session's
failure stays with it: it is returned, for the hub to cut that session alone."""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping

from relay.stream.payloads import ChannelBatch, Frames
from relay.stream.session import Session

Failed = dict[Session, BaseException]


def deliver(
    listeners: Mapping[str, Collection[Session]],
    per_channel: Mapping[str, ChannelBatch],
    dirty: deque[Session],
) -> Failed:
    """Give each listener of each channel its part of ``per_channel``; the sessions that
    failed, with why."""
    failed: Failed = {}
    if len(per_channel) == 1:
        (channel, batch), *_ = per_channel.items()
        _one_channel(listeners.get(channel, ()), channel, batch, dirty, failed)
    else:
        _several_channels(listeners, per_channel, dirty, failed)
    return failed


def _one_channel(
    sessions: Collection[Session],
    channel: str,
    batch: ChannelBatch,
    dirty: deque[Session],
    failed: Failed,
) -> None:
    """The common case: no session can listen to two of the publish's channels."""
    for session in tuple(sessions):
        try:
            part = session.take_batch(channel, batch)
            if part is not None and session.deliver_batch([part]) and not session.scheduled:
                session.scheduled = True
                dirty.append(session)
        except Exception as exc:
            failed[session] = exc


def _several_channels(
    listeners: Mapping[str, Collection[Session]],
    per_channel: Mapping[str, ChannelBatch],
    dirty: deque[Session],
    failed: Failed,
) -> None:
    """A session listening to more than one of the channels gets its parts together, in
    seq order."""
    parts: dict[Session, list[Frames]] = {}
    for channel, batch in per_channel.items():
        for session in tuple(listeners.get(channel, ())):
            if session in failed:
                continue
            try:
                part = session.take_batch(channel, batch)
                if part is not None:
                    parts.setdefault(session, []).append(part)
            except Exception as exc:
                failed[session] = exc
    for session, batches in parts.items():
        if session in failed:
            continue
        try:
            if session.deliver_batch(batches) and not session.scheduled:
                session.scheduled = True
                dirty.append(session)
        except Exception as exc:
            failed[session] = exc
