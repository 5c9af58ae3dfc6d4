"""Small parts a relay process is wired from: the listening socket, the bus, limits."""

from __future__ import annotations

import errno
import logging
import socket
import time

from relay.bus import Bus
from relay.bus.memory import MemoryBus
from relay.config import Settings
from relay.core.query import QueryLimits
from relay.errors import ConfigError
from relay.obs.metrics import Metrics
from relay.web.routes import ApiLimits

log = logging.getLogger(__name__)


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host`` (a name, IPv4 or IPv6; empty: every interface)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host or 'every interface'} is in use (another relay?): "
                "pick another with --port N or PORT=N (--port 0 picks a free one)"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def open_bus(settings: Settings, epoch: str, metrics: Metrics) -> Bus:
    if settings.redis_url:
        from relay.bus.redis import RedisBus

        return RedisBus(
            settings.redis_url,
            epoch=epoch,
            maxlen=settings.bus_maxlen,
            heartbeat_interval=settings.heartbeat_interval,
            tls_verify=settings.redis_tls_verify,
            metrics=metrics,
        )
    return MemoryBus()


def writer_silence(settings: Settings) -> float:
    """Seconds without a heartbeat from the writer after which a serving process says
    that no writer publishes: a few heartbeats missed, and at least one store check."""
    return max(5 * settings.heartbeat_interval, settings.bus_check_interval)


def api_limits(settings: Settings) -> ApiLimits:
    return ApiLimits(
        query=QueryLimits(
            max_in_items=settings.max_in_items,
            max_sort_terms=settings.max_sort_terms,
            max_offset=settings.max_offset,
        ),
        query_timeout=settings.query_timeout,
        queries_per_client=settings.queries_per_client,
        queries_waiting=settings.queries_waiting,
    )


def announce_access(settings: Settings) -> None:
    """Say at start who may read what, so an open relay is never open by surprise."""
    public = ", ".join(settings.public_channels)
    if not settings.secret and "*" in settings.public_channels:
        # Nothing needs a token (the demo's case): a notice, not a warning at every start.
        log.info("every channel is public; RELAY_SECRET is not set, so no tokens are issued")
    elif not settings.secret:
        log.warning("RELAY_SECRET is not set: tokens are refused; public channels: %s", public)
    elif public:
        log.info("public channels (no token needed): %s; other channels need a token", public)
    else:
        log.info("every channel needs a token")
    if settings.previous_secret:
        until = settings.previous_secret_until or 0.0
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
        if until < time.time():
            log.warning("the previous secret retired at %s: remove RELAY_PREVIOUS_SECRET", stamp)
        else:
            log.info("tokens of the previous secret are accepted until %s", stamp)
