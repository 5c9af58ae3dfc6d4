"""Fan-out by writes, not coroutines: one write per client per publish, the transport's
buffer as the send buffer, large publishes in pieces with the loop free between them.

Publishes here go straight to the relay's hub, in its own loop, so that the test
decides what one publish holds (the ingest path batches as it commits); the
clients are real WebSocket clients on real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from relay.store import StoredTweet
from relay.stream.hub import Hub
from relay.stream.session import Session
from relay.testing import RelayServer
from tests.support import UNIT, receive_tweets, subscribe, wait_for
from tests.test_connection_bounds import RawClient

Start = Callable[..., RelayServer]


def _hub(relay: RelayServer) -> Hub:
    hub = relay.relay.hub
    assert hub is not None
    return hub


def _tweets(hub: Hub, count: int, size: int) -> list[StoredTweet]:
    first = hub.head + 1
    return [
        StoredTweet(seq, ("tweets",), orjson.dumps({"id": str(seq), "text": "x" * size}))
        for seq in range(first, first + count)
    ]


def _publish(relay: RelayServer, count: int, size: int) -> list[int]:
    """One publish of ``count`` tweets of about ``size`` bytes; their seqs."""
    hub = _hub(relay)

    async def go() -> list[int]:
        tweets = _tweets(hub, count, size)
        hub.publish(tweets)
        return [t.seq for t in tweets]

    return relay.call(go())


def _session_of(relay: RelayServer, port: int) -> Session:
    (session,) = [s for s in _hub(relay).sessions if s.peer.endswith(f":{port}")]
    return session


def _writes(relay: RelayServer, sessions: list[Session]) -> list[int]:
    """Each session's writes so far, read in the relay's loop (between its steps)."""

    async def look() -> list[int]:
        return [s.writes for s in sessions]

    return relay.call(look())


def _subscribers(relay: RelayServer, count: int) -> None:
    hub = _hub(relay)
    wait_for(lambda: sum(len(s.subscriptions) for s in hub.sessions) == count, UNIT, "subscribers")


def test_one_publish_reaches_each_client_in_order_in_one_write(start_relay: Start) -> None:
    relay = start_relay()
    clients = [subscribe(relay.ws_url)[0] for _ in range(3)]
    _subscribers(relay, 3)
    sessions = [_session_of(relay, ws.socket.getsockname()[1]) for ws in clients]
    writes = _writes(relay, sessions)
    total = relay.relay.metrics.stream_writes._value.get()
    seqs = _publish(relay, 40, 300)  # 40 frames, about 14 KB: well under a piece
    for ws in clients:
        assert [f["seq"] for f in receive_tweets(ws, 40)] == seqs
    assert _writes(relay, sessions) == [w + 1 for w in writes]
    assert relay.relay.metrics.stream_writes._value.get() == total + 3
    assert all(s.last_seq == seqs[-1] for s in sessions)
    for ws in clients:
        ws.close()


def test_publishes_and_a_reply_of_one_loop_step_reach_the_client_in_order_in_one_write(
    start_relay: Start,
) -> None:
    """A lone publish goes out as the bytes it shares with every subscriber; a second
    publish or a reply before it is written joins it, in order, in the same one write."""
    relay = start_relay()
    hub = _hub(relay)
    ws, _ = subscribe(relay.ws_url)
    _subscribers(relay, 1)
    session = _session_of(relay, ws.socket.getsockname()[1])
    (before,) = _writes(relay, [session])

    async def go() -> list[int]:
        first = _tweets(hub, 3, 100)
        hub.publish(first)
        second = _tweets(hub, 2, 100)
        hub.publish(second)
        session.push(b'{"type":"note"}')
        return [t.seq for t in first + second]

    seqs = relay.call(go())
    frames = [orjson.loads(ws.recv(timeout=UNIT)) for _ in range(6)]
    assert [frame.get("seq") for frame in frames[:5]] == seqs
    assert frames[5] == {"type": "note"}
    assert _writes(relay, [session]) == [before + 1]
    ws.close()


class _FramingFails:
    """A client's transport whose framing raises: a bug in one session's delivery."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    @property
    def framing(self) -> Any:
        raise RuntimeError("framing broke")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_session_whose_delivery_fails_is_closed_alone_and_the_others_get_the_publish(
    start_relay: Start,
) -> None:
    relay = start_relay()
    broken, _ = subscribe(relay.ws_url)
    fine, _ = subscribe(relay.ws_url)
    _subscribers(relay, 2)
    failing = _session_of(relay, broken.socket.getsockname()[1])

    async def break_it() -> None:
        failing.transport = _FramingFails(failing.transport)

    relay.call(break_it())
    seqs = _publish(relay, 3, 100)
    assert [f["seq"] for f in receive_tweets(fine, 3)] == seqs
    with pytest.raises(ConnectionClosed) as closed:
        broken.recv(timeout=UNIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert relay.relay.metrics.refused.labels("delivery_failed")._value.get() == 1
    fine.close()


def test_a_publish_larger_than_a_piece_goes_out_in_pieces_and_the_loop_keeps_serving(
    start_relay: Start,
) -> None:
    limit = 64 * 1024
    relay = start_relay(send_buffer=limit)
    hub = _hub(relay)
    clients = [subscribe(relay.ws_url)[0] for _ in range(12)]
    _subscribers(relay, 12)
    sessions = [_session_of(relay, ws.socket.getsockname()[1]) for ws in clients]
    writes = _writes(relay, sessions)
    count = 120  # about 250 KB to each client, 3 MB in all: past one turn's worth of writes

    async def publish_then_look() -> tuple[list[int], int]:
        tweets = _tweets(hub, count, 2000)
        pending: list[int] = []
        # Runs at the loop's next turn: only if the hub let go of the loop mid-publish
        # does it find frames still waiting to be written.
        asyncio.get_running_loop().call_soon(
            lambda: pending.append(sum(s.pending for s in sessions))
        )
        hub.publish(tweets)
        await asyncio.sleep(0)
        return [t.seq for t in tweets], pending[0]

    seqs, pending_at_next_turn = relay.call(publish_then_look())
    assert pending_at_next_turn > 0
    assert relay.get("/healthz")[0] == 200
    frame_bytes = sum(len(orjson.dumps({"id": str(s), "text": "x" * 2000})) for s in seqs)
    for ws in clients:
        assert [f["seq"] for f in receive_tweets(ws, count)] == seqs
    # Pieces of at most a quarter of the send buffer: several writes, far fewer than frames.
    for session, before, after in zip(sessions, writes, _writes(relay, sessions), strict=True):
        assert frame_bytes // session.piece <= after - before < count // 4
    assert relay.relay.metrics.slow_consumers._value.get() == 0
    for ws in clients:
        ws.close()


def test_a_client_that_never_reads_is_closed_with_4008_once_earlier_bytes_pass_the_buffer(
    start_relay: Start,
) -> None:
    limit = 64 * 1024
    relay = start_relay(send_buffer=limit)
    hub = _hub(relay)
    reader, _ = subscribe(relay.ws_url)
    stuck = RawClient(relay.ws_url, rcvbuf=4096)
    stuck.send({"op": "subscribe", "channel": "tweets"})
    _subscribers(relay, 2)
    session = _session_of(relay, stuck.sock.getsockname()[1])

    async def publish_and_look() -> tuple[int, bool, int, int]:
        # In the loop: what the stuck client had unsent just before this publish (in the
        # transport, and held back while the transport pushes back).
        before = session.backlog()
        tweets = _tweets(hub, 2, 10_000)  # about 20 KB: a third of the buffer
        hub.publish(tweets)
        return before, session.closed, tweets[-1].seq, session.last_seq

    history: list[tuple[int, bool, int, int]] = []
    for _ in range(2000):  # at most 40 MB: far past any kernel buffer
        history.append(relay.call(publish_and_look()))
        assert len(receive_tweets(reader, 2, timeout=2 * UNIT)) == 2  # the reader keeps up
        if history[-1][1]:
            break
    # Closed at the first publish that found more than the buffer unsent from before, and
    # not at one that found less, even when that publish's own bytes took it past.
    closed_at = next(i for i, (_, closed, _, _) in enumerate(history) if closed)
    assert history[closed_at][0] > limit
    assert all(before <= limit for before, _, _, _ in history[:closed_at])
    assert any(before + 20_000 > limit for before, _, _, _ in history[:closed_at])
    assert relay.relay.metrics.slow_consumers._value.get() == 1
    close = stuck.close_code()
    assert close is not None and close.code == 4008
    reason: dict[str, Any] = orjson.loads(close.reason)
    # The last seq written before the close, from where the client resumes: frames held
    # back while its transport pushed back were never written (they are in the store).
    written = history[closed_at][3]
    assert reason == {"reason": "slow_consumer", "seq": written}
    assert 0 < written <= history[closed_at - 1][2]
    seqs = _publish(relay, 1, 10)
    assert receive_tweets(reader, 1)[0]["seq"] == seqs[0]
    reader.close()
    stuck.close()


def test_a_slow_reader_gets_what_came_while_its_transport_pushed_back_in_one_write(
    start_relay: Start,
) -> None:
    relay = start_relay()  # the default send buffer: 1 MiB
    hub = _hub(relay)
    slow = RawClient(relay.ws_url, rcvbuf=4096)
    slow.send({"op": "subscribe", "channel": "tweets"})
    _subscribers(relay, 1)
    session = _session_of(relay, slow.sock.getsockname()[1])
    metrics = relay.relay.metrics

    async def publish(count: int) -> tuple[int, bool, int, float, float]:
        tweets = _tweets(hub, count, 2000)
        hub.publish(tweets)
        await asyncio.sleep(0)  # the hub's flush: a write, or the frames held back
        await asyncio.sleep(0)
        writes, frames = metrics.stream_writes._value.get(), _frames_sent(relay)
        return tweets[-1].seq, session.held_back, session.writes, writes, frames

    # The client reads nothing: its socket fills, then the transport pushes back.
    held = False
    for _ in range(5000):  # at most 10 MB: past any kernel buffer
        last, held, writes, all_writes, frames = relay.call(publish(1))
        if held:  # this publish's frame is the first held back
            break
    assert held and not session.closed
    # While it pushes back, publishes of a few tweets each go out in no write at all...
    publishes, per_publish = 40, 3
    for _ in range(publishes):
        last, held, *counts = relay.call(publish(per_publish))
        assert held and counts == [writes, all_writes, frames]
    assert not session.closed  # 240 KB held back: under the send buffer
    # ...and once the client reads, everything held back goes out in one write, in order.
    seqs = []
    for message in slow.texts():
        if message["type"] == "tweet":
            seqs.append(message["seq"])
            if message["seq"] == last:
                break
    assert seqs == list(range(1, last + 1))

    async def counts() -> tuple[int, float, float]:
        return session.writes, metrics.stream_writes._value.get(), _frames_sent(relay)

    after = relay.call(counts())
    assert after[0] - writes == after[1] - all_writes == 1
    assert after[2] - frames == 1 + publishes * per_publish
    assert metrics.slow_consumers._value.get() == 0
    slow.close()


def _frames_sent(relay: RelayServer) -> float:
    value = relay.relay.metrics.registry.get_sample_value(
        "relay_frames_sent_total", {"transport": "websocket"}
    )
    return value or 0.0
