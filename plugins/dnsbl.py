"""``dnsbl``: DNSBL and DNSWL lookups of the client's address (RFC 5782).

Options: ``zones`` (block lists: a listed client is refused), ``allow_zones``
(allow lists: a listed client skips the block lists), ``nameservers``
(``["127.0.0.1:5353"]``; default: the system's resolver), ``timeout``
(seconds for all lookups of one client, default 5).

The client's address is reversed into the zone (``2.0.0.127.zone`` for
127.0.0.2; nibbles for IPv6) and looked up as an A record; any answer in
127.0.0.0/8 means listed (RFC 5782 2.1). Lookups of all zones run at once,
with dnspython's asyncio resolver, when the client connects; the refusal is
the greeting (``554 5.7.1``). A lookup that fails (timeout, SERVFAIL, no
resolver) never refuses anyone: a broken list must not stop mail.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.resolver

from mmgate.hooks import Outcome, accept, reject
from mmgate.networks import client_address
from mmgate.smtp.replies import Reply

log = logging.getLogger("mmgate.plugins.dnsbl")

BLOCKED = Reply(554, "5.7.1", "Service unavailable; client [{ip}] blocked using {zone}")


def query_name(ip: str, zone: str) -> str | None:
    """The RFC 5782 name of ``ip`` in ``zone``; None for what is not an address."""
    address = client_address(ip)
    if address is None:
        return None
    reverse = address.reverse_pointer.rsplit(".", 2)[0]  # drop in-addr.arpa / ip6.arpa
    return f"{reverse}.{zone.strip('.')}"


class Dnsbl:
    name = "dnsbl"

    def __init__(
        self,
        zones: list[str] | None = None,
        allow_zones: list[str] | None = None,
        nameservers: list[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.zones = [str(z).strip(".") for z in zones or []]
        self.allow_zones = [str(z).strip(".") for z in allow_zones or []]
        if not self.zones and not self.allow_zones:
            raise ValueError("give zones (block lists) or allow_zones (allow lists)")
        if not 0 < timeout <= 60:
            raise ValueError(f"timeout must be above 0 and at most 60 seconds, not {timeout}")
        self.timeout = timeout
        if nameservers:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            servers, ports = [], set()
            for entry in nameservers:
                host, _, port = str(entry).rpartition(":") if ":" in str(entry) else (entry, "", "")
                host = host.strip("[]") or str(entry)
                try:
                    ipaddress.ip_address(host)
                except ValueError:
                    raise ValueError(f"nameservers: {entry!r} is not ADDRESS[:PORT]") from None
                servers.append(host)
                ports.add(int(port) if port else 53)
            if len(ports) != 1:
                raise ValueError("nameservers: all must use the same port")
            self.resolver.nameservers = servers
            self.resolver.port = ports.pop()
        else:
            self.resolver = dns.asyncresolver.Resolver()
        self.resolver.lifetime = timeout

    async def listed(self, ip: str, zone: str) -> bool | None:
        """True if listed, False if not, None if the lookup failed."""
        name = query_name(ip, zone)
        if name is None:
            return False
        try:
            answer = await self.resolver.resolve(name, "A")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return False
        except (dns.exception.DNSException, OSError) as exc:
            log.warning("%s: lookup in %s failed, not counted: %s", ip, zone, exc)
            return None
        return any(
            ipaddress.ip_address(r.address) in ipaddress.ip_network("127.0.0.0/8") for r in answer
        )

    async def hook_connect(self, ctx: Any) -> Outcome | None:
        ip = ctx.client_ip
        zones = [*self.allow_zones, *self.zones]
        results = await asyncio.gather(*(self.listed(ip, z) for z in zones))
        verdicts = dict(zip(zones, results, strict=True))
        for zone in self.allow_zones:
            if verdicts[zone]:
                ctx.notes["dnswl"] = zone
                return accept()
        for zone in self.zones:
            if verdicts[zone]:
                ctx.notes["dnsbl"] = zone
                log.info("%s: listed in %s", ip, zone)
                return reject(BLOCKED.with_text(BLOCKED.text.format(ip=ip, zone=zone)))
        return None
