"""The archive's format: object names and lines, with no I/O.

An archive is a folder of objects (an S3 prefix, a local folder), each a gzip of JSON
lines, one line a stored tweet. Object keys::

    <prefix>/<epoch-start>-<epoch>/<first-seq>-<last-seq>_<first-received>_<last-received>.jsonl.gz

``epoch-start`` is when the first tweet archived in that epoch was received, and the
received times those of the object's first and last tweets, all as UTC
``YYYYMMDDTHHMMSS.mmmZ``; seqs are zero-padded to 20 digits. So a listing sorts in
order across epochs (by their start) and within one (by seq), and a name tells its
epoch, seq range and time range without being read.

Each line: ``{"epoch": e, "seq": n, "received_at": "<store time text>", "channels":
[...], "tweet": <the served object>}``. The bytes are deterministic (gzip written with
``mtime=0`` at a fixed level): an upload repeated after a crash writes the same bytes
under the same key.
"""

from __future__ import annotations

import functools
import gzip
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from relay.core.times import time_from_unix
from relay.errors import ArchiveDamaged, ConfigError

SUFFIX = ".jsonl.gz"
SEQ_DIGITS = 20
GZIP_LEVEL = 6
"""Fixed, so the same lines always give the same bytes (zlib's default level)."""


@dataclass(frozen=True, slots=True)
class ArchivedTweet:
    """One line of an object: a stored tweet with its place in the store."""

    epoch: str
    seq: int
    received: float
    """When it was received (unix seconds, to the millisecond as stored)."""
    channels: tuple[str, ...]
    body: bytes
    """The served object as JSON, as the store holds it."""


@dataclass(frozen=True, slots=True)
class ObjectName:
    """What an object's key says: its epoch, seq range and time range."""

    epoch_start: float
    epoch: str
    first_seq: int
    last_seq: int
    first_received: float
    last_received: float

    def key(self, prefix: str) -> str:
        """The object's key under ``prefix`` (no leading or trailing slash needed)."""
        folder = f"{compact_time(self.epoch_start)}-{self.epoch}"
        name = (
            f"{self.first_seq:0{SEQ_DIGITS}d}-{self.last_seq:0{SEQ_DIGITS}d}"
            f"_{compact_time(self.first_received)}_{compact_time(self.last_received)}{SUFFIX}"
        )
        prefix = prefix.strip("/")
        return f"{prefix}/{folder}/{name}" if prefix else f"{folder}/{name}"


def compact_time(unix: float) -> str:
    """Unix seconds as ``YYYYMMDDTHHMMSS.mmmZ`` (UTC; sorts as text, safe in a key)."""
    text = time_from_unix(unix)  # YYYY-MM-DDTHH:MM:SS.mmmZ
    return text.replace("-", "").replace(":", "")


_COMPACT = r"\d{8}T\d{6}\.\d{3}Z"
_KEY = re.compile(
    rf"(?:.*/)?(?P<start>{_COMPACT})-(?P<epoch>[A-Za-z0-9_.]+)/"
    rf"(?P<first>\d{{{SEQ_DIGITS}}})-(?P<last>\d{{{SEQ_DIGITS}}})"
    rf"_(?P<first_at>{_COMPACT})_(?P<last_at>{_COMPACT}){re.escape(SUFFIX)}",
    re.ASCII,
)


def _unix_from_compact(text: str) -> float:
    moment = datetime.strptime(text, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
    return round(moment.timestamp(), 3)


def parse_key(key: str) -> ObjectName | None:
    """The name an archive object's key holds; None for any other key (a stray file)."""
    found = _KEY.fullmatch(key)
    if found is None:
        return None
    try:
        return ObjectName(
            epoch_start=_unix_from_compact(found["start"]),
            epoch=found["epoch"],
            first_seq=int(found["first"]),
            last_seq=int(found["last"]),
            first_received=_unix_from_compact(found["first_at"]),
            last_received=_unix_from_compact(found["last_at"]),
        )
    except ValueError:  # a date that does not exist (month 13)
        return None


def name_for(epoch_start: float, tweets: list[ArchivedTweet]) -> ObjectName:
    """The name of the object holding ``tweets`` (in seq order, one epoch, at least one)."""
    first, last = tweets[0], tweets[-1]
    return ObjectName(epoch_start, first.epoch, first.seq, last.seq, first.received, last.received)


def encode_line(tweet: ArchivedTweet) -> bytes:
    """One line, the served object embedded as the store encoded it (never re-encoded)."""
    head = orjson.dumps(
        {
            "epoch": tweet.epoch,
            "seq": tweet.seq,
            "received_at": time_from_unix(tweet.received),
            "channels": list(tweet.channels),
        }
    )
    return b"".join((head[:-1], b',"tweet":', tweet.body, b"}\n"))


def encode_object(tweets: Iterable[ArchivedTweet]) -> bytes:
    """An object's bytes: the lines, gzipped without a timestamp (the same every time)."""
    lines = b"".join(encode_line(tweet) for tweet in tweets)
    return gzip.compress(lines, compresslevel=GZIP_LEVEL, mtime=0)


def decode_object(data: bytes, *, where: str = "object") -> Iterator[ArchivedTweet]:
    """The tweets an object holds, in its order; :class:`~relay.errors.ArchiveDamaged`
    naming ``where`` and the line when it is not one this module wrote."""
    for tweet, _ in decode_values(data, where=where):
        yield tweet


def decode_values(
    data: bytes, *, where: str = "object"
) -> Iterator[tuple[ArchivedTweet, dict[str, Any]]]:
    """As :func:`decode_object`, each tweet with its object already decoded (a restore
    reads it, and need not decode the body again)."""
    try:
        text = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise ArchiveDamaged(f"{where}: not a gzip file ({exc})") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        yield _decode_line(line, f"{where} line {number}")


def _decode_line(line: bytes, where: str) -> tuple[ArchivedTweet, dict[str, Any]]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ArchiveDamaged(f"{where}: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ArchiveDamaged(f"{where}: not a JSON object")
    epoch, seq, received_at = value.get("epoch"), value.get("seq"), value.get("received_at")
    channels, tweet = value.get("channels"), value.get("tweet")
    if not isinstance(epoch, str) or not epoch:
        raise ArchiveDamaged(f"{where}: no epoch")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ArchiveDamaged(f"{where}: no seq")
    text_ok = isinstance(received_at, str) and len(received_at) <= 40
    received = _unix_from_text(received_at) if text_ok else None
    if received is None:
        raise ArchiveDamaged(f"{where}: no received_at")
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise ArchiveDamaged(f"{where}: no channels")
    if not isinstance(tweet, dict) or not isinstance(tweet.get("id"), str):
        raise ArchiveDamaged(f"{where}: no tweet")
    body = orjson.dumps(tweet)  # orjson wrote it: the same bytes again
    return ArchivedTweet(epoch, seq, received, tuple(channels), body), tweet


@functools.lru_cache(maxsize=4096)
def _unix_from_text(value: str) -> float | None:
    # Cached: the tweets of one ingest batch share their receive time, and strptime is
    # a fifth of decoding a line.
    try:
        moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return round(moment.timestamp(), 3)


@dataclass(frozen=True, slots=True)
class ArchiveUrl:
    """An archive's place: ``s3`` with a bucket and prefix, or ``file`` with a folder."""

    scheme: str
    bucket: str
    """The S3 bucket; empty for ``file``."""
    prefix: str
    """Inside the bucket, without slashes at either end; empty for ``file``."""
    path: Path | None = None
    """The folder for ``file``."""

    def __str__(self) -> str:
        if self.path is not None:
            return f"file://{self.path}"
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_url(text: str) -> ArchiveUrl:
    """``s3://bucket[/prefix]`` or ``file:///absolute/path``; anything else is a
    :class:`~relay.errors.ConfigError` that says what is accepted."""
    accepted = "expected s3://bucket/prefix or file:///absolute/path"
    parts = urlsplit(text.strip())
    if parts.query or parts.fragment:
        raise ConfigError(f"archive URL {text!r}: no query or fragment allowed; {accepted}")
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not bucket or "@" in bucket or ":" in bucket:
            raise ConfigError(f"archive URL {text!r} names no bucket; {accepted}")
        prefix = unquote(parts.path).strip("/")
        if "//" in prefix or any(piece in (".", "..") for piece in prefix.split("/")):
            raise ConfigError(f"archive URL {text!r}: the prefix has an empty or dot segment")
        return ArchiveUrl("s3", bucket, prefix)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"archive URL {text!r}: a file URL has no host; {accepted}")
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise ConfigError(f"archive URL {text!r}: the folder must be absolute; {accepted}")
        return ArchiveUrl("file", "", "", Path(path))
    raise ConfigError(f"archive URL {text!r}: unknown scheme; {accepted}")


# The archive's state in the store (the writer role's get_state/set_state): JSON texts.
CURSOR_KEY = "archive.cursor"
"""The last archived tweet: ``{"epoch", "seq", "received"}``."""
NEXT_KEY = "archive.next"
"""The next object's range, recorded before its upload: ``{"epoch", "first", "last",
"first_received", "last_received"}``; a restart uploads exactly this range again."""
EPOCH_START_KEY = "archive.epoch_start"
"""``{"epoch", "start", "first_seq"}``: when the first tweet archived in the epoch was
received (every object of the epoch shares it in its key), and its seq."""
DELETIONS_KEY = "archive.deletions"
"""The last entry of the store's deletion record the archive has applied (an integer)."""


@dataclass(frozen=True, slots=True)
class ArchiveMark:
    """A position in the archive: a tweet's epoch, seq and receive time."""

    epoch: str
    seq: int
    received: float

    def text(self) -> str:
        return orjson.dumps(
            {"epoch": self.epoch, "seq": self.seq, "received": self.received}
        ).decode()


@dataclass(frozen=True, slots=True)
class EpochStart:
    epoch: str
    start: float
    first_seq: int

    def text(self) -> str:
        value = {"epoch": self.epoch, "start": self.start, "first_seq": self.first_seq}
        return orjson.dumps(value).decode()


def parse_state(text: str | None) -> dict[str, object] | None:
    """A state value this module wrote; None when unset or not one (then started afresh)."""
    if not text:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def parse_mark(text: str | None) -> ArchiveMark | None:
    value = parse_state(text)
    if value is None:
        return None
    epoch, seq, received = value.get("epoch"), value.get("seq"), value.get("received")
    if not isinstance(epoch, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    if not isinstance(received, (int, float)) or isinstance(received, bool):
        return None
    return ArchiveMark(epoch, seq, float(received))


def parse_epoch_start(text: str | None) -> EpochStart | None:
    value = parse_state(text)
    if value is None:
        return None
    epoch, start, first = value.get("epoch"), value.get("start"), value.get("first_seq")
    if not isinstance(epoch, str) or not isinstance(first, int):
        return None
    if not isinstance(start, (int, float)) or isinstance(start, bool):
        return None
    return EpochStart(epoch, float(start), first)


def next_text(name: ObjectName) -> str:
    """The ``archive.next`` value for an object about to be uploaded."""
    return orjson.dumps(
        {
            "epoch": name.epoch,
            "start": name.epoch_start,
            "first": name.first_seq,
            "last": name.last_seq,
            "first_received": name.first_received,
            "last_received": name.last_received,
        }
    ).decode()


def parse_next(text: str | None) -> ObjectName | None:
    value = parse_state(text)
    if value is None:
        return None
    try:
        return ObjectName(
            float(value["start"]),  # type: ignore[arg-type]
            str(value["epoch"]),
            int(value["first"]),  # type: ignore[call-overload]
            int(value["last"]),  # type: ignore[call-overload]
            float(value["first_received"]),  # type: ignore[arg-type]
            float(value["last_received"]),  # type: ignore[arg-type]
        )
    except (KeyError, TypeError, ValueError):
        return None
