"""relay-demo: a terminal client for a running relay (stub; the full client is its own issue)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    print("relay-demo: not implemented yet")
    return 0
