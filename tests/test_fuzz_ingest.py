"""Property-based fuzzing of the whole ingest path (hypothesis).

Real-shaped payloads (the real X API captures, and the stream shape the tests
use) get arbitrary JSON values in any field, nested ones too: ints around 2**63
and 2**64, floats such as 1e20, text that is not JSON (NaN, 1e400) spliced into
the raw line, lists, objects, null, huge strings, unicode and NUL. The lines go
through a real relay: parse, store, publish to subscribers with filters, the
object API. The properties: the relay keeps running, every well-formed tweet is
stored once and delivered, and a restart on the same database succeeds.
"""

from __future__ import annotations

import copy
import itertools
import json
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection

from relay.core.tweets import parse_line
from relay.errors import MalformedPayload
from relay.testing import RelayServer
from tests.conftest import CAPTURES
from tests.support import UNIT, stream_line, subscribe, wait_for

# A failing example may hold 100,000-character strings: report it, do not fail on its size.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@dataclass(frozen=True)
class Raw:
    """Text spliced into the line as is: numbers JSON has no value for, or no JSON at all."""

    text: str


RAW = ["NaN", "Infinity", "1e400", "-1e400", "1e20", "-0", "1E+99", '"\\ud800"', "01"]
EDGE_INTS = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 0, -1, 10**30]
EDGE_TEXT = [
    "",
    "\x00",
    "a\x00b",
    "x" * 100_000,
    "en",
    "ja",
    "user_u1",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2026-01-01T00:00:00Z",
    "١٢٣",
    "18446744073709551616",
    "🐈" * 50,
]

leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(EDGE_INTS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(EDGE_TEXT)
    | st.sampled_from(RAW).map(Raw)
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

Path_ = tuple[str | int, ...]
# Fields worth hitting even when the base payload lacks them.
EXTRA_PATHS: list[Path_] = [
    ("__relay", "received_at"),
    ("__twarc", "retrieved_at"),
    ("matching_rules",),
    ("matching_rules", 0, "id"),
    ("matching_rules", 0, "tag"),
    ("includes", "users"),
    ("includes", "users", 0, "username"),
    ("includes", "users", 0, "name"),
    ("includes", "users", 0, "id"),
    ("includes", "media"),
    ("includes", "places"),
    ("data",),
    ("errors",),
]


def encode(payload: Any) -> bytes:
    """The payload as one line; Raw values spliced in as their text."""
    raws: list[str] = []

    def default(value: Any) -> str:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"@@raw{len(raws) - 1}@@"
        raise TypeError(type(value).__name__)

    text = json.dumps(payload, default=default)  # the standard encoder takes any int
    for number, raw in enumerate(raws):
        text = text.replace(f'"@@raw{number}@@"', raw, 1)
    return text.encode()


def paths(value: Any, prefix: Path_ = (), depth: int = 0) -> Iterator[Path_]:
    if depth > 6:
        return
    items: Any = (
        value.items() if isinstance(value, dict) else enumerate(value[:3])
        if isinstance(value, list) else ()
    )  # fmt: skip
    for key, child in items:
        yield (*prefix, key)
        yield from paths(child, (*prefix, key), depth + 1)


def change(payload: dict[str, Any], path: Path_, value: Any, delete: bool) -> None:
    """Put ``value`` at ``path`` (making missing objects on the way), or delete it."""
    node: Any = payload
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {}) if isinstance(key, str) else None
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        if delete:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last < len(node):
        if delete:
            del node[last]
        else:
            node[last] = value


def load_bases() -> list[dict[str, Any]]:
    """Payload shapes to start from: every real capture line, and the tests' stream line."""
    bases = [orjson.loads(stream_line(1))]
    if CAPTURES.is_dir():
        for file in sorted(CAPTURES.glob("*.jsonl")):
            for line in file.read_bytes().splitlines():
                try:
                    payload = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # the README's one truncated line
                if isinstance(payload.get("data"), list):
                    payload["data"] = payload["data"][:3]  # keep examples small and quick
                bases.append(payload)
    return bases


BASES = load_bases()
_ids = itertools.count(12_345_678_900_000_000_000)  # far from the ints hypothesis picks


def fresh_id() -> str:
    return str(next(_ids))


@dataclass
class Case:
    line: bytes
    well_formed: list[str]
    """Ids of the tweets that are still well-formed after the changes: stored and delivered."""


@st.composite
def cases(draw: st.DrawFn) -> Case:
    payload = copy.deepcopy(draw(st.sampled_from(BASES)))
    data = payload.get("data")
    ours = []
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, dict):
            item["id"] = fresh_id()
            ours.append(item["id"])
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(list(paths(payload)) + EXTRA_PATHS))
        change(payload, path, draw(json_values), delete=draw(st.integers(0, 5)) == 0)
    line = encode(payload)
    try:
        decoded = orjson.loads(line)
    except orjson.JSONDecodeError:
        return Case(line, [])
    data = decoded.get("data")
    items = data if isinstance(data, list) else [data]
    well_formed = [
        item["id"]
        for item in items
        if isinstance(item, dict) and item.get("id") in ours and isinstance(item.get("text"), str)
    ]
    return Case(line, well_formed)


@settings(FUZZ, max_examples=600)
@given(st.one_of(cases().map(lambda case: case.line), st.binary(max_size=200)))
def test_parse_line_raises_nothing_but_malformed_payload_and_yields_typed_tweets(
    line: bytes,
) -> None:
    try:
        parsed = parse_line(line)
    except MalformedPayload:
        return
    for tweet in parsed.tweets:
        assert tweet.id.isdigit() and int(tweet.id) < 2**64 and str(int(tweet.id)) == tweet.id
        assert isinstance(tweet.text, str)
        assert tweet.lang is None or isinstance(tweet.lang, str)
        assert tweet.author_username is None or isinstance(tweet.author_username, str)
        assert tweet.author_id is None or isinstance(tweet.author_id, str)
        assert tweet.created_at is None or len(tweet.created_at) == 24
        assert all(isinstance(r.id, str) and isinstance(r.tag, str) for r in tweet.rules)
        assert all(isinstance(c, str) for c in tweet.channels)
    assert all(isinstance(user["id"], str) for user in parsed.users)


FILTERS: dict[str, dict[str, Any]] = {
    "lang": {"lang": "en"},
    "author": {"author": "user_u1"},
    "media": {"has_media": True},
    "keyword": {"keyword": "sentinel"},
}


def matches(name: str, tweet: dict[str, Any]) -> bool:
    if name == "lang":
        return tweet.get("lang") == "en"
    if name == "author":
        author = tweet.get("author")
        return isinstance(author, dict) and str(author.get("username")).lower() == "user_u1"
    if name == "media":
        return bool(tweet.get("media"))
    return "sentinel" in str(tweet.get("text")).lower()


def sentinel() -> tuple[str, bytes]:
    """A tweet every filter lets through: the last of each example."""
    tweet_id = fresh_id()
    payload = orjson.loads(stream_line(tweet_id, text="the Sentinel"))
    payload["data"]["attachments"] = {"media_keys": ["3_1"]}
    payload["includes"]["media"] = [{"media_key": "3_1", "type": "photo"}]
    return tweet_id, orjson.dumps(payload)


def frames_until(ws: ClientConnection, last_id: str) -> list[dict[str, Any]]:
    tweets = []
    while True:
        frame = orjson.loads(ws.recv(timeout=4 * UNIT))
        if frame["type"] == "tweet":
            tweets.append(frame["tweet"])
            if frame["tweet"]["id"] == last_id:
                return tweets


def test_arbitrary_values_in_every_field_never_stop_the_relay_or_lose_a_good_tweet(
    captures: Path,
    start_relay: Callable[..., RelayServer],
) -> None:
    assert len(BASES) > 10, "the captures gave no payloads"
    # One relay for every example (a relay each would be far too slow): ids are fresh.
    relay = start_relay(send_buffer=64 * 1024 * 1024)
    everything, _ = subscribe(relay.ws_url, "tweets", max_size=None)
    filtered: dict[str, ClientConnection] = {}
    for name, tweet_filter in FILTERS.items():
        ws, _ = subscribe(relay.ws_url, "tweets", max_size=None)
        ws.send(orjson.dumps({"op": "unsubscribe", "channel": "tweets"}).decode())
        assert orjson.loads(ws.recv(timeout=UNIT))["type"] == "unsubscribed"
        op = {"op": "subscribe", "channel": "tweets", "filters": tweet_filter}
        ws.send(orjson.dumps(op).decode())
        assert orjson.loads(ws.recv(timeout=UNIT))["type"] == "subscribed"
        filtered[name] = ws
    delivered: set[str] = set()
    examples = [0]

    @settings(FUZZ, max_examples=250)
    @given(st.lists(cases(), min_size=1, max_size=3))
    def push_through(batch: list[Case]) -> None:
        examples[0] += 1
        assert relay.relay.error is None, f"ingest stopped earlier: {relay.relay.error}"
        last_id, last_line = sentinel()
        relay.push(*(case.line for case in batch), last_line)
        got = frames_until(everything, last_id)
        ids = [tweet["id"] for tweet in got]
        assert len(set(ids)) == len(ids) and not delivered & set(ids), "a tweet came twice"
        delivered.update(ids)
        for case in batch:
            assert set(case.well_formed) <= set(ids), "a well-formed tweet was not delivered"
            for tweet_id in case.well_formed:
                status, body = relay.get(f"/v1/objects/tweets/{tweet_id}")
                assert status == 200 and body["id"] == tweet_id
        for name, ws in filtered.items():
            for tweet in frames_until(ws, last_id):
                assert matches(name, tweet), (name, tweet)
        assert relay.get("/readyz")[0] == 200
        q = urllib.parse.quote('{"lang":"en"}')
        assert relay.get(f"/v1/objects/tweets?q={q}&limit=5&sort=-createdAt")[0] == 200
        assert relay.get("/v1/objects/tweets?search=sentinel&limit=5")[0] == 200

    push_through()
    head = relay.relay.hub.head if relay.relay.hub else 0
    assert head >= examples[0]  # a sentinel each, at least
    for ws in (everything, *filtered.values()):
        ws.close()
    relay.stop()

    second = start_relay(send_buffer=64 * 1024 * 1024)
    assert second.get("/readyz")[0] == 200
    last_id, last_line = sentinel()
    second.push(last_line)
    second.wait_seq(head + 1)
    assert second.get(f"/v1/objects/tweets/{last_id}")[0] == 200
    wait_for(lambda: second.relay.ready, UNIT, "the restarted relay to stay ready")
