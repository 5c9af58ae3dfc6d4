"""Test your code against recorded streams: a real relay, a client, and a fake X API.

``RelayServer`` starts a relay on 127.0.0.1 (in-process, or the real CLI as a subprocess)
from a recording or lines the test pushes; ``RelayClient`` subscribes and collects frames,
``SseClient`` the same over server-sent events;
``FakeXApi`` serves the X API v2 from recorded bytes with scripted faults. With the
package installed, pytest finds the fixtures ``relay_server``, ``relay_client`` and
``fake_x_api`` on its own (:mod:`relay.testing.plugin`). Nothing here needs pytest except
that plugin. See ``docs/testing.md``.

May import: everything (it is the top of the house).
"""

from relay.ingest.finished import ReplaySummary
from relay.testing.client import RelayClient, tweets_of
from relay.testing.deprecated import PushSource, RunningRelay
from relay.testing.errors import RelayClientError, RelayServerError
from relay.testing.fake_x import OPERATIONAL_DISCONNECT, FakeXApi, recorded_payloads
from relay.testing.http import Response
from relay.testing.server import TEST_EPOCH, RelayServer
from relay.testing.source import UNIT, ControlledSource, ReplayClock, as_line
from relay.testing.sse import SseClient
from relay.testing.support import (
    receive_tweets,
    stream_line,
    subscribe,
    wait_for,
    ws_connect,
)

__all__ = [
    "OPERATIONAL_DISCONNECT",
    "TEST_EPOCH",
    "UNIT",
    "ControlledSource",
    "FakeXApi",
    "PushSource",
    "RelayClient",
    "RelayClientError",
    "RelayServer",
    "RelayServerError",
    "ReplayClock",
    "ReplaySummary",
    "Response",
    "RunningRelay",
    "SseClient",
    "as_line",
    "receive_tweets",
    "recorded_payloads",
    "stream_line",
    "subscribe",
    "tweets_of",
    "wait_for",
    "ws_connect",
]
