"""The end of a source that ends (a replay without ``--loop``): one summary line.

``relay run --no-loop`` logs it once everything the recording held is stored and
published, and ``--exit-when-done`` then stops the relay (clients drained, exit 0), so
a script or a CI job waits for the process instead of polling counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.obs.metrics import Metrics


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """What one run of a source that ended did, from the relay's own counters."""

    lines: int
    """Every line read: payloads, keep-alives and malformed lines."""
    stored: int
    duplicates: int
    malformed: int
    cut: str = ""
    """Why the source stopped before its end (a cut recording), or "" when it ended."""
    skipped: int = 0
    """Tweets left out of readable payloads (no usable id, no text, ...): with the stored,
    the duplicates and the malformed lines, every line is accounted for."""

    def __str__(self) -> str:
        counts = (
            f"{self.lines} lines, {self.stored} stored, "
            f"{self.duplicates} duplicates, {self.malformed} malformed"
            + (f", {self.skipped} tweets skipped" if self.skipped else "")
        )
        if self.cut:
            return f"replay cut short: {counts} before the cut ({self.cut})"
        return f"replay finished: {counts}"


def summary_of(metrics: Metrics, *, cut: str = "") -> ReplaySummary:
    registry = metrics.registry

    def value(name: str, **labels: str) -> int:
        return int(registry.get_sample_value(name, labels) or 0)

    kinds = ("payload", "keepalive", "malformed")
    return ReplaySummary(
        lines=sum(value("relay_lines_total", kind=kind) for kind in kinds),
        stored=value("relay_tweets_stored_total"),
        duplicates=value("relay_duplicates_dropped_total"),
        malformed=value("relay_lines_total", kind="malformed"),
        cut=cut,
        skipped=sum(
            int(sample.value)
            for family in metrics.skipped.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        ),
    )
