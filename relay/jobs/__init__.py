"""Periodic work on APScheduler (``scheduler.py``): retention, the deletion applier (the
active writer's), the stats sampler.

May import: stream, store, config, obs, core, errors.
"""
