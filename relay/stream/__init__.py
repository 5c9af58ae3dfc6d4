"""The serving side's fan-out: the hub (channels, catch-up from the store, publish once
per channel), the session (one client's subscriptions and send side), the follower (bus
-> hub, gaps read from the store) and the deletion announcer. Runs in ``relay run`` and
``relay serve``.

May import: bus, store, obs, config, core, errors. Never the ingest side (a contract).
"""
