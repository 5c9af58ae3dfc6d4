"""``FakeXApi``: the X API v2 on loopback, for testing code that talks to X (tweepy, twarc,
plain HTTP, or a relay with ``source = "x-stream"``/``"x-poll"``) against recorded bytes.

A real HTTP server on 127.0.0.1 (a free port) serving:

- ``GET /2/tweets/search/stream``: the filtered stream, chunked, one payload a line.
  Each connection plays the next *script* the test queued (see below); with none left
  it holds the stream open with keep-alives until :attr:`FakeXApi.release` is set.
- ``GET``/``POST /2/tweets/search/stream/rules``: list, add (``dry_run`` validates and
  applies nothing; a value holding ``INVALID`` is refused as X refuses a bad rule), delete.
- ``GET /2/tweets/search/recent``: the :attr:`FakeXApi.search` corpus, newest first, in
  pages of :attr:`FakeXApi.search_page_size` with ``next_token``; ``since_id`` honoured;
  queued :attr:`FakeXApi.search_statuses` (429 and its headers) answer first.

Every request is kept in :attr:`FakeXApi.requests`. A request without
``Authorization: Bearer <token>`` gets 401. The fault script format is in
``docs/testing.md``: a script is a list of steps, each a tuple (or list) whose first item
names it; lines are ``bytes`` or ``str``, so a script can live in a JSON file.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

TOKEN = "good-token"
"""The bearer token a :class:`FakeXApi` accepts unless given another."""
Step = Sequence[Any]
Script = list[Step]

OPERATIONAL_DISCONNECT = orjson.dumps(
    {
        "errors": [
            {
                "title": "operational-disconnect",
                "disconnect_type": "OperationalDisconnect",
                "detail": "This stream has been disconnected for operational reasons.",
                "type": "https://api.twitter.com/2/problems/operational-disconnect",
            }
        ]
    }
)
"""What X sends before it closes a stream for its own reasons."""


STEPS = (
    "lines",
    "raw",
    "malformed",
    "split",
    "cut",
    "redeliver",
    "keepalive",
    "stall",
    "disconnect",
    "drop",
    "hold",
    "status",
)
"""The steps of a fault script (``docs/testing.md``)."""


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


class FakeXApi:
    """The fake X API. ``with FakeXApi() as x:`` or ``x.stop()`` at the end."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.scripts: deque[Script] = deque()
        """Scripts for the next stream connections, one each, in order."""
        self.sent: list[bytes] = []
        """Every stream line sent so far (``redeliver`` sends the last ones again)."""
        self.rules: dict[str, dict[str, str]] = {}
        self._next_rule = 1000
        self.search: dict[str, list[dict[str, Any]]] = {}
        """query -> tweets (each ``{"data": {...}, "includes": {...}}``), any order."""
        self.search_any: list[dict[str, Any]] = []
        """Tweets every query finds when :attr:`search` has no entry for it."""
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

    def __enter__(self) -> FakeXApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, *steps: Step) -> None:
        """Queue one stream connection's script; a step it does not know is refused here."""
        for index, step in enumerate(steps):
            if not step or step[0] not in STEPS:
                raise ValueError(f"unknown fake X step {step!r}: use one of {', '.join(STEPS)}")
            if step[0] == "status" and index:
                raise ValueError("a status step answers the connection: it comes first")
        self.scripts.append(list(steps))

    def play(self, lines: Iterable[bytes | str], *, then: Step = ("hold",)) -> None:
        """Queue one connection that sends ``lines`` (a recording's payloads), then ``then``."""
        self.script(("lines", list(lines)), then)

    @classmethod
    def from_recording(cls, path: str | Path, token: str = TOKEN) -> FakeXApi:
        """A fake whose first stream connection plays the recording (its payload lines, as
        X sent them, without recording metadata) and whose recent search finds its tweets
        (any query)."""
        fake = cls(token)
        lines = recorded_payloads(path)
        fake.play(lines)
        fake.search_any = [orjson.loads(line) for line in lines if line.strip()]
        return fake

    def search_results(self, query: str) -> list[dict[str, Any]]:
        return self.search.get(query, self.search_any)

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
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
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

            def _line(self, line: bytes) -> None:
                fake.sent.append(line)
                self._chunk(line + b"\r\n")

            def _stream(self) -> None:
                script: Script = fake.scripts.popleft() if fake.scripts else [("hold",)]
                if script and script[0][0] == "status":
                    first = script[0]
                    headers = first[3] if len(first) > 3 else None
                    return self._json(first[1], first[2], headers)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for step in script:
                        if self._step(step[0], *step[1:]):
                            self.close_connection = True
                            return  # the connection ends inside the stream
                    self.wfile.write(b"0\r\n\r\n")  # a clean end of the stream
                    self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            def _step(self, kind: str, *args: Any) -> bool:
                """Play one step; True when the connection is to end at once."""
                if kind == "lines":
                    for line in args[0]:
                        self._line(_bytes(line))
                elif kind == "raw":
                    self._chunk(_bytes(args[0]))
                elif kind == "malformed":
                    self._chunk(_bytes(args[0]) + b"\r\n")
                elif kind == "split":  # one line in two chunks, cut at byte ``at``
                    line, at = _bytes(args[0]), int(args[1])
                    self._chunk(line[:at])
                    self._chunk(line[at:] + b"\r\n")
                    fake.sent.append(line)
                elif kind == "cut":  # the connection ends inside the line
                    line, at = _bytes(args[0]), int(args[1])
                    self._chunk(line[:at])
                    return True
                elif kind == "redeliver":  # X sends tweets again after a reconnect
                    for line in fake.sent[-int(args[0]) :] if int(args[0]) else []:
                        self._line(line)
                elif kind == "keepalive":
                    for _ in range(int(args[0]) if args else 1):
                        self._chunk(b"\r\n")
                elif kind == "stall":
                    fake.stopping.wait(float(args[0]))
                elif kind == "disconnect":  # an operational disconnect, then a clean end
                    self._line(_bytes(args[0]) if args else OPERATIONAL_DISCONNECT)
                elif kind == "drop":
                    return True
                elif kind == "hold":
                    while not fake.stopping.is_set():
                        if fake.release.wait(0.1):
                            fake.release.clear()
                            break
                        self._chunk(b"\r\n")
                else:
                    raise ValueError(f"unknown fake X step {kind!r}")
                return False

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
                    (t for t in fake.search_results(query) if int(t["data"]["id"]) > since),
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


def recorded_payloads(path: str | Path) -> list[bytes]:
    """The payload lines of a recording as X sent them: ``__relay`` and ``__twarc``
    metadata removed, keep-alives kept."""
    from relay.sources.replay import _read

    out = []
    for line in _read(Path(path)):
        if b'"__relay"' in line or b'"__twarc"' in line:
            try:
                payload = orjson.loads(line)
            except orjson.JSONDecodeError:
                out.append(line)
                continue
            if isinstance(payload, dict):
                payload.pop("__relay", None)
                payload.pop("__twarc", None)
                line = orjson.dumps(payload)
        out.append(line)
    return out
