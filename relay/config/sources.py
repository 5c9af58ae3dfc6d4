"""Where settings come from: their environment names, the TOML file, and the text-to-value
converters every source goes through (:class:`relay.config.Settings` puts them together).

May import: core, errors.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from relay.core.values import (
    parse_bool,
    parse_duration,
    parse_int,
    parse_origins,
    parse_patterns,
    parse_speed,
    parse_time,
)
from relay.errors import ConfigError

# The environment names of each setting. PORT is what a PaaS sets.
ENVIRONMENT = {
    "host": ("RELAY_HOST",),
    "port": ("PORT", "RELAY_PORT"),
    "public_url": ("RELAY_PUBLIC_URL",),
    "trusted_proxies": ("RELAY_TRUSTED_PROXIES",),
    "send_buffer": ("RELAY_SEND_BUFFER",),
    "max_frame": ("RELAY_MAX_FRAME",),
    "ping_interval": ("RELAY_PING_INTERVAL",),
    "ping_timeout": ("RELAY_PING_TIMEOUT",),
    "open_timeout": ("RELAY_OPEN_TIMEOUT",),
    "cors_origins": ("RELAY_CORS_ORIGINS",),
    "compression": ("RELAY_COMPRESSION",),
    "sse_keepalive": ("RELAY_SSE_KEEPALIVE",),
    "catch_ups_at_once": ("RELAY_CATCH_UPS_AT_ONCE",),
    "coalesce_ms": ("RELAY_COALESCE_MS",),
    "recovered_cap": ("RELAY_RECOVERED_CAP",),
    "secret": ("RELAY_SECRET",),
    "public_channels": ("RELAY_PUBLIC_CHANNELS",),
    "max_connections_per_subject": ("RELAY_MAX_CONNECTIONS_PER_SUBJECT",),
    "max_connections_per_address": ("RELAY_MAX_CONNECTIONS_PER_ADDRESS",),
    "max_sockets_per_address": ("RELAY_MAX_SOCKETS_PER_ADDRESS",),
    "max_subscriptions": ("RELAY_MAX_SUBSCRIPTIONS",),
    "ops_per_second": ("RELAY_OPS_PER_SECOND",),
    "ops_burst": ("RELAY_OPS_BURST",),
    "refresh_grace": ("RELAY_REFRESH_GRACE",),
    "previous_secret": ("RELAY_PREVIOUS_SECRET",),
    "previous_secret_until": ("RELAY_PREVIOUS_SECRET_UNTIL",),
    "revoked_tokens_file": ("RELAY_REVOKED_TOKENS",),
    "revoked_tokens_interval": ("RELAY_REVOKED_TOKENS_INTERVAL",),
    "db": ("RELAY_DB",),
    "database_url": ("DATABASE_URL",),
    "lease_ttl": ("RELAY_LEASE_TTL",),
    "redis_url": ("REDIS_URL",),
    "redis_tls_verify": ("RELAY_REDIS_TLS_VERIFY",),
    "bus_maxlen": ("RELAY_BUS_MAXLEN",),
    "heartbeat_interval": ("RELAY_HEARTBEAT_INTERVAL",),
    "bus_check_interval": ("RELAY_BUS_CHECK_INTERVAL",),
    "query_timeout": ("RELAY_QUERY_TIMEOUT",),
    "queries_per_client": ("RELAY_QUERIES_PER_CLIENT",),
    "query_readers": ("RELAY_QUERY_READERS",),
    "queries_waiting": ("RELAY_QUERIES_WAITING",),
    "max_sort_terms": ("RELAY_MAX_SORT_TERMS",),
    "max_in_items": ("RELAY_MAX_IN_ITEMS",),
    "max_offset": ("RELAY_MAX_OFFSET",),
    "source": ("RELAY_SOURCE",),
    "replay": ("RELAY_REPLAY",),
    "replay_since": ("RELAY_REPLAY_SINCE",),
    "replay_until": ("RELAY_REPLAY_UNTIL",),
    "speed": ("RELAY_SPEED",),
    "loop": ("RELAY_LOOP",),
    "batch_size": ("RELAY_BATCH_SIZE",),
    "parse_processes": ("RELAY_PARSE_PROCESSES",),
    "x_bearer_token": ("X_BEARER_TOKEN",),
    "x_api_base_url": ("X_API_BASE_URL",),
    "rules_file": ("RELAY_RULES",),
    "stall_timeout": ("RELAY_STALL_TIMEOUT",),
    "backfill_pages": ("RELAY_BACKFILL_PAGES",),
    "poll_interval": ("RELAY_POLL_INTERVAL",),
    "poll_max_pages": ("RELAY_POLL_MAX_PAGES",),
    "log_level": ("RELAY_LOG_LEVEL",),
    "log_format": ("RELAY_LOG_FORMAT",),
    "access_log": ("RELAY_ACCESS_LOG",),
    "log_timestamps": ("RELAY_LOG_TIMESTAMPS",),
    "retention_max_tweets": ("RELAY_RETENTION_MAX_TWEETS",),
    "retention_max_age": ("RELAY_RETENTION_MAX_AGE",),
    "retention_interval": ("RELAY_RETENTION_INTERVAL",),
    "retention_batch": ("RELAY_RETENTION_BATCH",),
    "archive_url": ("RELAY_ARCHIVE_URL",),
    "archive_object_tweets": ("RELAY_ARCHIVE_OBJECT_TWEETS",),
    "archive_object_interval": ("RELAY_ARCHIVE_OBJECT_INTERVAL",),
}


def from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, names in ENVIRONMENT.items():
        for name in names:  # later names win: RELAY_PORT over PORT
            # An empty value means "unset", except where empty says something (no public
            # channels at all).
            if name in environ and (environ[name] != "" or key in EMPTY_IS_A_VALUE):
                values[key] = environ[name]
    return values


EMPTY_IS_A_VALUE = {"public_channels", "cors_origins"}


def from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Sections only group keys for the reader; names are unique across them.
    values: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            values.update(value)
        else:
            values[key] = value
    return values


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "port": parse_int,
    "trusted_proxies": parse_int,
    "send_buffer": parse_int,
    "max_frame": parse_int,
    "batch_size": parse_int,
    "parse_processes": parse_int,
    "ping_interval": float,
    "ping_timeout": float,
    "open_timeout": float,
    "compression": parse_bool,
    "sse_keepalive": float,
    "catch_ups_at_once": parse_int,
    "coalesce_ms": float,
    "recovered_cap": parse_int,
    "speed": parse_speed,
    "public_channels": parse_patterns,
    "cors_origins": parse_origins,
    "max_connections_per_subject": parse_int,
    "max_connections_per_address": parse_int,
    "max_sockets_per_address": parse_int,
    "max_subscriptions": parse_int,
    "ops_burst": parse_int,
    "stall_timeout": float,
    "poll_interval": float,
    "backfill_pages": parse_int,
    "poll_max_pages": parse_int,
    "ops_per_second": float,
    "refresh_grace": float,
    "previous_secret_until": parse_time,
    "revoked_tokens_interval": float,
    "loop": parse_bool,
    "query_timeout": float,
    "queries_per_client": parse_int,
    "query_readers": parse_int,
    "queries_waiting": parse_int,
    "max_sort_terms": parse_int,
    "max_in_items": parse_int,
    "max_offset": parse_int,
    "lease_ttl": float,
    "redis_tls_verify": parse_bool,
    "access_log": parse_bool,
    "retention_max_tweets": parse_int,
    "retention_max_age": parse_duration,
    "retention_interval": parse_duration,
    "retention_batch": parse_int,
    "archive_object_tweets": parse_int,
    "archive_object_interval": parse_duration,
    "bus_maxlen": parse_int,
    "heartbeat_interval": float,
    "bus_check_interval": float,
}


def convert(key: str, value: Any) -> Any:
    converter = _CONVERTERS.get(key, str)
    try:
        return converter(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value for {key}: {value!r} ({exc})") from None
