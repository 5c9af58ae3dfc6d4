"""The Qt client's network: plain GETs and one event stream, over ``QNetworkAccessManager``
(the Essentials wheel has no WebSocket module, and needs none: server-sent events are
plain HTTP). The event stream's bytes go through the terminal client's pure parser,
:class:`client_demo.sse.EventParser`, as they come.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from PySide6.QtCore import QObject, QUrl
from PySide6.QtNetwork import QNetworkAccessManager, QNetworkReply, QNetworkRequest

from client_demo.sse import BrokenStream, EventParser, ServerEvent

REQUEST_TIMEOUT_MS = 10_000
"""A plain GET not answered within this is given up (the relay is away or stuck)."""
STREAM_SILENCE_MS = 45_000
"""An event stream silent this long is dead: the relay sends a keep-alive every 15 s."""
USER_AGENT = b"relay-qt"


@dataclass(frozen=True)
class Answer:
    """What a GET came back with: ``status`` 0 when no HTTP answer came (``error`` says
    why: refused, timed out, no such host)."""

    status: int
    body: bytes
    error: str


def _answer(reply: QNetworkReply, body: bytes) -> Answer:
    status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
    if status is None:
        return Answer(0, b"", reply.errorString())
    return Answer(int(status), body, "")


class Link(QObject):
    """One relay at ``base`` (``http(s)://host:port``), with an optional token."""

    def __init__(self, base: str, token: str = "", parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.base = base
        self.token = token
        self.manager = QNetworkAccessManager(self)

    def request(self, url: str, params: dict[str, Any] | None = None) -> QNetworkRequest:
        query = "?" + urlencode(params, doseq=True) if params else ""
        request = QNetworkRequest(QUrl(url + query))
        request.setRawHeader(b"User-Agent", USER_AGENT)
        request.setAttribute(QNetworkRequest.Attribute.Http2AllowedAttribute, False)
        if self.token:
            request.setRawHeader(b"Authorization", f"Bearer {self.token}".encode())
        return request

    def get(
        self, url: str, params: dict[str, Any] | None, done: Callable[[Answer], None]
    ) -> QNetworkReply:
        """GET ``url``; ``done`` gets the answer (an error status is an answer too)."""
        request = self.request(url, params)
        request.setTransferTimeout(REQUEST_TIMEOUT_MS)
        reply = self.manager.get(request)

        def finished() -> None:
            answer = _answer(reply, bytes(reply.readAll().data()))
            reply.deleteLater()
            done(answer)

        reply.finished.connect(finished)
        return reply

    def stream(
        self,
        url: str,
        params: dict[str, Any],
        on_event: Callable[[ServerEvent], None],
        on_end: Callable[[Answer], None],
    ) -> EventStream:
        request = self.request(url, params)
        request.setRawHeader(b"Accept", b"text/event-stream")
        request.setRawHeader(b"Cache-Control", b"no-cache")
        request.setTransferTimeout(STREAM_SILENCE_MS)
        return EventStream(self.manager.get(request), on_event, on_end)


class EventStream:
    """One ``GET /v1/events``: each event to ``on_event`` as its bytes come; ``on_end``
    once, with the answer (200 when the relay ended a stream it had started; another
    status, with its body, when it refused it). :meth:`close` ends it quietly."""

    def __init__(
        self,
        reply: QNetworkReply,
        on_event: Callable[[ServerEvent], None],
        on_end: Callable[[Answer], None],
    ) -> None:
        self.reply = reply
        self.parser = EventParser()
        self._on_event = on_event
        self._on_end = on_end
        self._refusal = bytearray()
        self._broken = ""
        self._open = True
        reply.readyRead.connect(self._read)
        reply.finished.connect(self._finished)

    def _status(self) -> int:
        status = self.reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        return int(status) if status is not None else 0

    def _read(self) -> None:
        chunk = bytes(self.reply.readAll().data())
        if not self._open:
            return
        if self._status() != 200:
            self._refusal += chunk[: 64 * 1024 - len(self._refusal)]
            return
        try:
            events = self.parser.feed(chunk)
        except BrokenStream as exc:
            self._broken = str(exc)
            self.reply.abort()
            return
        for event in events:
            if not self._open:
                return  # the handler closed the stream (a token, a channel switch)
            self._on_event(event)

    def _finished(self) -> None:
        if not self._open:
            return
        self._read()
        if not self._open:
            return
        self._open = False
        status = self._status()
        if self._broken:
            answer = Answer(0, b"", self._broken)
        elif status:
            answer = Answer(status, bytes(self._refusal), "")
        else:
            answer = Answer(0, b"", self.reply.errorString())
        self.reply.deleteLater()
        self._on_end(answer)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.reply.abort()
            self.reply.deleteLater()
