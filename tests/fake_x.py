"""A fake X API v2: a real HTTP server on 127.0.0.1 that replays payloads and injects faults.

It serves the filtered stream (chunked, one payload a line, keep-alives), the stream
rules endpoints and recent search. Each stream connection plays the next script of
steps the test queued; with none left it holds the stream open with keep-alives.
Every request is recorded so tests can check what the relay asked for.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

TOKEN = "good-token"
Step = tuple[Any, ...]


class FakeX:
    def __init__(self) -> None:
        self.scripts: deque[list[Step]] = deque()
        self.rules: dict[str, dict[str, str]] = {}
        self._next_rule = 1000
        self.search: dict[str, list[dict[str, Any]]] = {}
        """query -> tweets (each ``{"data": {...}, "includes": {...}}``), any order."""
        self.search_page_size = 10
        self.search_statuses: deque[tuple[int, dict[str, str]]] = deque()
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.stopping = threading.Event()
        self.release = threading.Event()
        """Set to end the stream connection that is holding, cleanly, as X would."""
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def stream_requests(self) -> int:
        return sum(1 for _, path, _ in self.requests if path == "/2/tweets/search/stream")

    def add_rule(self, value: str, tag: str | None) -> str:
        self._next_rule += 1
        rule_id = str(self._next_rule)
        self.rules[rule_id] = {"id": rule_id, "value": value, **({"tag": tag} if tag else {})}
        return rule_id

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def _route(self, method: str) -> None:
                parts = urlsplit(self.path)
                params = parse_qs(parts.query)
                fake.requests.append((method, parts.path, params))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._json(
                        401,
                        {
                            "title": "Unauthorized",
                            "status": 401,
                            "detail": "Unauthorized",
                            "type": "about:blank",
                        },
                    )
                if parts.path == "/2/tweets/search/stream" and method == "GET":
                    return self._stream()
                if parts.path == "/2/tweets/search/stream/rules":
                    return self._rules(method, params)
                if parts.path == "/2/tweets/search/recent":
                    return self._search(params)
                return self._json(404, {"title": "Not Found"})

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _stream(self) -> None:
                script = fake.scripts.popleft() if fake.scripts else [("hold",)]
                if script and script[0][0] == "status":
                    _, status, body = script[0]
                    return self._json(status, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for step in script:
                        kind = step[0]
                        if kind == "lines":
                            for line in step[1]:
                                self._chunk(line + b"\r\n")
                        elif kind == "raw":
                            self._chunk(step[1])
                        elif kind == "keepalive":
                            self._chunk(b"\r\n")
                        elif kind == "stall":
                            fake.stopping.wait(step[1])
                        elif kind == "drop":  # end the connection inside the stream
                            self.close_connection = True
                            return
                        elif kind == "hold":
                            while not fake.stopping.is_set():
                                if fake.release.wait(0.1):
                                    fake.release.clear()
                                    break
                                self._chunk(b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")  # a clean end of the stream
                    self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _rules(self, method: str, params: dict[str, list[str]]) -> None:
                if method == "GET":
                    data = list(fake.rules.values())
                    body: dict[str, Any] = {"meta": {"sent": "now", "result_count": len(data)}}
                    if data:
                        body["data"] = data
                    return self._json(200, body)
                length = int(self.headers.get("Content-Length", "0"))
                request = orjson.loads(self.rfile.read(length))
                dry_run = params.get("dry_run") == ["true"]
                if "delete" in request:
                    for rule_id in request["delete"]["ids"]:
                        if not dry_run:
                            fake.rules.pop(str(rule_id), None)
                    return self._json(
                        200,
                        {
                            "meta": {
                                "sent": "now",
                                "summary": {
                                    "deleted": len(request["delete"]["ids"]),
                                    "not_deleted": 0,
                                },
                            }
                        },
                    )
                created, errors = [], []
                for rule in request.get("add", []):
                    if "INVALID" in rule["value"]:
                        errors.append(
                            {
                                "value": rule["value"],
                                "id": "0",
                                "title": "UnprocessableEntity",
                                "details": ["Rules must contain a non-negation term"],
                                "type": "https://api.twitter.com/2/problems/invalid-rules",
                            }
                        )
                        continue
                    rule_id = (
                        str(fake._next_rule + 1)
                        if dry_run
                        else fake.add_rule(rule["value"], rule.get("tag"))
                    )
                    created.append(
                        {
                            "id": rule_id,
                            "value": rule["value"],
                            **({"tag": rule["tag"]} if rule.get("tag") else {}),
                        }
                    )
                body = {
                    "meta": {
                        "sent": "now",
                        "summary": {
                            "created": len(created),
                            "not_created": len(errors),
                            "valid": len(created),
                            "invalid": len(errors),
                        },
                    }
                }
                if created:
                    body["data"] = created
                if errors:
                    body["errors"] = errors
                return self._json(200, body)

            def _search(self, params: dict[str, list[str]]) -> None:
                if fake.search_statuses:
                    status, headers = fake.search_statuses.popleft()
                    return self._json(
                        status,
                        {"title": "Too Many Requests", "detail": "Too Many Requests"},
                        headers,
                    )
                query = params["query"][0]
                since = int(params.get("since_id", ["0"])[0])
                tweets = sorted(
                    (t for t in fake.search.get(query, []) if int(t["data"]["id"]) > since),
                    key=lambda t: int(t["data"]["id"]),
                    reverse=True,
                )
                offset = int(params.get("next_token", ["0"])[0])
                page = tweets[offset : offset + fake.search_page_size]
                meta: dict[str, Any] = {"result_count": len(page)}
                if page:
                    meta["newest_id"] = page[0]["data"]["id"]
                    meta["oldest_id"] = page[-1]["data"]["id"]
                if offset + fake.search_page_size < len(tweets):
                    meta["next_token"] = str(offset + fake.search_page_size)
                body: dict[str, Any] = {"meta": meta}
                if page:
                    body["data"] = [t["data"] for t in page]
                    users = {
                        u["id"]: u for t in page for u in t.get("includes", {}).get("users", [])
                    }
                    body["includes"] = {"users": list(users.values())}
                return self._json(200, body)

        return Handler


def stream_messages(lines: Sequence[bytes]) -> list[dict[str, Any]]:
    """Decoded payloads of stream lines (for search corpora built from the same tweets)."""
    out = []
    for line in lines:
        payload = orjson.loads(line)
        payload.pop("__relay", None)
        out.append(payload)
    return out


def wire(payload: dict[str, Any]) -> bytes:
    """A payload as the stream sends it (no recording metadata)."""
    return orjson.dumps({k: v for k, v in payload.items() if k != "__relay"})


def x_lines(count: int, seed: int) -> list[bytes]:
    """``count`` wire-accurate stream lines of the synthetic generator."""
    from relay.synth import generate

    return [wire(m) for m in stream_messages(list(generate(count, seed=seed)))]


def ids_of(lines: Sequence[bytes]) -> list[str]:
    return [str(orjson.loads(line)["data"]["id"]) for line in lines]


RULES_TOML = """
[[rule]]
value = "cats OR kitten"
tag = "cats"

[[rule]]
value = "python"
tag = "python"
"""


class FakeTime:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)
