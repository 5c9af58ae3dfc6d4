"""Who the client is behind trusted proxies: ``X-Forwarded-For``, read from the right.

On a PaaS (Heroku) every connection comes from the router's address, so limits per
address would be shared by every client. Each proxy appends the address it received
the request from to ``X-Forwarded-For``; with ``trusted_proxies`` proxies in front of
the relay, the client is the ``trusted_proxies``-th entry from the right. Entries left
of it were written by the client and prove nothing, and with no trusted proxy the
header is not read at all: anyone can send it.

Pure: no sockets, no logging; ``server.py`` counts and logs what this refuses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from relay.errors import BadForwardedFor

FORWARDED_FOR = "X-Forwarded-For"


def client_address(socket_address: str, forwarded_for: Iterable[str], trusted_proxies: int) -> str:
    """The client's address: the socket's, or the one the trusted proxies forwarded.

    ``forwarded_for`` holds the values of every ``X-Forwarded-For`` header line, in
    order (several lines are one comma-separated list). With fewer entries than
    ``trusted_proxies`` the leftmost one counts (a request that skipped a proxy); with
    no entry at all, the socket address. An address comes back in its canonical form,
    so one client has one key however it is spelled. Raises :class:`BadForwardedFor`
    when the chosen entry is not an IP address.
    """
    if trusted_proxies <= 0:
        return socket_address
    entries = [entry.strip() for line in forwarded_for for entry in line.split(",")]
    entries = [entry for entry in entries if entry]
    if not entries:
        return socket_address
    chosen = entries[-min(trusted_proxies, len(entries))]
    try:
        return str(ipaddress.ip_address(chosen))
    except ValueError:
        message = f"{FORWARDED_FOR} entry {chosen[:60]!r} is not an IP address"
        raise BadForwardedFor(message) from None
