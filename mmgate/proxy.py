"""PureProxy: relays every accepted message to ``remoteaddr``.

Unlike smtpd's PureProxy (which crashed on Python 3 and ignored upstream
errors) and aiosmtpd's Proxy (which answers 250 when the upstream refuses or
is down), every upstream verdict reaches the client at the command it
belongs to, and 250 after DATA means the upstream said 250. Relaying is
limited by a :class:`~mmgate.relay.policy.RelayPolicy`: by default only
loopback clients may relay, so PureProxy is not an open relay.
"""

from __future__ import annotations

import logging
from typing import Any

from mmgate.channel import SMTPChannel
from mmgate.hooks import HookResult, Outcome
from mmgate.relay import replies as relay_replies
from mmgate.relay.policy import RelayPolicy, relay_refusal
from mmgate.relay.trace import insert_x_peer, new_id, protocol_keyword, received_header
from mmgate.relay.upstream import ClientTimeouts, RelayTransaction, UpstreamPool, UpstreamTLS
from mmgate.server import ProcessResult, SMTPServer, current_channel
from mmgate.smtp.events import MailFrom, RcptTo
from mmgate.smtp.replies import Reply
from mmgate.spoolfile import Spooled

log = logging.getLogger("mmgate.relay")


def with_head(head: bytes, data: bytes | str | Spooled, server: SMTPServer) -> bytes | Spooled:
    """``head`` (a Received: line) before the message, which stays on disk
    if it was spooled; in memory it goes back to its wire form."""
    if isinstance(data, Spooled):
        return data.with_head(head)
    return head + wire_form(data, server.data_line_ending)


def size_of(message: bytes | Spooled) -> int:
    return message.size if isinstance(message, Spooled) else len(message)


def wire_form(data: bytes | str | Spooled, line_ending: str) -> bytes:
    """process_message's ``data`` back into CRLF lines ending in CRLF."""
    if isinstance(data, Spooled):
        return data.read()  # already in wire form (CRLF), read whole on request
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if line_ending == "\n":
        raw = raw.replace(b"\n", b"\r\n")
        if raw:
            raw += b"\r\n"
    return raw


#: RFC 3461's parameters, passed upstream as the client gave them
DSN_PARAMETERS = ("RET", "ENVID", "NOTIFY", "ORCPT")


def dsn_params(options: list[str] | tuple[str, ...]) -> list[str]:
    """The DSN parameters among MAIL's or RCPT's (smtpd's form: KEY=value)."""
    return [o for o in options if o.partition("=")[0] in DSN_PARAMETERS]


def log_no_relay(address: str) -> None:
    log.warning(
        "RCPT %s deferred (451 4.3.5): no relay is configured; set --relay HOST:PORT "
        "or [relay] upstream so mail to other domains (Mailman's copies to members) can leave",
        address,
    )


def refusal(reply: Reply) -> Outcome:
    """A refusing hook outcome for a reply of either class."""
    return Outcome("reject" if reply.code >= 500 else "defer", reply)


class RelaySteps:
    """PureProxy's own steps on the hook chain: the client's transaction is
    mirrored upstream as it happens (see mmgate.relay.upstream)."""

    name = "relay"

    def __init__(self, server: PureProxy) -> None:
        self.server = server

    def hook_mail(self, ctx: SMTPChannel, mail: MailFrom) -> HookResult:
        server = self.server
        relay = server.new_transaction(mail.address, list(mail.options), smtputf8=mail.smtputf8)
        if relay is None:
            return None
        ctx.txn["relay"] = relay
        if server.relay_policy.client_may_relay(ctx.client_ip):
            # A trusted client: MAIL goes upstream now, so the upstream's
            # verdict on the sender is the answer to MAIL. Anyone else opens
            # upstream only at a RCPT the policy permits: a client that may
            # not relay never makes mmgate send anything upstream.
            return self._open(relay)
        return None

    @staticmethod
    async def _open(relay: RelayTransaction) -> Outcome | None:
        failure = await relay.open()
        return None if failure is None else refusal(failure)

    def hook_rcpt(self, ctx: SMTPChannel, rcpt: RcptTo) -> HookResult:
        relay: RelayTransaction | None = ctx.txn.get("relay")
        denied = relay_refusal(
            self.server.relay_policy,
            upstream=relay is not None,
            client=ctx.client_ip,
            recipient=rcpt.address,
        )
        if denied is not None or relay is None:
            reply = denied or relay_replies.RELAY_NOT_CONFIGURED
            if reply is relay_replies.RELAY_NOT_CONFIGURED_YET:
                log_no_relay(rcpt.address)
            return refusal(reply)
        return self.relay_recipient(relay, rcpt.address, dsn_params(rcpt.options))

    @staticmethod
    async def relay_recipient(
        relay: RelayTransaction, address: str, dsn: list[str] | None = None
    ) -> Outcome | None:
        """The upstream's verdict on one recipient is the client's."""
        reply = await relay.rcpt(address, dsn)
        return None if reply.is_success else refusal(reply)

    def hook_reset(self, ctx: SMTPChannel) -> None:
        relay: RelayTransaction | None = ctx.txn.pop("relay", None)
        if relay is not None:
            relay.release()


class PureProxy(SMTPServer):
    """Relays everything it accepts to ``remoteaddr`` (smtpd's PureProxy)."""

    takes_spooled = True  # a large message goes upstream from its spool file
    #: DSN parameters (RFC 3461) are taken and passed upstream (see docs/relay.md)
    offers_dsn = True
    #: Add smtpd's ``X-Peer:`` header after the message's headers.
    add_x_peer = False

    def __init__(
        self,
        localaddr: tuple[str, int],
        remoteaddr: tuple[str, int] | None,
        *args: Any,
        relay_policy: RelayPolicy | None = None,
        client_timeouts: ClientTimeouts | None = None,
        upstream_pool_size: int = 16,
        upstream_tls: UpstreamTLS | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(localaddr, remoteaddr, *args, **kwargs)
        self.relay_policy = relay_policy or RelayPolicy()
        self.pool: UpstreamPool | None = None
        if remoteaddr is not None:
            self.pool = UpstreamPool(
                remoteaddr,
                local_hostname=self.fqdn,
                max_idle=upstream_pool_size,
                timeouts=client_timeouts,
                tls=upstream_tls,
            )

    def final_hooks(self) -> list[object]:
        return [RelaySteps(self)]

    def xforward_allowed(self, client_ip: str) -> bool:
        """The clients that may relay are trusted to say who their client was."""
        return self.relay_policy.client_may_relay(client_ip)

    def data_refusal(self, channel: SMTPChannel) -> Reply | None:
        # The upstream lost recipients it had accepted: the message cannot
        # reach all of them, so refuse it now rather than after its text.
        relay: RelayTransaction | None = channel.txn.get("relay")
        return relay.broken if relay is not None else None

    def new_transaction(
        self, sender: str, options: list[str], *, smtputf8: bool
    ) -> RelayTransaction | None:
        if self.pool is None:
            return None
        return RelayTransaction(
            self.pool,
            sender,
            body_8bit="BODY=8BITMIME" in (o.upper() for o in options),
            smtputf8=smtputf8,
            dsn=dsn_params(options),
            binary="BODY=BINARYMIME" in (o.upper() for o in options),
        )

    def trace_header(
        self, channel: SMTPChannel | None, rcpttos: list[str], message_id: str
    ) -> bytes:
        if channel is None:
            return b""
        return received_header(
            helo=channel.client_helo,
            client_ip=channel.client_ip,
            by=self.fqdn,
            protocol=protocol_keyword(
                extended=channel.extended_smtp,
                smtputf8=channel.require_SMTPUTF8,
                tls=channel.session.tls,
            ),
            message_id=message_id,
            recipient=rcpttos[0] if len(rcpttos) == 1 else None,
            tls=channel.tls_info,
        )

    async def process_message(
        self,
        peer: Any,
        mailfrom: str,
        rcpttos: list[str],
        data: bytes | str | Spooled,
        **kwargs: Any,
    ) -> ProcessResult:
        channel = current_channel.get(None)
        relay: RelayTransaction | None = channel.txn.get("relay") if channel else None
        if relay is None or not relay.is_open:
            # Called outside a session of ours (a custom channel_class, or code
            # calling it directly): run the whole upstream transaction now.
            relay = self.new_transaction(
                mailfrom,
                kwargs.get("mail_options") or [],
                smtputf8="SMTPUTF8" in (kwargs.get("mail_options") or []),
            )
            if relay is None:
                return relay_replies.RELAY_NOT_CONFIGURED
            for rcpt in rcpttos:
                verdict = await relay.rcpt(rcpt)
                if not verdict.is_success:
                    relay.release()
                    return verdict
        message_id = new_id()
        head = self.trace_header(channel, rcpttos, message_id)
        message: bytes | Spooled
        if self.add_x_peer:  # smtpd's X-Peer: after the header, so in memory
            message = head + insert_x_peer(wire_form(data, self.data_line_ending), str(peer[0]))
        else:
            message = with_head(head, data, self)
        reply: Reply = await relay.data(message)
        log.info(
            "%s id=%s from=<%s> to=%s size=%d relay=%s",
            peer[0],
            message_id,
            mailfrom,
            ",".join(f"<{r}>" for r in rcpttos),
            size_of(message),
            reply,
        )
        return reply

    async def close(self, timeout: float | None = None) -> None:
        await super().close(timeout)
        if self.pool is not None:
            await self.pool.close()
