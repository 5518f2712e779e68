"""MailmanProxy: the gateway in front of GNU Mailman 3.

Every recipient is classified at RCPT time by Mailman's own rules
(:mod:`mmgate.mailman.routing`): a list address is accepted; any other
address in a domain Mailman serves is 550 5.1.1; an address elsewhere takes
the relay path of :class:`~mmgate.proxy.PureProxy` (relay control applies).

After DATA, list copies are staged in Mailman's queue format, the relayed
copy is handed upstream, and only then are the list copies committed: so a
mixed transaction is either wholly acknowledged or wholly temporary (see
docs/gateway.md for every failure order).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgate.channel import SMTPChannel
from mmgate.mailman.backend import MailmanBackend, Staged
from mmgate.mailman.directory import Directory
from mmgate.mailman.embedded import ensure_home
from mmgate.mailman.local import LocalMailman
from mmgate.mailman.remote import DeliveryFailed
from mmgate.mailman.routing import Route, RouteKind
from mmgate.proxy import PureProxy, RelayChannel, client_ip, wire_form
from mmgate.relay.policy import RelayPolicy, relay_refusal
from mmgate.relay.trace import new_id
from mmgate.server import ProcessResult, current_channel
from mmgate.smtp import replies
from mmgate.smtp.replies import Reply

log = logging.getLogger("mmgate.gateway")


@dataclass(frozen=True)
class Decision:
    """What the gateway does with one recipient: the answer of ``mmgate route``."""

    route: Route
    action: str  #: "list", "relay" or "reject"
    reply: Reply | None = None  #: the refusal, for "reject"
    upstream: tuple[str, int] | None = None  #: for "relay"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.route.address, "action": self.action}
        if self.action == "list":
            out.update(
                list_id=self.route.list_id,
                listname=self.route.listname,
                subaddress=self.route.subaddress,
                queue=self.route.queue,
            )
        elif self.action == "relay" and self.upstream is not None:
            out["upstream"] = f"{self.upstream[0]}:{self.upstream[1]}"
        if self.reply is not None:
            out["reply"] = {
                "code": self.reply.code,
                "status": self.reply.status,
                "text": self.reply.text,
            }
        return out

    def describe(self) -> str:
        if self.action == "list":
            what = f"subaddress {self.route.subaddress}" if self.route.subaddress else "posting"
            return f"list {self.route.list_id}, {what}, queue {self.route.queue}"
        if self.action == "relay" and self.upstream is not None:
            return f"relay to {self.upstream[0]}:{self.upstream[1]}"
        return f"reject {self.reply}"


def decide(
    route: Route, *, policy: RelayPolicy, upstream: tuple[str, int] | None, client: str
) -> Decision:
    """The verdict on one recipient; the channel, ``mmgate route`` and the
    admin API all ask this, so they cannot disagree."""
    if route.kind is RouteKind.LIST:
        return Decision(route, "list")
    if route.kind is RouteKind.REJECT:
        return Decision(route, "reject", route.reply)
    refusal = relay_refusal(
        policy, upstream=upstream is not None, client=client, recipient=route.address
    )
    if refusal is not None:
        return Decision(route, "reject", refusal)
    return Decision(route, "relay", upstream=upstream)


class MailmanChannel(RelayChannel):
    """A session whose recipients are routed at RCPT time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routes: dict[str, Route] = {}

    def accept_sender(self, address: str, options: list[str]) -> None:
        server = self.smtp_server
        assert isinstance(server, MailmanProxy)
        # The upstream is opened only if a recipient is relayed.
        self.relay = server.new_transaction(address, options, smtputf8=self.require_SMTPUTF8)
        SMTPChannel.accept_sender(self, address, options)

    def accept_recipient(self, address: str, options: list[str]) -> None:
        server = self.smtp_server
        assert isinstance(server, MailmanProxy)
        decision = server.decide(address, client_ip(self))
        if decision.action == "list":
            self.routes[address] = decision.route
            SMTPChannel.accept_recipient(self, address, options)
        elif decision.action == "reject":
            assert decision.reply is not None
            log.info("%s: RCPT %s refused: %s", client_ip(self), address, decision.reply)
            self.push(decision.reply)
        else:
            super().accept_recipient(address, options)

    def transaction_ended(self) -> None:
        super().transaction_ended()
        self.routes = {}


class MailmanProxy(PureProxy):
    """smtpd's MailmanProxy for Mailman 3: list mail into Mailman, the rest relayed.

    ``mailman`` is the Mailman to use; by default an embedded one is created
    under ``var_dir`` (see :mod:`mmgate.mailman.embedded`). Mailman is
    started before the socket is bound, so a Mailman that cannot be used
    stops the constructor with :class:`~mmgate.mailman.local.MailmanUnavailable`.
    """

    channel_class: type[SMTPChannel] = MailmanChannel
    data_line_ending = "\r\n"

    def __init__(
        self,
        localaddr: tuple[str, int],
        remoteaddr: tuple[str, int] | None,
        *args: Any,
        mailman: MailmanBackend | None = None,
        var_dir: str | Path = "var",
        refresh_interval: float = 2.0,
        **kwargs: Any,
    ) -> None:
        if mailman is None:
            mailman = LocalMailman(ensure_home(var_dir, smtp_port=localaddr[1] or 8025))
        self.mailman = mailman
        self.directory = Directory(
            mailman.snapshot, mailman.start(), refresh_interval=refresh_interval
        )
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

    async def start(self) -> None:
        await super().start()
        self.directory.start()

    async def close(self, timeout: float | None = None) -> None:
        await self.directory.stop()
        await super().close(timeout)

    def decide(self, address: str, client: str) -> Decision:
        return decide(
            self.directory.classify(address),
            policy=self.relay_policy,
            upstream=self._remoteaddr,
            client=client,
        )

    def routes_for(self, channel: SMTPChannel | None, rcpttos: list[str]) -> list[Route]:
        known = getattr(channel, "routes", {})
        routes = [known.get(r) or self.directory.classify(r) for r in rcpttos]
        return [r for r in routes if r.kind is RouteKind.LIST]

    async def process_message(
        self, peer: Any, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any
    ) -> ProcessResult:
        channel = current_channel.get(None)
        routes = self.routes_for(channel, rcpttos)
        relay = getattr(channel, "relay", None)
        relayed = list(relay.recipients) if relay is not None else []
        queue_id = new_id()
        message = self.trace_header(channel, rcpttos, queue_id) + wire_form(
            data, self.data_line_ending
        )
        staged: Staged | None = None
        reply: Reply = replies.MESSAGE_ACCEPTED.with_text(f"OK queued as {queue_id}")
        if routes:
            outcome = await self.mailman.stage(
                message, mailfrom, routes, self.directory.snapshot, direct=not relayed
            )
            if isinstance(outcome, Reply):
                reply = outcome
            else:
                staged = outcome
        if reply.is_success and relay is not None and relayed:
            upstream = await relay.data(message)
            if not upstream.is_success:
                reply = upstream
        if staged is not None and staged.pending:
            if reply.is_success:
                try:
                    await self.mailman.commit(staged)
                except DeliveryFailed as exc:
                    reply = exc.reply
                except OSError as exc:
                    log.error(
                        "id=%s: cannot move list copies into Mailman's queue: %s", queue_id, exc
                    )
                    reply = replies.LOCAL_ERROR
            else:
                await self.mailman.discard(staged)
        log.info(
            "client=%s id=%s from=<%s> %s size=%d outcome=%s",
            peer[0],
            queue_id,
            mailfrom,
            " ".join(f"to=<{r.address}>:{r.describe()}" for r in routes)
            + "".join(f" to=<{r}>:relay" for r in relayed),
            len(message),
            reply.code,
        )
        return reply
