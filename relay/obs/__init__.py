"""Observability, at the bottom so that every package may use it: log formats and the
writer thread (``logs.py``), Prometheus metrics (``metrics.py``), log sampling,
readiness, and waits logged once per state change.

May import: ``relay.errors`` only.
"""
