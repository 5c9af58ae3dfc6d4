"""Record what a source sends, in the format the replay source reads.

Each payload line is written exactly as received, with its receive time spliced in as
``"__relay": {"received_at": ...}`` (the replay source paces by it; the parser ignores
it), so a live session can be replayed later bit for bit into an identical store.
Keep-alives are not written; a line that is not a JSON object is written unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relay.core.tweets import parse_line
from relay.errors import MalformedPayload
from relay.sources import RawLine, Source


@dataclass
class Recorded:
    lines: int = 0
    tweets: int = 0


def stamp(line: RawLine) -> bytes:
    """The line with its receive time; unchanged when it is not a JSON object."""
    data = line.data.rstrip()
    if not (data.startswith(b"{") and data.endswith(b"}")):
        return line.data
    meta = b'"__relay":{"received_at":' + f"{line.received_at:.3f}".encode() + b"}"
    body = data[:-1].rstrip()
    return body + (b"," if body != b"{" else b"") + meta + b"}"


async def record(
    source: Source,
    out: Path,
    *,
    max_tweets: int | None = None,
    duration: float | None = None,
    progress: Callable[[Recorded], None] = lambda _: None,
) -> Recorded:
    """Write ``source``'s lines to ``out`` until a limit, the end of the source, or cancel."""
    done = Recorded()
    with out.open("wb") as handle, contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration):
            lines = source.lines()
            try:
                async for line in lines:
                    if not line.data.strip():
                        continue
                    handle.write(stamp(line) + b"\n")
                    handle.flush()
                    done.lines += 1
                    with contextlib.suppress(MalformedPayload):
                        done.tweets += len(parse_line(line.data).tweets)
                    progress(done)
                    if max_tweets is not None and done.tweets >= max_tweets:
                        break
            finally:
                closer = getattr(lines, "aclose", None)
                if closer is not None:
                    await closer()
    return done
