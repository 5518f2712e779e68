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
from mmgate.relay import replies as relay_replies
from mmgate.relay.policy import RelayPolicy, relay_refusal
from mmgate.relay.trace import insert_x_peer, new_id, protocol_keyword, received_header
from mmgate.relay.upstream import ClientTimeouts, RelayTransaction, UpstreamPool
from mmgate.server import ProcessResult, SMTPServer, current_channel
from mmgate.smtp.replies import Reply

log = logging.getLogger("mmgate.relay")


def client_ip(channel: SMTPChannel) -> str:
    return str(channel.addr[0]) if isinstance(channel.addr, tuple) else str(channel.addr)


def wire_form(data: bytes | str, line_ending: str) -> bytes:
    """process_message's ``data`` back into CRLF lines ending in CRLF."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if line_ending == "\n":
        raw = raw.replace(b"\n", b"\r\n")
        if raw:
            raw += b"\r\n"
    return raw


class RelayChannel(SMTPChannel):
    """A channel that mirrors its transaction upstream as it happens."""

    relay: RelayTransaction | None = None

    def accept_sender(self, address: str, options: list[str]) -> None:
        server = self.smtp_server
        assert isinstance(server, PureProxy)
        self.relay = server.new_transaction(address, options, smtputf8=self.require_SMTPUTF8)
        if self.relay is not None and server.relay_policy.client_may_relay(client_ip(self)):
            # A trusted client: MAIL goes upstream now, so the upstream's
            # verdict on the sender is the answer to MAIL. Anyone else opens
            # upstream only at a RCPT the policy permits: a client that may
            # not relay never makes mmgate send anything upstream.
            self.wait_for(self._open_upstream(address, options))
        else:
            super().accept_sender(address, options)

    async def _open_upstream(self, address: str, options: list[str]) -> None:
        assert self.relay is not None
        failure = await self.relay.open()
        if failure is not None:
            self.transaction_ended()
            self.push(failure)
            return
        super().accept_sender(address, options)

    def accept_recipient(self, address: str, options: list[str]) -> None:
        server = self.smtp_server
        assert isinstance(server, PureProxy)
        refusal = relay_refusal(
            server.relay_policy,
            upstream=self.relay is not None,
            client=client_ip(self),
            recipient=address,
        )
        if refusal is not None or self.relay is None:
            log.info("%s: relay to %s refused: %s", client_ip(self), address, refusal)
            self.push(refusal or relay_replies.RELAY_NOT_CONFIGURED)
            return
        self.wait_for(self._relay_recipient(self.relay, address, options))

    async def _relay_recipient(
        self, relay: RelayTransaction, address: str, options: list[str]
    ) -> None:
        reply = await relay.rcpt(address)
        if reply.is_success:
            super().accept_recipient(address, options)
        else:
            self.push(reply)

    def smtp_DATA(self, arg: str | None) -> None:
        # The upstream lost recipients it had accepted: the message cannot
        # reach all of them, so refuse it now rather than after its text.
        if not arg and self.relay is not None and self.relay.broken is not None:
            self.push(self.relay.broken)
            return
        super().smtp_DATA(arg)

    def transaction_ended(self) -> None:
        if self.relay is not None:
            self.relay.release()
            self.relay = None


class PureProxy(SMTPServer):
    """Relays everything it accepts to ``remoteaddr`` (smtpd's PureProxy)."""

    channel_class: type[SMTPChannel] = RelayChannel
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
            )

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
        )

    def trace_header(
        self, channel: SMTPChannel | None, rcpttos: list[str], message_id: str
    ) -> bytes:
        if channel is None:
            return b""
        return received_header(
            helo=channel.seen_greeting,
            client_ip=client_ip(channel),
            by=self.fqdn,
            protocol=protocol_keyword(
                extended=channel.extended_smtp, smtputf8=channel.require_SMTPUTF8
            ),
            message_id=message_id,
            recipient=rcpttos[0] if len(rcpttos) == 1 else None,
        )

    async def process_message(
        self, peer: Any, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any
    ) -> ProcessResult:
        channel = current_channel.get(None)
        relay = getattr(channel, "relay", None)
        if relay is None or not relay.is_open:
            # Called outside a RelayChannel (a custom channel_class, or code
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
        message = wire_form(data, self.data_line_ending)
        if self.add_x_peer:
            message = insert_x_peer(message, str(peer[0]))
        reply: Reply = await relay.data(self.trace_header(channel, rcpttos, message_id) + message)
        log.info(
            "%s id=%s from=<%s> to=%s size=%d relay=%s",
            peer[0],
            message_id,
            mailfrom,
            ",".join(f"<{r}>" for r in rcpttos),
            len(message),
            reply,
        )
        return reply

    async def close(self, timeout: float | None = None) -> None:
        await super().close(timeout)
        if self.pool is not None:
            await self.pool.close()
