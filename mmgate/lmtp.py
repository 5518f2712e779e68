"""The LMTP listener (RFC 2033): mmgate in the place of Mailman's LMTP runner.

Most Mailman sites run Postfix with an ``lmtp:`` transport to Mailman's
LMTP runner, through transport maps Mailman generates. :class:`LMTPGateway`
listens where that runner listened and does what it does, so a site swaps
the runner for mmgate without touching Postfix: ``LHLO``, each recipient
checked at RCPT against Mailman's lists (by the gateway's router, the same
that decides for SMTP), and after the message one reply per accepted
recipient (RFC 2033 4.2), the copies queued as Mailman's runner queues them.

LMTP is final delivery: nothing is relayed, so an address that is not a
list is ``550 5.1.1``; a paused list or a directory gone stale is ``451``,
as over SMTP. Like Mailman's runner, no ``Received:`` line is added: the
MTA in front has added its own.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

from mmgate._version import __version__
from mmgate.channel import SMTPChannel
from mmgate.hooks import HookResult
from mmgate.proxy import refusal, with_head
from mmgate.relay.trace import new_id
from mmgate.server import ProcessResult, SMTPServer, current_channel
from mmgate.smtp import replies
from mmgate.smtp.events import MailFrom, RcptTo
from mmgate.smtp.replies import Reply
from mmgate.spoolfile import Spooled

if TYPE_CHECKING:
    from mmgate.gateway import MailmanProxy

log = logging.getLogger("mmgate.lmtp")

#: One complete reply line (no continuation), as process_message's text
#: for several recipients holds them.
_REPLY_LINE = re.compile(r"[2-5][0-9][0-9]( .*)?")


def per_recipient(reply: Reply | str, recipients: int) -> list[Reply | str]:
    """The replies after an LMTP message, one per accepted recipient.

    A single reply (a :class:`Reply`, or text whose lines continue one
    reply) holds for every recipient. Text of several complete reply lines
    joined by CRLF (as aiosmtpd's and Mailman's LMTP handlers return them)
    gives each recipient its own; if their number is wrong, the recipients
    left without one get 451 4.3.0, since nobody can say what happened."""
    if isinstance(reply, Reply):
        return [reply] * recipients
    lines = reply.split("\r\n")
    if len(lines) == 1 or not all(_REPLY_LINE.fullmatch(line) for line in lines):
        return [reply] * recipients
    if len(lines) != recipients:
        log.error("process_message gave %d LMTP replies for %d recipients", len(lines), recipients)
        lines = lines[:recipients]
        return [*lines, *[replies.LOCAL_ERROR] * (recipients - len(lines))]
    return list(lines)


class LMTPChannel(SMTPChannel):
    """One LMTP session: smtpd's channel with LHLO, and per-recipient replies."""

    lmtp = True
    conditional_verbs = frozenset({"HELO", "EHLO", *(SMTPChannel.conditional_verbs or ())})

    def smtp_LHLO(self, arg: str | None) -> None:
        self._hello(arg, extended=True)

    def offers(self, verb: str) -> bool:
        # RFC 2033 4.1: LHLO in the place of HELO and EHLO
        return verb not in ("HELO", "EHLO") and super().offers(verb)

    def answer_message(self, reply: Reply | str, recipients: int) -> None:
        for one in per_recipient(reply, recipients):
            self.push(one)


class LMTPSteps:
    """The LMTP listener's own step: the router's final-delivery verdict on
    each recipient, which is what Mailman's LMTP runner checks at RCPT."""

    name = "lmtp"

    def __init__(self, gateway: MailmanProxy) -> None:
        self.gateway = gateway

    def hook_mail(self, ctx: SMTPChannel, mail: MailFrom) -> None:
        ctx.txn["routes"] = {}

    def hook_rcpt(self, ctx: SMTPChannel, rcpt: RcptTo) -> HookResult:
        gateway = self.gateway
        decision = gateway.router.decide_final(rcpt.address)
        if decision.reply is not None:
            gateway.record_refusal(ctx, rcpt.address, decision.describe(), decision.reply)
            return refusal(decision.reply)
        ctx.txn.setdefault("routes", {})[rcpt.address] = decision.route
        return None


class LMTPGateway(SMTPServer):
    """An LMTP listener in front of the same Mailman as ``gateway``: its
    router, its Mailman, its journal and counters, its spool directory."""

    channel_class = LMTPChannel
    data_line_ending = "\r\n"
    takes_spooled = True
    banner = f"LMTP mmgate {__version__}"

    def __init__(self, localaddr: tuple[str, int], gateway: MailmanProxy, **kwargs: Any) -> None:
        self.gateway = gateway
        kwargs.setdefault("fqdn", gateway.fqdn)
        kwargs.setdefault("spool_dir", gateway.spool_dir)
        super().__init__(localaddr, None, **kwargs)

    def final_hooks(self) -> list[object]:
        return [LMTPSteps(self.gateway)]

    def xforward_allowed(self, client_ip: str) -> bool:
        return self.gateway.xforward_allowed(client_ip)

    async def process_message(
        self,
        peer: Any,
        mailfrom: str,
        rcpttos: list[str],
        data: bytes | str | Spooled,
        **kwargs: Any,
    ) -> ProcessResult:
        message = with_head(b"", data, self)
        return await self.gateway.deliver(
            current_channel.get(None), peer, mailfrom, rcpttos, message, new_id()
        )
