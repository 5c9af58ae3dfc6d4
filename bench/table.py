"""A row of the ``make bench`` table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One line of the table: the figure, its conditions, and the peers' beside it."""

    part: str
    figure: str
    relay: str
    python_peer: str = ""
    node_peer: str = ""
    note: str = ""
