"""Who may read what: access decisions from settings and tokens (``decisions.py``), the
revoked-token list (``revocation.py``) and the client address behind a PaaS router
(``forwarded.py``).

May import: config, obs, core, errors.
"""
