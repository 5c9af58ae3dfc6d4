"""The PostgreSQL store: many processes, one active writer holding a lease.

The same file names and roles as ``relay.store.sqlite``.
"""
