"""Replay a recorded stream through the same path as a live one.

The recorded format is JSONL: one X API payload a line, exactly as received; a
blank line is a keep-alive. A line may carry its receive time for pacing in
``"__relay": {"received_at": <unix seconds>}`` (twarc2's
``"__twarc": {"retrieved_at": "<ISO time>"}`` is read too); a time that is not a
usable Unix time (a string, NaN, 1e20, negative) is ignored and the source's
clock stands in. Files ending in ``.gz`` are read through gzip; a file that cannot
be read to its end (a cut ``.gz``) stops the source with one line, once every whole
line before the cut has been given out.

A recording declares its rules by what its lines matched: until the first pass has read
every line, :attr:`ReplaySource.rule_set` is open (more keys may come); after it, closed
over the keys seen. The bundled sample declares its rules up front (``declared``).

Without ``loop`` each line is yielded verbatim, so replaying a file twice stores
nothing new. With ``loop`` every pass rewrites each tweet's id (a fresh
snowflake), its edit history and its ``created_at`` (now), so a demo never runs
dry and never collides with an earlier pass.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from relay.core.rule_set import RuleSet
from relay.core.times import normalise_time, time_from_unix, usable_unix
from relay.core.tweets import rule_keys
from relay.errors import SourceError
from relay.sources import RawLine

log = logging.getLogger(__name__)

X_EPOCH_MS = 1288834974657
READ_BUFFER = 2**20
"""Bytes the replay reads from its file at a time."""
MAX_GAP = 5.0
"""Longest pause between two lines at recorded pace, so a quiet recording still demos."""

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class SnowflakeIds:
    """Tweet-like ids (ms since the X epoch << 22 | counter) that never repeat or go back."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._last = 0

    def next(self) -> str:
        candidate = (int(self.clock() * 1000) - X_EPOCH_MS) << 22
        self._last = max(candidate, self._last + 1)
        return str(self._last)


class ReplaySource:
    """A recorded stream as a :class:`relay.sources.Source`."""

    name = "replay"

    def __init__(
        self,
        path: str | Path,
        *,
        speed: float = 1.0,
        loop: bool = False,
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        declared: RuleSet | None = None,
    ) -> None:
        self.path = Path(path)
        self.speed = speed
        self.loop = loop
        self.clock = clock
        self.sleep = sleep
        self.ids = SnowflakeIds(clock)
        self.passes = 0
        self._declared = declared is not None
        self.rule_set = declared or RuleSet(frozenset(), False, f"the recording {self.path.name}")
        """The rule keys this replay produces (ingest records them in the store)."""

    async def batches(self) -> AsyncIterator[list[RawLine]]:
        """The lines in lists: at full speed (no pacing, no fresh ids) the whole lines of
        each read of the file at once (about 500 tweets), without a step of the event
        loop a line; otherwise one line a list, as :meth:`lines` gives them."""
        if self.speed or self.loop:
            async for line in self.lines():
                yield [line]
            return
        seen: RuleKeys | None = None if self._declared or self.passes else RuleKeys()
        for group in _read_groups(self.path):
            if seen is not None:
                for data in group:
                    seen.add(data)
            # verbatim, the recorded time too, so a replay rebuilds the same store
            yield [RawLine(data, _recorded_at(data) or self.clock()) for data in group]
        if seen is not None:
            self.rule_set = RuleSet(frozenset(seen.keys), True, self.rule_set.origin)
        self.passes += 1

    async def lines(self) -> AsyncIterator[RawLine]:
        while True:
            previous: float | None = None
            # The first pass reads which rules the recording's tweets matched.
            seen: RuleKeys | None = None if self._declared or self.passes else RuleKeys()
            for data in _read(self.path):
                if seen is not None:
                    seen.add(data)
                recorded_at = _recorded_at(data)
                if self.speed and recorded_at is not None:
                    if previous is not None and recorded_at > previous:
                        await self.sleep(min(recorded_at - previous, MAX_GAP) / self.speed)
                    previous = recorded_at
                if self.loop and data.strip():
                    data = self._refresh(data)
                    received = self.clock()
                else:  # verbatim: the recorded time too, so a replay rebuilds the same store
                    received = recorded_at or self.clock()
                yield RawLine(data, received)
            if seen is not None:
                self.rule_set = RuleSet(frozenset(seen.keys), True, self.rule_set.origin)
            self.passes += 1
            if not self.loop:
                return

    def _refresh(self, data: bytes) -> bytes:
        """The line with fresh tweet ids and times; a line it cannot read passes unchanged."""
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        if not isinstance(payload, dict):
            return data
        try:
            return self._refreshed(payload)
        except (TypeError, ValueError, OverflowError):  # too deep to encode again, say
            return data

    def _refreshed(self, payload: dict[str, Any]) -> bytes:
        items = payload.get("data")
        now = time_from_unix(self.clock())
        for item in items if isinstance(items, list) else [items]:
            if isinstance(item, dict) and "id" in item:
                fresh = self.ids.next()
                if item.get("conversation_id") == item["id"]:
                    item["conversation_id"] = fresh
                item["id"] = fresh
                item["edit_history_tweet_ids"] = [fresh]
                if "created_at" in item:
                    item["created_at"] = now
        payload.pop("__relay", None)
        payload.pop("__twarc", None)
        return orjson.dumps(payload)


_MATCHING_RULES = re.compile(rb'"matching_rules"\s*:\s*(\[[^\]]*\])')


class RuleKeys:
    """The rule keys the lines of a recording matched, read cheaply: the
    ``matching_rules`` array is cut out of the line, and each distinct array is decoded
    once (a stream has few); only a line whose array the cut cannot find is decoded whole."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self._arrays: dict[bytes, tuple[str, ...]] = {}

    def add(self, line: bytes) -> None:
        at = line.rfind(b'"matching_rules"')
        if at < 0:
            return
        match = _MATCHING_RULES.match(line, at)
        array = match.group(1) if match is not None else None
        if array is not None and array in self._arrays:
            return  # its keys are in already
        try:
            if array is not None:
                value: Any = orjson.loads(array)
            else:
                payload = orjson.loads(line)
                value = payload.get("matching_rules") if isinstance(payload, dict) else None
        except orjson.JSONDecodeError:  # a "]" inside a tag: the whole line, once
            try:
                payload = orjson.loads(line)
            except orjson.JSONDecodeError:
                return  # not JSON: the parser counts it as malformed
            value = payload.get("matching_rules") if isinstance(payload, dict) else None
        keys = rule_keys(value)
        self.keys.update(keys)
        if array is not None and len(self._arrays) < 4096:
            self._arrays[array] = keys


def _read(path: Path) -> Iterator[bytes]:
    """The lines of a recording, without their terminators (see :func:`_read_groups`)."""
    for group in _read_groups(path):
        yield from group


def _read_groups(path: Path) -> Iterator[list[bytes]]:
    """The lines of a recording, without their terminators, in a list a read.

    Raises :class:`SourceError` (one line, no traceback) when the file cannot be
    read to its end: missing, unreadable, or a cut or damaged ``.gz``. Every whole
    line before the damage has been given out by then: the line cut in two is the
    only one left out.
    """
    count = 0
    try:
        # Large reads: each read gives up the GIL, and at full speed getting it back from
        # the store's writer thread can take a switch interval (5 ms) every 8 KB.
        with path.open("rb", buffering=0) as handle:
            chunks = _gunzip(handle) if path.suffix == ".gz" else _chunks(handle)
            rest = b""
            for chunk in chunks:
                lines = (rest + chunk).split(b"\n") if rest else chunk.split(b"\n")
                rest = lines.pop()
                if lines:
                    count += len(lines)
                    yield [line.rstrip(b"\r") for line in lines]
            if rest.rstrip(b"\r"):
                count += 1
                yield [rest.rstrip(b"\r")]
    except zlib.error as exc:  # zlib's words ("incorrect header check") name no format
        raise SourceError(
            f"cannot read replay file {path} past line {count:,}: not gzip data, or damaged "
            f"gzip data ({exc})"
        ) from None
    except (OSError, EOFError) as exc:  # missing, unreadable, cut
        raise SourceError(f"cannot read replay file {path} past line {count:,}: {exc}") from None


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    while chunk := handle.read(READ_BUFFER):
        yield chunk


GZIP_WBITS = 16 + zlib.MAX_WBITS
"""zlib's window bits for a gzip header and trailer (checked: a damaged CRC raises)."""


def _gunzip(handle: IO[bytes]) -> Iterator[bytes]:
    """The decompressed bytes of a gzip file (one member or several), piece by piece.

    Not :func:`gzip.open` under a large buffer: a read that meets the cut raises, and
    everything that read had already decompressed (up to the whole buffer, about 500
    tweets; every line of a small file) was thrown away with it. Here each piece is
    given out as soon as it is decompressed, so a cut costs only the line it splits.
    """
    decompressor = zlib.decompressobj(GZIP_WBITS)
    pending = False  # inside a member: its end has not been read yet
    while data := handle.read(READ_BUFFER):
        while data:
            if not pending and not data.strip(b"\0"):
                break  # zero padding after the last member, as gzip.open allows
            pending = True
            out = decompressor.decompress(data, READ_BUFFER)
            if out:
                yield out
            data = decompressor.unconsumed_tail
            if decompressor.eof:  # a member ends; another may follow
                data = decompressor.unused_data
                decompressor = zlib.decompressobj(GZIP_WBITS)
                pending = False
    if pending:
        raise EOFError("the compressed data ends early (the file is cut)")


_RECEIVED_AT = re.compile(rb'"__relay":\s*\{"received_at":\s*([0-9.eE+-]+)\s*\}')


def _recorded_at(line: bytes) -> float | None:
    """The line's recorded receive time when it holds a usable one, else None."""
    # Our own recordings end with a fixed shape: read the number without parsing the line.
    match = _RECEIVED_AT.search(line, max(0, len(line) - 80))
    if match is not None:
        try:
            return usable_unix(float(match.group(1)))
        except ValueError:  # "1-2", "e": the pattern is loose on purpose
            return None
    if b'"__relay"' not in line and b'"__twarc"' not in line:
        return None
    try:
        payload: Any = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    meta = payload.get("__relay")
    if isinstance(meta, dict) and "received_at" in meta:
        return usable_unix(meta["received_at"])
    meta = payload.get("__twarc")
    if isinstance(meta, dict):
        # Normalised first: fromisoformat alone takes a naive time as local and
        # overflows at the ends of the range.
        retrieved = normalise_time(meta.get("retrieved_at"))
        if retrieved is not None:
            return datetime.fromisoformat(retrieved).timestamp()
    return None
