"""The SQLite store: one file, one writer thread off the event loop, group commits.

The same file names and roles as ``relay.store.postgres``.
"""
