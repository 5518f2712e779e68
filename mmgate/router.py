"""The one answer to "what happens to this address?".

RCPT, ``mmgate route``, ``GET /v1/route`` and ``mmgate debug`` all ask a
:class:`Router`, so they cannot disagree: a paused list is ``paused`` for
all four, a directory gone stale is ``stale`` for all four. The router is a
plain object over data (a Mailman snapshot, the relay policy, the upstream,
the paused lists); it imports no server, no channel and no event loop, so
the admin API can use it without the SMTP stack.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mmgate.config import STALE_AFTER
from mmgate.mailman.routing import NO_SUCH_LIST, Route, RouteKind, Snapshot, classify
from mmgate.relay.policy import RelayPolicy, relay_refusal
from mmgate.smtp import paths, replies
from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.replies import Reply

#: RFC 3463 X.2.1 "Mailbox disabled, not accepting messages": temporary, so
#: the mail waits in the sender's queue while the list is paused.
LIST_PAUSED = Reply(451, "4.2.1", "List {} is paused for maintenance, try again later")
#: RFC 3463 X.3.0: Mailman could not be read for longer than ``stale_after``;
#: a verdict from an old snapshot could be wrong either way, so wait.
DIRECTORY_STALE = Reply(451, "4.3.0", "Mailman's list directory is unavailable, try later")


class Action(StrEnum):
    LIST = "list"  #: into a Mailman queue
    REJECT = "reject"  #: refused for good (unknown address, relay denied, syntax)
    RELAY = "relay"  #: to the upstream
    PAUSED = "paused"  #: a list paused by its admin: 451 4.2.1
    STALE = "stale"  #: Mailman unreadable for too long: 451 4.3.0
    #: RFC 5321 4.5.1: postmaster, bare or at a domain served, from anyone
    POSTMASTER = "postmaster"


@dataclass(frozen=True)
class Decision:
    """What happens to one recipient; ``reply`` is the refusal, if any."""

    route: Route
    action: Action
    reply: Reply | None = None
    upstream: tuple[str, int] | None = None  #: for RELAY

    @property
    def accepted(self) -> bool:
        return self.action in (Action.LIST, Action.RELAY, Action.POSTMASTER)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form shared by ``mmgate route --json`` and ``/v1/route``."""
        out: dict[str, Any] = {"address": self.route.address, "action": self.action.value}
        if self.route.kind is RouteKind.LIST and self.action in (Action.LIST, Action.PAUSED):
            out.update(
                list_id=self.route.list_id,
                listname=self.route.listname,
                subaddress=self.route.subaddress,
                queue=self.route.queue,
            )
        elif self.action is Action.RELAY and self.upstream is not None:
            out["upstream"] = f"{self.upstream[0]}:{self.upstream[1]}"
        if self.reply is not None:
            out["reply"] = {
                "code": self.reply.code,
                "status": self.reply.status,
                "text": self.reply.text,
            }
        return out

    def describe(self) -> str:
        """One line for ``mmgate route``, ``mmgate debug`` and the journal."""
        if self.action is Action.LIST:
            route = self.route
            what = f"subaddress {route.subaddress}" if route.subaddress else "posting"
            return f"list {route.list_id}, {what}, queue {route.queue}"
        if self.action is Action.RELAY and self.upstream is not None:
            return f"relay to {self.upstream[0]}:{self.upstream[1]}"
        if self.action is Action.POSTMASTER:
            return "postmaster"
        return f"{self.action.value} {self.reply}"


def _nothing_paused() -> Container[str]:
    return ()


@dataclass
class Router:
    """Decides for (address, client, now) from what it was last told.

    ``snapshot`` is replaced by whoever reads Mailman (the gateway's
    directory, the API's cache); ``paused`` is asked at each decision, so a
    pause set in the store is seen as soon as its reader has it.
    """

    snapshot: Snapshot
    policy: RelayPolicy = field(default_factory=RelayPolicy)
    upstream: tuple[str, int] | None = None
    paused: Callable[[], Container[str]] = _nothing_paused
    stale_after: float = STALE_AFTER
    #: domains this host answers for besides Mailman's (its own name,
    #: localhost): postmaster there is ours too
    local_domains: frozenset[str] = frozenset({"localhost"})

    def is_stale(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - self.snapshot.taken_at > self.stale_after

    def is_postmaster(self, address: str) -> bool:
        """RFC 5321 4.5.1: ``postmaster``, bare or at a domain served here."""
        local, at, domain = address.lower().rpartition("@")
        if not at:
            return domain == "postmaster"
        snap = self.snapshot
        served = domain in snap.domains or domain in snap.aliases or domain in self.local_domains
        return local == "postmaster" and served

    def decide(self, address: str, *, client: str, now: float | None = None) -> Decision:
        """The verdict on an address whose syntax RCPT has already checked."""
        route = classify(address, self.snapshot)
        if self.is_postmaster(address) and route.kind is not RouteKind.LIST:
            # accepted from anyone, whatever relay control says (RFC 5321 4.5.1)
            return Decision(route, Action.POSTMASTER)
        if route.kind is RouteKind.RELAY:
            refusal = relay_refusal(
                self.policy, upstream=self.upstream is not None, client=client, recipient=address
            )
            if refusal is not None:
                return Decision(route, Action.REJECT, refusal)
            return Decision(route, Action.RELAY, upstream=self.upstream)
        if self.is_stale(now):
            return Decision(route, Action.STALE, DIRECTORY_STALE)
        if route.kind is RouteKind.REJECT:
            return Decision(route, Action.REJECT, route.reply)
        if route.list_id in self.paused():
            return Decision(
                route, Action.PAUSED, LIST_PAUSED.with_text(LIST_PAUSED.text.format(route.list_id))
            )
        return Decision(route, Action.LIST)

    def decide_final(self, address: str, *, now: float | None = None) -> Decision:
        """The verdict for final delivery (LMTP, RFC 2033): a list, or
        nothing. Nothing is relayed, and postmaster is the MTA's in front."""
        route = classify(address, self.snapshot)
        if self.is_stale(now):
            return Decision(route, Action.STALE, DIRECTORY_STALE)
        if route.kind is not RouteKind.LIST:
            reply = route.reply or NO_SUCH_LIST.with_text(NO_SUCH_LIST.text.format(address))
            return Decision(route, Action.REJECT, reply)
        if route.list_id in self.paused():
            return Decision(
                route, Action.PAUSED, LIST_PAUSED.with_text(LIST_PAUSED.text.format(route.list_id))
            )
        return Decision(route, Action.LIST)

    def verdict(self, address: str, *, client: str, now: float | None = None) -> Decision:
        """:meth:`decide` for an address given as text (``mmgate route``, the
        API): a malformed one gets the reply RCPT would give it."""
        try:
            paths.check_mailbox(
                address, replies.BAD_RECIPIENT_SYNTAX, smtputf8=True, postmaster_ok=True
            )
        except ProtocolError as exc:
            return Decision(
                Route(address, RouteKind.REJECT, reply=exc.reply), Action.REJECT, exc.reply
            )
        return self.decide(address, client=client, now=now)
