"""Is a client address inside a set of networks? One answer for every caller.

The server's per-client exemption and the relay policy ask the same
question; both unwrap an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``, as
dual-stack sockets report IPv4 clients) and ignore a zone suffix.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: This host: the relay policy's default, and exempt from per-client caps.
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


#: Everyone (``[tls] require = "all"``).
ALL_NETWORKS: tuple[Network, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


@functools.lru_cache(maxsize=4096)
def client_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address as an address: an IPv4-mapped IPv6 one unwrapped,
    a zone dropped; None for what is not an address. Cached: the same
    clients are asked about at every command, and parsing is Python."""
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def in_networks(host: str, networks: Iterable[Network]) -> bool:
    address = client_address(host)
    return address is not None and any(address in network for network in networks)
