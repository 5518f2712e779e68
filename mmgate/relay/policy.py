"""Relay control: who may send mail through mmgate to other domains.

Relaying is a privilege. By default only loopback clients may relay, and no
recipient domain is open to everyone, so a fresh mmgate is never an open
relay. The knobs are Postfix's: ``relay_networks`` (mynetworks) are clients
that may relay anywhere; ``relay_domains`` are recipient domains anyone may
send to (a leading dot, ``.example.org``, also matches every subdomain).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from mmgate.networks import LOOPBACK, Network, in_networks
from mmgate.relay import replies as relay_replies
from mmgate.smtp.replies import Reply

DEFAULT_NETWORKS: tuple[Network, ...] = LOOPBACK


class RelayConfigError(ValueError):
    """A relay setting that cannot be used; the text names the value."""


def parse_networks(
    items: str | Iterable[str], *, source: str = "relay_networks"
) -> tuple[Network, ...]:
    """``"127.0.0.0/8, ::1"`` or a list into networks; a bad one names itself."""
    words = items.split(",") if isinstance(items, str) else list(items)
    networks = []
    for word in words:
        word = str(word).strip()
        if not word:
            continue
        try:
            networks.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise RelayConfigError(
                f"{source}: {word!r} is not a network (ADDRESS or ADDRESS/PREFIX)"
            ) from None
    return tuple(networks)


def parse_domains(items: str | Iterable[str], *, source: str = "relay_domains") -> frozenset[str]:
    words = items.split(",") if isinstance(items, str) else list(items)
    domains = set()
    for word in words:
        domain = str(word).strip().lower().rstrip(".")
        if not domain:
            continue
        if " " in domain or "@" in domain or domain.strip(".") == "":
            raise RelayConfigError(f"{source}: {word!r} is not a domain")
        domains.add(domain)
    return frozenset(domains)


@dataclass(frozen=True)
class RelayPolicy:
    networks: tuple[Network, ...] = DEFAULT_NETWORKS
    domains: frozenset[str] = field(default_factory=frozenset)

    def client_may_relay(self, client_ip: str) -> bool:
        return in_networks(client_ip, self.networks)

    def domain_is_open(self, recipient: str) -> bool:
        domain = recipient.rpartition("@")[2].lower().rstrip(".")
        if not domain:
            return False
        if domain in self.domains:
            return True
        parts = domain.split(".")
        return any("." + ".".join(parts[i:]) in self.domains for i in range(1, len(parts)))

    def permits(self, client_ip: str, recipient: str) -> bool:
        """May this client relay to this recipient?"""
        return self.client_may_relay(client_ip) or self.domain_is_open(recipient)


def relay_refusal(
    policy: RelayPolicy, *, upstream: bool, client: str, recipient: str
) -> Reply | None:
    """Why ``client`` may not relay to ``recipient`` here, or None if it may."""
    trusted = policy.client_may_relay(client)
    if not upstream:
        return (
            relay_replies.RELAY_NOT_CONFIGURED_YET
            if trusted
            else relay_replies.RELAY_NOT_CONFIGURED
        )
    if not trusted and sender_routed(recipient):
        return relay_replies.SENDER_ROUTING
    if not (trusted or policy.domain_is_open(recipient)):
        return relay_replies.RELAY_DENIED
    return None


def sender_routed(address: str) -> bool:
    """``user%host@domain``, ``host!user@domain`` or ``"user@host"@domain``:
    a local part that names another destination."""
    local = address.rpartition("@")[0]
    return any(c in local for c in "%!@")
