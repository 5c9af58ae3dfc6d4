"""tweet-relay: ingest a tweet stream, persist every tweet, broadcast it over WebSocket."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tweet-relay")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"
