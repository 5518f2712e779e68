"""Routing of one recipient, by Mailman's own rules, from a snapshot.

The rules are those of ``mailman.runners.lmtp`` (``split_recipient`` and
the LMTP handler): lower-case the address; map an alias domain to its mail
host; drop a VERP ``+suffix``; split ``local-sub`` where ``sub`` is one of
Mailman's subaddresses, unless ``local-sub@domain`` is itself a list. The
subaddress tables are imported from Mailman, so they cannot drift.

Routing reads a :class:`Snapshot` (lists, domains, aliases) taken from
Mailman beforehand: no database query is made per RCPT.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from mailman.runners.lmtp import SUBADDRESS_NAMES, SUBADDRESS_QUEUES

from mmgate.smtp.replies import Reply

#: RFC 3463 X.1.1 "Bad destination mailbox address".
NO_SUCH_LIST = Reply(550, "5.1.1", "No such list or address here: {}")


class RouteKind(Enum):
    LIST = "list"  #: into a Mailman queue
    REJECT = "reject"  #: in a domain Mailman serves, but no such list
    RELAY = "relay"  #: any other domain: the relay path decides


@dataclass(frozen=True)
class Snapshot:
    """What the gateway knows of Mailman at one moment."""

    #: posting address (lower case) -> list id
    lists: Mapping[str, str] = field(default_factory=dict)
    #: mail hosts of Mailman's domains (lower case)
    domains: frozenset[str] = frozenset()
    #: alias domain -> its mail host (lower case)
    aliases: Mapping[str, str] = field(default_factory=dict)
    verp_delimiter: str = "+"
    site_owner: str = "changeme@example.com"
    taken_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Route:
    address: str
    kind: RouteKind
    listname: str | None = None  #: the list's posting address
    list_id: str | None = None
    subaddress: str | None = None  #: canonical: join for subscribe, leave for unsubscribe
    queue: str | None = None
    request: bool = False  #: the raw subaddress was "request"
    reply: Reply | None = None  #: for REJECT

    def msgdata(self, *, original_size: int, received_time: Any, site_owner: str) -> dict[str, Any]:
        """The queue entry's metadata, as Mailman's LMTP runner writes it."""
        data: dict[str, Any] = {
            "listid": self.list_id,
            "original_size": original_size,
            "received_time": received_time,
        }
        if self.subaddress is None:
            data["to_list"] = True
        else:
            data["subaddress"] = self.subaddress
            if self.request:
                data["to_request"] = True
            if self.subaddress == "owner":
                data.update(to_owner=True, envsender=site_owner)
        return data

    def describe(self) -> str:
        """One word for logs and ``mmgate route``."""
        if self.kind is RouteKind.LIST:
            sub = f"-{self.subaddress}" if self.subaddress else ""
            return f"list:{self.list_id}{sub}->{self.queue}"
        if self.kind is RouteKind.REJECT:
            return f"reject:{self.reply.code if self.reply else ''}"
        return "relay"


def classify(address: str, snap: Snapshot) -> Route:
    """Where a recipient goes, by the rules of Mailman's LMTP runner."""
    to = address.lower()
    if "@" not in to:
        return Route(address, RouteKind.RELAY)
    local, domain = to.split("@", 1)
    served = domain in snap.domains or domain in snap.aliases
    domain = snap.aliases.get(domain, domain)
    local = local.split(snap.verp_delimiter, 1)[0] if snap.verp_delimiter else local
    listname, dash, subaddress = local.rpartition("-")
    sub: str | None = subaddress
    if subaddress not in SUBADDRESS_NAMES or listname == "" or dash == "":
        listname, sub = local, None
    if sub is not None and f"{listname}-{sub}@{domain}" in snap.lists:
        # A list whose own name ends like a subaddress wins over the split.
        listname, sub = f"{listname}-{sub}", None
    fqdn = f"{listname}@{domain}"
    list_id = snap.lists.get(fqdn)
    if list_id is not None:
        if sub is None:
            return Route(address, RouteKind.LIST, fqdn, list_id, None, "in")
        canonical = SUBADDRESS_NAMES[sub]
        queue = "in" if canonical == "owner" else SUBADDRESS_QUEUES[canonical]
        return Route(
            address, RouteKind.LIST, fqdn, list_id, canonical, queue, request=sub == "request"
        )
    if served:
        return Route(
            address,
            RouteKind.REJECT,
            reply=NO_SUCH_LIST.with_text(NO_SUCH_LIST.text.format(address)),
        )
    return Route(address, RouteKind.RELAY)
