"""DebugServer: accepts everything, delivers nothing, shows all of it.

It is the gateway (:class:`~mmgate.gateway.MailmanProxy`) with every
verdict turned into a line of output: every recipient is accepted, and what
the gateway would have done with it (list, queue, relay, the refusal) is
printed beside it. Input is taken leniently (long lines, bare LF, UTF-8) and
flagged, never refused, because the point is to see what a program sends.

In the lab (``lab=True``) list copies are injected into Mailman for real,
and mail Mailman sends back (member copies, notices, command replies)
arrives here too and is shown in the same stream.
"""

from __future__ import annotations

import logging
import mailbox
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from mmgate.channel import SMTPChannel
from mmgate.debug.render import Seen, render_json, render_text
from mmgate.gateway import MailmanProxy
from mmgate.proxy import wire_form
from mmgate.relay.trace import new_id
from mmgate.server import ProcessResult, current_channel
from mmgate.smtp.events import RcptTo
from mmgate.smtp.framing import BareLinePolicy
from mmgate.smtp.limits import Limits
from mmgate.smtp.replies import Reply
from mmgate.spoolfile import Spooled

log = logging.getLogger("mmgate.debug")


class DebugSteps:
    """Accepts every syntactically valid recipient, noting the router's verdict."""

    name = "debug"

    def __init__(self, server: DebugServer) -> None:
        self.server = server

    def hook_rcpt(self, ctx: SMTPChannel, rcpt: RcptTo) -> None:
        decision = self.server.router.decide(rcpt.address, client=ctx.client_ip)
        ctx.txn.setdefault("decisions", []).append(decision)


class DebugServer(MailmanProxy):
    def final_hooks(self) -> list[object]:
        return [DebugSteps(self)]

    def __init__(
        self,
        localaddr: tuple[str, int],
        remoteaddr: tuple[str, int] | None,
        *args: Any,
        lab: bool = False,
        output_format: str = "text",
        full: bool = False,
        out: TextIO | None = None,
        maildir: str | Path | None = None,
        mbox: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("limits", Limits(lenient_text_lines=True))
        kwargs.setdefault("bare_lines", BareLinePolicy.LENIENT)
        kwargs.setdefault("enable_SMTPUTF8", True)
        super().__init__(localaddr, remoteaddr, *args, **kwargs)
        self.lab = lab
        self.full = full
        self.render: Callable[..., str] = render_json if output_format == "json" else render_text
        self.out = out or sys.stdout
        self.count = 0
        self.maildir = mailbox.Maildir(str(maildir), create=True) if maildir else None
        self.mbox = mailbox.mbox(str(mbox), create=True) if mbox else None

    async def process_message(
        self,
        peer: Any,
        mailfrom: str,
        rcpttos: list[str],
        data: bytes | str | Spooled,
        **kwargs: Any,
    ) -> ProcessResult:
        channel = current_channel.get(None)
        decisions = list(channel.txn.get("decisions", []) if channel else []) or [
            self.router.decide(r, client=str(peer[0])) for r in rcpttos
        ]
        raw = wire_form(data, self.data_line_ending)
        event = channel.last_message if channel is not None else None
        self.count += 1
        seen = Seen(
            number=self.count,
            when=datetime.now(),
            client=f"{peer[0]}:{peer[1]}",
            helo=channel.seen_greeting if channel else "",
            esmtp=channel.extended_smtp if channel else False,
            mail_from=mailfrom,
            mail_options=list(kwargs.get("mail_options") or []),
            recipients=decisions,
            data=raw,
            long_lines=bool(event and event.long_lines),
            bare_line_endings=bool(event and event.bare_line_endings),
        )
        reply: Reply | None = None
        if self.lab:
            reply = await self._inject(seen, channel, rcpttos)
        self.out.write(self.render(seen, full=self.full) + "\n")
        self.out.flush()
        self._store(mailfrom, rcpttos, raw)
        return reply

    async def _inject(
        self, seen: Seen, channel: SMTPChannel | None, rcpttos: list[str]
    ) -> Reply | None:
        """The lab: list copies go into Mailman for real."""
        routes = [d.route for d in seen.recipients if d.action == "list"]
        if not routes:
            seen.outcome = "shown only (no list recipient)"
            return None
        message = self.trace_header(channel, rcpttos, new_id()) + seen.data
        outcome = await self.mailman.stage(
            message, seen.mail_from, routes, self.router.snapshot, direct=True
        )
        if isinstance(outcome, Reply):
            seen.outcome = f"Mailman refused it: {outcome}"
            return outcome
        seen.outcome = "queued in Mailman for " + ", ".join(r.describe() for r in routes)
        return None

    def _store(self, mailfrom: str, rcpttos: list[str], raw: bytes) -> None:
        if self.maildir is None and self.mbox is None:
            return
        envelope = (f"Return-Path: <{mailfrom}>\r\nX-Envelope-To: {', '.join(rcpttos)}\r\n").encode(
            "utf-8", "surrogateescape"
        )
        if self.maildir is not None:
            self.maildir.add(envelope + raw)
        if self.mbox is not None:
            message = mailbox.mboxMessage(envelope + raw)
            message.set_from(mailfrom or "MAILER-DAEMON")
            self.mbox.lock()
            try:
                self.mbox.add(message)
                self.mbox.flush()
            finally:
                self.mbox.unlock()

    async def close(self, timeout: float | None = None) -> None:
        await super().close(timeout)
        if self.mbox is not None:
            self.mbox.close()
