"""The archive: every committed tweet kept in object storage (S3 and S3-compatible
services, or a local folder), in objects named and written by :mod:`relay.core.archive`.

- :mod:`relay.archive.bucket`: the archive's URL and its objects (obstore);
- the active writer's job that archives what the store commits, its cursor kept in the
  store, is :mod:`relay.jobs.archive`.

Below the store (a layer of its own): it may import config, obs, core and errors, never
the store, so that sources (which never reach the store) read archives too.
"""
