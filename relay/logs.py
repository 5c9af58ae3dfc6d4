"""Log output a person and a log drain can both read.

Three formats (``RELAY_LOG_FORMAT``): ``rich`` on a terminal, ``plain`` (one line per
event, never wrapped: what a PaaS log drain splits on), ``json`` (one object a line:
time, level, logger, message and the event's fields). ``auto`` picks rich on a
terminal and plain otherwise.

Fields come from ``extra=`` (``log.info("closed", extra={"peer": p, "code": 4008})``):
plain appends them as ``key=value``, json as keys of the object, rich as plain text.
Every handler redacts secrets: the relay's own (``RELAY_SECRET``, ``X_BEARER_TOKEN``)
and what libraries print at debug, such as tweepy's ``Authorization: Bearer ...``.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import logging
import queue
import re
import sys
import time
from collections.abc import Iterable
from logging.handlers import QueueHandler, QueueListener
from typing import IO, Any

import orjson

from relay.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("auto", "plain", "json", "rich")
REDACTED = "[redacted]"

# Attributes every LogRecord has: whatever else a record carries came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
# Credentials in free text: an Authorization header's value, a token in a query string.
_CREDENTIALS = re.compile(
    r"(?P<key>(?:authorization['\"]?\s*[:=]\s*['\"]?(?:bearer|basic)\s+)"
    r"|(?:bearer\s+)|(?:(?:access_)?token=))(?P<value>[^\s'\"&,;}]+)",
    re.IGNORECASE,
)


def check_level(level: str) -> str:
    """``level`` in lower case, or a ConfigError that lists the levels there are."""
    name = str(level).strip().lower()
    if name not in LEVELS:
        raise ConfigError(f"unknown log level {level!r}; choose one of: {', '.join(LEVELS)}")
    return name


def check_format(fmt: str) -> str:
    name = str(fmt).strip().lower()
    if name not in FORMATS:
        raise ConfigError(
            f"unknown log format {fmt!r} (RELAY_LOG_FORMAT); choose one of: {', '.join(FORMATS)}"
        )
    return name


class Redactor(logging.Filter):
    """Takes secrets out of a record's message and fields before any handler formats it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Short values would redact ordinary words; real secrets are long.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _CREDENTIALS.sub(lambda m: m.group("key") + REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        for key in fields_of(record):
            value = record.__dict__[key]
            if isinstance(value, str):
                record.__dict__[key] = self.redact(value)
        return True


def fields_of(record: logging.LogRecord) -> list[str]:
    return [key for key in record.__dict__ if key not in _STANDARD and not key.startswith("_")]


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _one_line(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def _plain_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if not text or any(c in text for c in ' "=\\\n\r'):
        return '"' + _one_line(text).replace('"', '\\"') + '"'
    return text


class PlainFormatter(logging.Formatter):
    """``2026-11-23T20:50:01.123Z INFO relay.hub: message key=value``, one line always."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _timestamp(record.created),
            record.levelname,
            f"{record.name}:",
            _one_line(record.getMessage()),
        ]
        parts.extend(f"{key}={_plain_value(record.__dict__[key])}" for key in fields_of(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(f"exc={_plain_value(record.exc_text)}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in fields_of(record):
            event.setdefault(key, record.__dict__[key])
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            event["exc"] = record.exc_text
        return orjson.dumps(event, default=str).decode()


class RichFieldsFormatter(logging.Formatter):
    """Rich draws time and level; the message gets its fields appended as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        extra = " ".join(f"{k}={_plain_value(record.__dict__[k])}" for k in fields_of(record))
        return f"{message} {extra}" if extra else message


QUEUED_RECORDS = 10_000
"""Log records waiting for the writer thread at most; past it new ones are dropped and
counted (a line says how many once the writer catches up)."""


class _Writer(QueueListener):
    def enqueue_sentinel(self) -> None:
        # The queue may be full when the process stops: wait a little for room, then
        # give up on the rest (the writer thread is a daemon: it never holds up the exit).
        with contextlib.suppress(queue.Full):
            self.queue.put(self._sentinel, timeout=2.0)  # type: ignore[attr-defined]


class QueueFront(QueueHandler):
    """Log records go to a queue that one thread writes out.

    A handler writing to stderr blocks the event loop whenever stderr does: a log drain
    or a terminal that reads slowly, while a flood of requests each logs an access line.
    The queue is bounded: when the writer falls behind, records are dropped and counted
    instead of stalling the relay or growing without end.
    """

    def __init__(self, handler: logging.Handler, size: int = QUEUED_RECORDS) -> None:
        super().__init__(queue.Queue(size))
        self.dropped = 0
        self.listener = _Writer(self.queue, handler, respect_handler_level=True)
        self.listener.start()
        self._running = True
        atexit.register(self.close)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The message merged and the traceback as text (the writer thread formats the
        # rest), fields kept: unlike QueueHandler's, which formats everything into msg.
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = record.exc_text or logging.Formatter().formatException(
                record.exc_info
            )
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                note = logging.makeLogRecord(
                    {
                        "name": "relay.logs",
                        "levelno": logging.WARNING,
                        "levelname": "WARNING",
                        "msg": f"{self.dropped} log records dropped: the log output is too slow",
                    }
                )
                self.queue.put_nowait(note)
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        if self._running:  # what is queued is written out before the process ends
            self._running = False
            self.listener.enqueue_sentinel()
            thread = self.listener._thread
            if thread is not None:
                thread.join(5.0)
            self.listener._thread = None
        super().close()


def resolve_format(fmt: str, stream: IO[str]) -> str:
    fmt = check_format(fmt)
    if fmt != "auto":
        return fmt
    isatty = getattr(stream, "isatty", None)
    return "rich" if isatty is not None and isatty() else "plain"


def setup_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
    background: bool = False,
) -> str:
    """Configure the root logger; returns the format chosen. Raises ConfigError.

    ``background``: lines are written by a thread of their own (see :class:`QueueFront`),
    as the long-running commands want."""
    level = check_level(level)
    out = stream if stream is not None else sys.stderr
    chosen = resolve_format(fmt, out)
    handler: logging.Handler
    if chosen == "rich":
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(
            console=Console(file=out, soft_wrap=True),
            show_path=False,
            rich_tracebacks=False,
            markup=False,
        )
        handler.setFormatter(RichFieldsFormatter())
    else:
        handler = logging.StreamHandler(out)
        handler.setFormatter(JsonFormatter() if chosen == "json" else PlainFormatter())
    front = QueueFront(handler) if background else handler
    front.addFilter(Redactor(secrets))  # before a record is queued or written
    logging.basicConfig(level=level.upper(), handlers=[front], force=True)
    # A line per frame and per job run: too much even at debug. tweepy and requests do
    # log at debug (their request headers: redacted above).
    for name in ("websockets", "apscheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return chosen
