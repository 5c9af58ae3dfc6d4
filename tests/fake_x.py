"""Helpers of the X source tests around the shipped fake X API (:mod:`relay.testing.fake_x`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson

from relay.testing.fake_x import TOKEN, Step
from relay.testing.fake_x import FakeXApi as FakeX

__all__ = ["RULES_TOML", "TOKEN", "FakeTime", "FakeX", "Step", "ids_of", "wire", "x_lines"]


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
    from relay.sources.synth import generate

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
