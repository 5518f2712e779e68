"""Is a client address inside a set of networks? One answer for every caller.

The server's per-client exemption and the relay policy ask the same
question; both unwrap an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``, as
dual-stack sockets report IPv4 clients) and ignore a zone suffix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: This host: the relay policy's default, and exempt from per-client caps.
LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def in_networks(host: str, networks: Iterable[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
