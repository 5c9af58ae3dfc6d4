"""The pure core: tweets (X payloads in, stored objects out), the wire protocol's frames
and values, subscription filters, the object API's query, text segmentation for search,
tokens and grants, rule sets, deletion ids. No I/O, no event loop, no database: functions
over bytes and dicts, tested without sockets.

May import: ``relay.errors`` only.
"""
