"""Settings: one frozen dataclass, read from a TOML file < the environment < CLI flags.

Every key has a default (see ``config/relay.toml``), so ``relay run`` needs no
configuration at all. The environment is passed in as a mapping, never read
from ``os.environ`` here, so tests hand in a dict instead of patching.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from relay.config.sources import ENVIRONMENT, convert, from_env, from_file
from relay.core.archive import parse_url
from relay.core.auth import Policy, Secrets
from relay.errors import ConfigError
from relay.obs.logs import check_format, check_level, check_timestamps

__all__ = ["ENVIRONMENT", "SAMPLE_RETENTION", "SOURCES", "Settings"]

SAMPLE_RETENTION = 100_000
"""Tweets the bundled looping sample keeps by default: about 380 MB of store."""


@dataclass(frozen=True, slots=True)
class Settings:
    # server
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""
    """Base URL clients should use (https://relay.example.org); derived from Host when empty."""
    trusted_proxies: int = 0
    """Proxies in front of the relay that append to X-Forwarded-For (1 on Heroku).

    The client is the entry that many places from the right; it keys the limits per
    address. 0 ignores the header, which any client can forge.
    """
    send_buffer: int = 1 << 20
    """Bytes a connection may leave unsent from earlier publishes (the socket's write buffer)
    when the next publish comes; past it the client is closed as a slow consumer (4008)."""
    max_frame: int = 64 * 1024
    """Largest inbound client frame in bytes; larger closes the connection with 1009."""
    ping_interval: float = 20.0
    """Seconds between keepalive pings to a quiet client; 0 sends none."""
    ping_timeout: float = 20.0
    """Seconds to wait for a keepalive pong, and the longest one write may wait on a client."""
    open_timeout: float = 10.0
    """Seconds a new connection has to send its request (and be answered) before it is
    cut; the timeout websockets' own server used."""
    cors_origins: tuple[str, ...] = ("*",)
    """Web origins whose pages may read the object API and the event stream (CORS): ``*``
    any origin (the answers hold nothing a token does not guard), a list
    (``https://wall.example.org``) only those, empty none (same origin only)."""
    compression: bool = False
    """Offer permessage-deflate to clients that ask. Off: compressing costs CPU and zlib
    memory per connection (every browser asks), and frames are built once for everyone."""
    sse_keepalive: float = 15.0
    """Seconds between the keep-alive comments of a server-sent events stream (0: none):
    routers of a PaaS cut a response that sends nothing for a while (Heroku: 55 s)."""
    catch_ups_at_once: int = 2
    """Store reads of resume catch-ups at once over all connections; others wait their turn.

    Kept under the store's reader threads (3), so the object API always finds one free.
    """
    recovered_cap: int = 1000
    """Most stored tweets counted for ``recovered`` in ``subscribed``; past it the count stops."""
    coalesce_ms: float = 0.0
    """Milliseconds live publishes wait to go out together, one write per client (0: at the
    loop's next step). At a live rate (a tweet or a few a publish) the write per client is
    most of the cost; the wait shows in the delivery latency."""
    # access control
    secret: str = field(default="", repr=False)
    """HS256 key for tokens (RELAY_SECRET); without it only public channels are served."""
    public_channels: tuple[str, ...] = ("*",)
    """Channel patterns anyone may read without a token; empty makes every channel private."""
    max_connections_per_subject: int = 100
    max_connections_per_address: int = 200
    max_sockets_per_address: int = 400
    """TCP connections one socket address may hold open in any state (a half-sent request,
    plain HTTP, a stream); past it a new one is reset at once. Not applied behind trusted
    proxies, where every client has the proxy's address."""
    max_subscriptions: int = 50
    ops_per_second: float = 20.0
    ops_burst: int = 40
    refresh_grace: float = 30.0
    """Seconds a connection whose token expired has to send a ``refresh`` op."""
    previous_secret: str = field(default="", repr=False)
    """The secret before the last rotation; it verifies (never issues) tokens for a while."""
    previous_secret_until: float | None = None
    """Absolute end (unix seconds; ISO 8601 accepted) of the previous secret, so restarts never
    extend it; then tokens signed with it get 401 and open connections must refresh."""
    revoked_tokens_file: str = ""
    """File of revoked token ids (``jti``), one a line; re-read when it changes."""
    revoked_tokens_interval: float = 2.0
    """Seconds between checks of the revocation file for a change (mtime, size)."""
    # store
    db: str = "relay.db"
    database_url: str = field(default="", repr=False)
    """PostgreSQL URL (DATABASE_URL, postgres:// or postgresql://); set, it is the store
    instead of the SQLite file ``db`` (an explicit ``--db`` flag wins)."""
    lease_ttl: float = 15.0
    """Seconds the active ingester's writer lease lasts without renewal (PostgreSQL): a
    standby takes over within about twice this after the active one dies or freezes."""
    # bus (separate ingest and serve processes)
    redis_url: str = field(default="", repr=False)
    """Redis URL (REDIS_URL, redis:// or rediss://) of the bus between ``relay ingest`` and
    ``relay serve``; unset, ``relay run`` uses its in-process bus."""
    redis_tls_verify: bool = True
    """Verify the Redis server's TLS certificate; false for the self-signed certificates
    of PaaS add-ons (Heroku Redis), which still encrypts."""
    bus_maxlen: int = 2000
    """Entries (one a tweet) the Redis stream keeps, trimmed approximately. Redis holds about
    1.3x the body an entry: 6.6 KB for real tweets (5 KB bodies), so 2000 take about 13 MB
    and fit a 25 MB add-on; a serving process further behind reads from the store."""
    heartbeat_interval: float = 2.0
    """Seconds between the ingester's heartbeats (its head seq) on the bus."""
    bus_check_interval: float = 5.0
    """Seconds between a serving process's checks of the store's head (1 s while the bus is
    down): the store fills what the bus lost even when no heartbeat comes."""
    # object API
    query_timeout: float = 2.0
    """Seconds an object API query may run; past it the query stops and answers 503."""
    queries_per_client: int = 2
    """Object API requests one client (token subject, else address) may have in flight."""
    query_readers: int = 2
    """Reader threads for object API queries, apart from the stream's readers."""
    queries_waiting: int = 8
    """Object API requests waiting or running, all clients together; more answer 503
    (Retry-After) at once instead of queueing behind the readers."""
    max_sort_terms: int = 3
    """Most sort fields in one query (createdAt, seq, id, each once)."""
    max_in_items: int = 100
    """Most values in one ``$in`` list of ``q``."""
    max_offset: int = 100_000
    """Largest ``offset``; deeper pages use ``since_seq`` or a range in ``q``."""
    # source
    source: str = "replay"
    replay: str = ""
    """Recorded stream to replay; empty means the bundled sample."""
    replay_since: str = ""
    """Replaying an archive: from this seq (digits) or time (ISO 8601) on, included."""
    replay_until: str = ""
    """Replaying an archive: up to this seq or time, included."""
    speed: float = 1.0
    """Replay pace: 1 is the recorded pace, N is N times faster, 0 (``max``) is no pacing."""
    loop: bool | None = None
    """Replay the file again and again with fresh ids; default: on for the bundled sample only."""
    batch_size: int = 500
    parse_processes: int = 1
    """Worker processes that parse large batches (a replay at full speed, a backfill) on
    another core; 0 parses everything on the event loop. Batches of a few lines (a live
    stream) always parse in the relay's own process."""
    # the X API (live sources)
    x_bearer_token: str = field(default="", repr=False)
    x_api_base_url: str = "https://api.twitter.com"
    rules_file: str = "config/rules.toml"
    stall_timeout: float = 30.0
    """Seconds without a byte (keep-alives included) before the stream is dropped."""
    backfill_pages: int = 10
    """Most recent-search pages per rule when filling a gap after a reconnect."""
    poll_interval: float = 60.0
    poll_max_pages: int = 5
    # retention (run by the active writer only)
    retention_max_tweets: int | None = None
    """Keep at most this many tweets (the oldest go); 0 keeps all. Unset: 100,000 for the
    bundled looping sample (a demo never fills a disk), all for every other source."""
    retention_max_age: float = 0.0
    """Delete tweets received longer ago than this (seconds, or 90s, 30m, 12h, 7d); 0 keeps."""
    retention_interval: float = 60.0
    """Seconds between retention runs."""
    retention_batch: int = 1000
    """Tweets deleted per transaction (each a few ms of the writer; appends go between)."""
    # the archive (written by the active writer only)
    archive_url: str = field(default="", repr=False)
    """Where every committed tweet is archived: s3://bucket/prefix (S3, R2, MinIO: endpoint
    and credentials from the AWS_* variables) or file:///path; empty: no archive."""
    archive_object_tweets: int = 10_000
    """An object is cut at this many tweets (about 3 MB gzipped)..."""
    archive_object_interval: float = 60.0
    """...or once its first tweet has waited this long (seconds, or 90s, 5m), whichever first."""
    # logging
    log_level: str = "info"
    """debug, info, warning, error or critical."""
    log_format: str = "auto"
    """auto (rich on a terminal, plain otherwise), plain (one line an event), json, rich."""
    access_log: bool = True
    """A log line (logger ``relay.access``) per HTTP request and per WebSocket connection."""
    log_timestamps: str = "auto"
    """on, off, or auto: off where the platform stamps each line itself (``DYNO`` is set)."""

    def secrets(self) -> Secrets:
        """The keys tokens are verified with (the previous one only with its end time)."""
        return Secrets(self.secret, self.previous_secret, self.previous_secret_until or 0.0)

    def policy(self) -> Policy:
        return Policy(
            public_channels=self.public_channels,
            max_connections_per_subject=self.max_connections_per_subject,
            max_connections_per_address=self.max_connections_per_address,
            max_subscriptions=self.max_subscriptions,
            ops_per_second=self.ops_per_second,
            ops_burst=self.ops_burst,
        )

    @property
    def replay_loops(self) -> bool:
        return self.loop if self.loop is not None else not self.replay

    @property
    def kept_tweets(self) -> int:
        """The retention bound on the count in force (0: none)."""
        if self.retention_max_tweets is not None:
            return self.retention_max_tweets
        sample = self.source == "replay" and not self.replay and self.replay_loops
        return SAMPLE_RETENTION if sample else 0

    @classmethod
    def load(
        cls,
        *,
        file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        flags: Mapping[str, Any] | None = None,
    ) -> Settings:
        """Build settings with the precedence file < environment < flags."""
        values: dict[str, Any] = {}
        if file is not None:
            values.update(from_file(Path(file)))
        values.update(from_env(environ or {}))
        values.update({k: v for k, v in (flags or {}).items() if v is not None})
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        converted = {key: convert(key, value) for key, value in values.items()}
        settings = replace(cls(), **converted)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port}")
        if self.speed < 0:
            raise ConfigError(f"speed must be positive or 'max', got {self.speed}")
        if self.send_buffer < 1024:
            raise ConfigError("send_buffer must be at least 1024 bytes")
        if self.max_frame < 256:
            raise ConfigError("max_frame must be at least 256 bytes")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        if self.parse_processes < 0:
            raise ConfigError("parse_processes must be 0 or more")
        if self.secret and len(self.secret.encode()) < 32:
            raise ConfigError("RELAY_SECRET must be at least 32 bytes (HS256 wants a long key)")
        self._validate_secrets()
        if not self.secret and not self.public_channels:
            raise ConfigError(
                "every channel is private (public_channels is empty) but RELAY_SECRET is not "
                "set: set RELAY_SECRET to issue tokens, or make some channels public"
            )
        if self.query_timeout <= 0:
            raise ConfigError("query_timeout must be positive")
        if self.open_timeout <= 0:
            raise ConfigError("open_timeout must be positive")
        if not 0 <= self.coalesce_ms <= 1000:  # NaN fails too
            raise ConfigError("coalesce_ms must be 0 (off) to 1000 milliseconds")
        if not 0 <= self.sse_keepalive <= 3600:  # NaN fails too
            raise ConfigError("sse_keepalive must be 0 (none) to 3600 seconds")
        if not 1 <= self.max_sort_terms <= 3:
            raise ConfigError("max_sort_terms must be 1..3 (createdAt, seq, id)")
        if self.max_offset < 0:
            raise ConfigError("max_offset must not be negative")
        if self.trusted_proxies < 0:
            raise ConfigError("trusted_proxies must not be negative")
        for key in (
            "queries_per_client",
            "query_readers",
            "queries_waiting",
            "max_in_items",
            "max_connections_per_subject",
            "max_connections_per_address",
            "max_subscriptions",
            "ops_burst",
            "catch_ups_at_once",
            "recovered_cap",
        ):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1")
        if self.max_sockets_per_address < self.max_connections_per_address:
            raise ConfigError(
                "max_sockets_per_address must be at least max_connections_per_address "
                "(it counts the streams too)"
            )
        if self.ops_per_second <= 0 or self.refresh_grace < 0:
            raise ConfigError("ops_per_second must be positive and refresh_grace not negative")
        if self.stall_timeout <= 0 or self.poll_interval <= 0:
            raise ConfigError("stall_timeout and poll_interval must be positive")
        if self.backfill_pages < 0 or self.poll_max_pages < 1:
            raise ConfigError("backfill_pages must be >= 0 and poll_max_pages >= 1")
        if self.source not in SOURCES:
            raise ConfigError(
                f"unknown source {self.source!r}; choose one of: {', '.join(sorted(SOURCES))}"
            )
        if self.revoked_tokens_interval <= 0:
            raise ConfigError("revoked_tokens_interval must be positive")
        self._validate_scale_out()
        if self.retention_max_tweets is not None and self.retention_max_tweets < 0:
            raise ConfigError("retention_max_tweets must be 0 (keep all) or more")
        if self.retention_interval <= 0 or self.retention_batch < 1:
            raise ConfigError("retention_interval must be positive and retention_batch >= 1")
        self._validate_archive()
        check_level(self.log_level)
        check_format(self.log_format)
        check_timestamps(self.log_timestamps)

    def _validate_scale_out(self) -> None:
        if self.database_url and not self.database_url.startswith(("postgres://", "postgresql://")):
            raise ConfigError("DATABASE_URL must start with postgres:// or postgresql://")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://")):
            raise ConfigError("REDIS_URL must start with redis:// or rediss://")
        for key in ("lease_ttl", "heartbeat_interval", "bus_check_interval"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be positive")
        if self.bus_maxlen < 100:
            raise ConfigError("bus_maxlen must be at least 100")

    def _validate_archive(self) -> None:
        if self.archive_url:
            parse_url(self.archive_url)  # one line naming what is accepted
        if not 1 <= self.archive_object_tweets <= 1_000_000:
            raise ConfigError("archive_object_tweets must be 1..1,000,000")
        if not 0 < self.archive_object_interval <= 86_400:
            raise ConfigError("archive_object_interval must be positive, at most a day")

    def _validate_secrets(self) -> None:
        if self.previous_secret:
            if not self.secret:
                raise ConfigError("RELAY_PREVIOUS_SECRET is set but RELAY_SECRET is not")
            if len(self.previous_secret.encode()) < 32:
                raise ConfigError("RELAY_PREVIOUS_SECRET must be at least 32 bytes")
            if self.previous_secret == self.secret:
                raise ConfigError("RELAY_PREVIOUS_SECRET is the same as RELAY_SECRET")
            if self.previous_secret_until is None:
                raise ConfigError(
                    "RELAY_PREVIOUS_SECRET needs RELAY_PREVIOUS_SECRET_UNTIL: the absolute time "
                    "(ISO 8601 or unix seconds) after which its tokens are refused"
                )


SOURCES = {"replay", "x-stream", "x-poll"}
"""Source names ``--source`` accepts; live sources register themselves here."""
