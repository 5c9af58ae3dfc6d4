"""The composition: the CLI (``cli.py``, the commands in ``commands/``), process launch and signals (``launch.py``) and
:class:`Relay` (``relay.py``), which wires an ingest side and a serve side for ``relay
run``, ``relay ingest`` and ``relay serve``.

May import: everything below it; only ``relay.testing`` imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.app.relay import Relay

__all__ = ["Relay"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `relay --help` and the small commands start without loading
    # the whole relay.
    if name == "Relay":
        from relay.app.relay import Relay

        return Relay
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
