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

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgate.channel import SMTPChannel
from mmgate.mailman.backend import MailmanBackend, Staged
from mmgate.mailman.directory import Directory
from mmgate.mailman.embedded import ensure_home
from mmgate.mailman.local import LocalMailman
from mmgate.mailman.remote import DeliveryFailed
from mmgate.mailman.routing import Route, RouteKind, Snapshot, classify
from mmgate.proxy import PureProxy, RelayChannel, client_ip, wire_form
from mmgate.relay.policy import RelayPolicy, relay_refusal
from mmgate.relay.trace import new_id
from mmgate.server import ProcessResult, current_channel
from mmgate.smtp import paths, replies
from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.replies import Reply
from mmgate.store import Recorder, Store

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


def verdict(
    address: str,
    snap: Snapshot,
    *,
    policy: RelayPolicy,
    upstream: tuple[str, int] | None,
    client: str,
) -> Decision:
    """``decide`` for an address given as text (``mmgate route``, the API):
    a malformed one gets the reply RCPT would give it."""
    route = classify(address, snap)
    try:
        paths.check_mailbox(
            address, replies.BAD_RECIPIENT_SYNTAX, smtputf8=True, postmaster_ok=True
        )
    except ProtocolError as exc:
        return Decision(route, "reject", exc.reply)
    return decide(route, policy=policy, upstream=upstream, client=client)


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
        recorder = server.recorder
        if (
            decision.action == "list"
            and recorder is not None
            and decision.route.list_id in recorder.paused
        ):
            decision = Decision(
                decision.route,
                "reject",
                replies.LIST_PAUSED.with_text(
                    replies.LIST_PAUSED.text.format(decision.route.list_id)
                ),
            )
        if decision.action == "reject" and recorder is not None:
            assert decision.reply is not None
            recorder.count(f"recipients_refused:{decision.reply.code}")
        if decision.action == "list":
            self.routes[address] = decision.route
            SMTPChannel.accept_recipient(self, address, options)
        elif decision.action == "reject":
            assert decision.reply is not None
            log.info("%s: RCPT %s refused: %s", client_ip(self), address, decision.reply)
            self.push(decision.reply)
        else:
            # decide() has applied relay control already: straight to the upstream.
            assert self.relay is not None
            self.wait_for(self._relay_recipient(self.relay, address, options))

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
        store: Store | None = None,
        var_dir: str | Path = "var",
        refresh_interval: float = 2.0,
        **kwargs: Any,
    ) -> None:
        if mailman is None:
            mailman = LocalMailman(ensure_home(var_dir, smtp_port=localaddr[1] or 8025))
        self.mailman = mailman
        self.recorder = Recorder(store) if store is not None else None
        self._refresh_seen = 0.0
        self.directory = Directory(
            mailman.snapshot, mailman.start(), refresh_interval=refresh_interval
        )
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

    async def start(self) -> None:
        await super().start()
        self.directory.start()
        if self.recorder is not None:
            self.recorder.start()
            self._refresh_seen = self.recorder.refresh_requested
            self._watcher = asyncio.get_running_loop().create_task(self._watch_refresh())

    async def _watch_refresh(self) -> None:
        """POST /v1/refresh in the API: re-read Mailman now, not at the next tick."""
        assert self.recorder is not None
        while True:
            await asyncio.sleep(self.recorder.interval)
            if self.recorder.refresh_requested > self._refresh_seen:
                self._refresh_seen = self.recorder.refresh_requested
                await self.directory.refresh()

    def _channel_opened(self, channel: SMTPChannel) -> None:
        super()._channel_opened(channel)
        if self.recorder is not None:
            self.recorder.count("connections")

    async def close(self, timeout: float | None = None) -> None:
        await self.directory.stop()
        await super().close(timeout)
        if self.recorder is not None:
            self._watcher.cancel()
            self.recorder.stop()

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
        if self.recorder is not None:
            self._record(peer, mailfrom, routes, relayed, message, queue_id, reply, staged)
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

    def _record(
        self,
        peer: Any,
        mailfrom: str,
        routes: list[Route],
        relayed: list[str],
        message: bytes,
        queue_id: str,
        reply: Reply,
        staged: Staged | None,
    ) -> None:
        """Counters and one journal entry for the admin API (never waits)."""
        recorder = self.recorder
        assert recorder is not None
        ok = reply.is_success
        recorder.count("messages_accepted" if ok else f"messages_refused:{reply.code}")
        recorder.count("bytes", len(message))
        if ok:
            for route in routes:
                recorder.count(f"injected:{route.queue}")
            if relayed:
                recorder.count("relayed")
        elif relayed and reply.status and reply.status.startswith(("4.4", "5.6")):
            recorder.count("relay_failures")
        recorder.record(
            {
                "time": time.time(),
                "client": str(peer[0]),
                "sender": mailfrom,
                "size": len(message),
                "message_id": staged.message_id if staged is not None else None,
                "queue_id": queue_id,
                "outcome": reply.code,
                "reply": str(reply),
                "lists": " " + " ".join(sorted({str(r.list_id) for r in routes})) + " ",
                "recipients": [
                    *(
                        {"address": r.address, "route": r.describe(), "outcome": reply.code}
                        for r in routes
                    ),
                    *({"address": a, "route": "relay", "outcome": reply.code} for a in relayed),
                ],
            }
        )
