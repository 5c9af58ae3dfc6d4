"""Log output a person and a log drain can both read.

Three formats (``RELAY_LOG_FORMAT``): ``rich`` on a terminal, ``plain`` (one line per
event, never wrapped: what a PaaS log drain splits on), ``json`` (one object a line:
time, level, logger, message and the event's fields). ``auto`` picks rich on a
terminal and plain otherwise.

Fields come from ``extra=`` (``log.info("closed", extra={"peer": p, "code": 4008})``):
plain appends them as ``key=value``, json as keys of the object, rich as plain text.
Every handler redacts secrets: the relay's own (``RELAY_SECRET``, ``X_BEARER_TOKEN``),
what libraries print at debug, such as tweepy's ``Authorization: Bearer ...``, and
anything shaped like a JWT, wherever a client put it (a path, a channel name, a header
that made a refusal's reason). Every format writes control characters as escapes
(``\x1b``), in the message, every field and tracebacks: a client's bytes never drive
the terminal or the log viewer that shows them.

``RELAY_LOG_TIMESTAMPS`` (``auto``, ``on``, ``off``) leaves our time out of each line
where the platform stamps lines itself (``auto``: when ``DYNO`` says the process runs on
a Heroku-style router), so a line does not carry two.
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
from collections.abc import Callable, Iterable, Mapping
from logging.handlers import QueueHandler, QueueListener
from typing import IO, Any

import orjson

from relay.errors import ConfigError

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("auto", "plain", "json", "rich")
TIMESTAMPS = ("auto", "on", "off")
PLATFORM_STAMPS = ("DYNO",)
"""Environment variables that say the platform puts its own time on every line."""
REDACTED = "[redacted]"
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{6,}(?:(?:\.|%2[Ee])[A-Za-z0-9_-]*){0,2}")
"""A JWT or a piece of one: its header is base64 of ``{"``, which starts ``eyJ``.

Redacted by shape wherever it is: a client can put a token anywhere (a path, a channel
name, a refused header's reason), and a cut piece still carries its claims."""

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


def check_timestamps(choice: str) -> str:
    name = str(choice).strip().lower()
    if name not in TIMESTAMPS:
        raise ConfigError(
            f"unknown log timestamps choice {choice!r} (RELAY_LOG_TIMESTAMPS); choose one "
            f"of: {', '.join(TIMESTAMPS)}"
        )
    return name


def resolve_timestamps(choice: str, environ: Mapping[str, str]) -> bool:
    """Whether lines carry our time: ``auto`` leaves it to a platform that stamps lines."""
    name = check_timestamps(choice)
    if name != "auto":
        return name == "on"
    return not any(environ.get(variable) for variable in PLATFORM_STAMPS)


class Redactor(logging.Filter):
    """Takes secrets and token-shaped text out of a record before any handler formats it:
    its message, every field (inside lists and mappings too) and its traceback."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Short values would redact ordinary words; real secrets are long.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _CREDENTIALS.sub(lambda m: m.group("key") + REDACTED, text)
        return JWT_SHAPE.sub(REDACTED, text) if "eyJ" in text else text

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
            record.__dict__[key] = _strings(record.__dict__[key], self.redact)
        return True


def _strings(value: Any, change: Callable[[str], str]) -> Any:
    """``value`` with ``change`` applied to every string in it (keys included)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, (list, tuple)):
        return [_strings(item, change) for item in value]
    if isinstance(value, Mapping):
        return {change(str(key)): _strings(item, change) for key, item in value.items()}
    return value


def fields_of(record: logging.LogRecord) -> list[str]:
    return [key for key in record.__dict__ if key not in _STANDARD and not key.startswith("_")]


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


# C0 (tab and newline are the formats' own business), DEL, C1, the Unicode line and
# paragraph separators and the bidirectional overrides: what can move a terminal's
# cursor, colour it, retitle it, split a line in a viewer, or reorder what it shows.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_LINE_BREAKS = re.compile("[\n\t]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str, *, one_line: bool = True) -> str:
    """``text`` with control characters as escapes (``\\x1b``); ``one_line`` escapes
    newlines and tabs too (a JSON string keeps them: JSON escapes them itself)."""
    text = _CONTROLS.sub(_visible, text)
    return _LINE_BREAKS.sub(_visible, text) if one_line else text


_QUOTED = re.compile('[\\s"=\\\\]')


def _plain_value(value: Any) -> str:
    """A field's value as logfmt writes it: bare, or quoted with ``\\`` and ``"`` escaped."""
    text = value if isinstance(value, str) else str(value)
    if text and not _QUOTED.search(text) and not _CONTROLS.search(text):
        return text
    return '"' + escape_controls(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (str, list, tuple, Mapping)):
        return _strings(value, lambda text: escape_controls(text, one_line=False))
    return escape_controls(str(value), one_line=False)


class PlainFormatter(logging.Formatter):
    """``2026-11-23T20:50:01.123Z INFO relay.stream.hub: message key=value``, one line always.

    Without ``timestamps`` the line starts at the level (the platform stamps it)."""

    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record.created)] if self.timestamps else []
        parts += [record.levelname, f"{record.name}:", escape_controls(record.getMessage())]
        parts.extend(f"{key}={_plain_value(record.__dict__[key])}" for key in fields_of(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            parts.append(f"exc={_plain_value(record.exc_text)}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and the event's fields.

    Without ``timestamps`` there is no ``time`` (the platform stamps the line)."""

    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {"time": _timestamp(record.created)} if self.timestamps else {}
        event["level"] = record.levelname.lower()
        event["logger"] = record.name
        event["message"] = escape_controls(record.getMessage(), one_line=False)
        for key in fields_of(record):
            event.setdefault(key, _json_value(record.__dict__[key]))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            event["exc"] = escape_controls(record.exc_text, one_line=False)
        return orjson.dumps(event, default=str).decode()


class RichFieldsFormatter(logging.Formatter):
    """Rich draws time and level; the message gets its fields appended as ``key=value``,
    and a traceback follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        message = escape_controls(record.getMessage())
        extra = " ".join(f"{k}={_plain_value(record.__dict__[k])}" for k in fields_of(record))
        line = f"{message} {extra}" if extra else message
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + escape_controls(record.exc_text, one_line=False)
        return line


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
                        "name": "relay.obs.logs",
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


class Output(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines to ``stream``, or to whatever ``sys.stderr`` is when each is written.

    Following ``sys.stderr`` writes where the process's error output is now, not where it
    was at the start (pytest swaps it for each test's capture and closes that). A line
    whose output has closed is dropped quietly: there is no one to tell, and logging's
    "--- Logging error ---" report would only go to a closed file or a stranger's output.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        logging.Handler.__init__(self)
        self._stream = stream

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    @stream.setter
    def stream(self, value: IO[str] | None) -> None:
        self._stream = value

    def handleError(self, record: logging.LogRecord) -> None:
        if not _closed(self.stream):
            super().handleError(record)


def _closed(stream: Any) -> bool:
    return bool(getattr(stream, "closed", False))


def _rich_handler(stream: IO[str] | None, timestamps: bool) -> logging.Handler:
    from rich.console import Console
    from rich.logging import RichHandler

    class RichOutput(RichHandler):
        """Rich's handler, dropping lines quietly once its output has closed (see Output)."""

        def handleError(self, record: logging.LogRecord) -> None:
            if not _closed(self.console.file):
                super().handleError(record)

    # stderr=True: the console writes to sys.stderr as it is at each line.
    console = (
        Console(file=stream, soft_wrap=True) if stream else Console(stderr=True, soft_wrap=True)
    )
    handler = RichOutput(
        console=console, show_path=False, show_time=timestamps, rich_tracebacks=False, markup=False
    )
    handler.setFormatter(RichFieldsFormatter())
    return handler


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
    timestamps: bool = True,
) -> str:
    """Configure the root logger; returns the format chosen. Raises ConfigError.

    ``stream`` None writes to ``sys.stderr``, whatever it is when a line is written.
    ``background``: lines are written by a thread of their own (see :class:`QueueFront`),
    as the long-running commands want. ``timestamps`` False leaves our time out of each
    line (see :func:`resolve_timestamps`)."""
    level = check_level(level)
    chosen = resolve_format(fmt, stream if stream is not None else sys.stderr)
    handler: logging.Handler
    if chosen == "rich":
        handler = _rich_handler(stream, timestamps)
    else:
        handler = Output(stream)
        handler.setFormatter(
            JsonFormatter(timestamps=timestamps)
            if chosen == "json"
            else PlainFormatter(timestamps=timestamps)
        )
    front = QueueFront(handler) if background else handler
    front.addFilter(Redactor(secrets))  # before a record is queued or written
    logging.basicConfig(level=level.upper(), handlers=[front], force=True)
    # A line per frame and per job run: too much even at debug. tweepy and requests do
    # log at debug (their request headers: redacted above).
    for name in ("websockets", "apscheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return chosen
