"""What ``/readyz`` answers: the relay's readiness, set by whoever knows it changed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/readyz`` says: ``starting``, ``ready``, ``unavailable`` (a part it needs is
    down for now), ``stopping`` or ``failed`` (and why)."""

    status: str
    error: str = ""
    """One line, for ``failed``: why the relay cannot go on."""


READY = Readiness("ready")
