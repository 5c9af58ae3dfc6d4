"""The serving side's fan-out: the hub (channels, publish once per channel), the
session (one client's subscriptions and send side, one close path), catch-ups from the
store, payloads framed once per transport kind, the transport seam (``transport.py``), the
follower (bus -> hub, gaps read from the store) and the deletion announcer. Runs in
``relay run`` and ``relay serve``.

May import: bus, store, obs, config, core, errors. Never the ingest side, never a
transport's library (contracts): clients are reached through ``transport.py``.
"""
