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
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

from mmgate.channel import SMTPChannel
from mmgate.config import STALE_AFTER
from mmgate.hooks import HookResult, Outcome
from mmgate.mailman.backend import MailmanBackend, Staged
from mmgate.mailman.directory import Directory
from mmgate.mailman.embedded import ensure_home
from mmgate.mailman.local import LocalMailman
from mmgate.mailman.remote import DeliveryFailed
from mmgate.mailman.routing import Route, RouteKind, Snapshot, classify
from mmgate.postmaster import Mailbox
from mmgate.proxy import (
    PureProxy,
    RelaySteps,
    dsn_params,
    log_no_relay,
    refusal,
    size_of,
    with_head,
)
from mmgate.relay import replies as relay_replies
from mmgate.relay.policy import RelayPolicy
from mmgate.relay.trace import new_id
from mmgate.relay.upstream import RelayTransaction
from mmgate.router import Action, Router
from mmgate.server import ProcessResult, current_channel
from mmgate.smtp import replies
from mmgate.smtp.events import MailFrom, RcptTo
from mmgate.smtp.replies import Reply
from mmgate.spoolfile import Spooled
from mmgate.store import Recorder, Store

log = logging.getLogger("mmgate.gateway")

#: X.3.5: the configured postmaster address cannot be used now.
POSTMASTER_UNREACHABLE = Reply(451, "4.3.5", "Postmaster mail cannot be delivered now, try later")


class GatewaySteps:
    """MailmanProxy's own steps on the hook chain: the router on ``rcpt``
    (list, reject, paused, stale, or the relay), the upstream opened only
    when a recipient is relayed. Delivery is the queue step,
    :meth:`MailmanProxy.process_message`."""

    name = "gateway"

    def __init__(self, server: MailmanProxy) -> None:
        self.server = server

    def hook_mail(self, ctx: SMTPChannel, mail: MailFrom) -> None:
        relay = self.server.new_transaction(
            mail.address, list(mail.options), smtputf8=mail.smtputf8
        )
        if relay is not None:
            ctx.txn["relay"] = relay
        ctx.txn["routes"] = {}

    def hook_rcpt(self, ctx: SMTPChannel, rcpt: RcptTo) -> HookResult:
        server = self.server
        decision = server.router.decide(rcpt.address, client=ctx.client_ip)
        if decision.reply is not None:
            if decision.reply is relay_replies.RELAY_NOT_CONFIGURED_YET:
                log_no_relay(rcpt.address)
            server.record_refusal(ctx, rcpt.address, decision.describe(), decision.reply)
            return refusal(decision.reply)
        if decision.action is Action.POSTMASTER:
            return self._postmaster(ctx, rcpt.address)
        if decision.action is Action.LIST:
            ctx.txn.setdefault("routes", {})[rcpt.address] = decision.route
            return None
        # The router applied relay control already: straight to the upstream.
        relay: RelayTransaction = ctx.txn["relay"]
        return self._relay(ctx, relay, rcpt.address, dsn_params(rcpt.options))

    def _postmaster(self, ctx: SMTPChannel, address: str) -> HookResult:
        """Postmaster mail goes to the configured address, routed as this
        host's own mail would be; else (or if that address is a postmaster
        address itself, which would loop) into the postmaster's mailbox."""
        server = self.server
        target = server.postmaster
        if target is not None and not server.router.is_postmaster(target):
            # our own forwarding: the client's relay rights do not apply
            route = classify(target, server.router.snapshot)
            if route.kind is RouteKind.LIST:
                ctx.txn.setdefault("routes", {})[address] = route
                return None
            if route.kind is RouteKind.RELAY and ctx.txn.get("relay") is not None:
                return self._relay(ctx, ctx.txn["relay"], target)
            log.error("postmaster address <%s> cannot be used now (%s)", target, route.describe())
            return refusal(POSTMASTER_UNREACHABLE)
        ctx.txn.setdefault("postmaster", []).append(address)
        return None

    async def _relay(
        self, ctx: SMTPChannel, relay: RelayTransaction, address: str, dsn: list[str] | None = None
    ) -> Outcome | None:
        outcome = await RelaySteps.relay_recipient(relay, address, dsn)
        if outcome is not None and outcome.reply is not None:
            self.server.record_refusal(ctx, address, "relay", outcome.reply)
        return outcome

    def hook_reset(self, ctx: SMTPChannel) -> None:
        relay: RelayTransaction | None = ctx.txn.pop("relay", None)
        if relay is not None:
            relay.release()


class MailmanProxy(PureProxy):
    """smtpd's MailmanProxy for Mailman 3: list mail into Mailman, the rest relayed.

    ``mailman`` is the Mailman to use; by default an embedded one is created
    under ``var_dir`` (see :mod:`mmgate.mailman.embedded`). Mailman is
    started before the socket is bound, so a Mailman that cannot be used
    stops the constructor with :class:`~mmgate.mailman.local.MailmanUnavailable`.
    """

    data_line_ending = "\r\n"
    large_blocks_in_threads = True

    def __init__(
        self,
        localaddr: tuple[str, int],
        remoteaddr: tuple[str, int] | None,
        *args: Any,
        mailman: MailmanBackend | None = None,
        store: Store | None = None,
        var_dir: str | Path = "var",
        refresh_interval: float = 2.0,
        stale_after: float = STALE_AFTER,
        paused: Callable[[], Container[str]] | None = None,
        postmaster: str | None = None,
        **kwargs: Any,
    ) -> None:
        if mailman is None:
            mailman = LocalMailman(ensure_home(var_dir, smtp_port=localaddr[1] or 8025))
        self.mailman = mailman
        # plugins find the store through it while the server is made
        self.recorder = Recorder(store) if store is not None else None
        self._refresh_seen = 0.0
        self._watcher: asyncio.Task[None] | None = None
        self.router = Router(
            mailman.start(),
            upstream=remoteaddr,
            paused=paused or self._paused_in_store,
            stale_after=stale_after,
        )
        self.directory = Directory(
            mailman.snapshot, self._publish, refresh_interval=refresh_interval
        )
        #: where postmaster mail goes: an address, or None for the mailbox
        self.postmaster = postmaster
        self.postmaster_box = Mailbox(Path(var_dir) / "postmaster")
        kwargs.setdefault("spool_dir", Path(var_dir) / "spool")
        super().__init__(localaddr, remoteaddr, *args, **kwargs)
        self.router.local_domains = frozenset({"localhost", self.fqdn.lower()})
        if self.recorder is not None:  # named by host name in a store several gateways share
            self.recorder.gateway = self.fqdn

    def _paused_in_store(self) -> Container[str]:
        return self.recorder.paused if self.recorder is not None else ()

    @property
    def relay_policy(self) -> RelayPolicy:
        """Relay control lives in the router, which decides for RCPT; this is
        the same object, so setting either (a reload) changes both."""
        return self.router.policy

    @relay_policy.setter
    def relay_policy(self, policy: RelayPolicy) -> None:
        self.router.policy = policy

    def final_hooks(self) -> list[object]:
        return [GatewaySteps(self)]

    def _publish(self, snapshot: Snapshot) -> None:
        self.router.snapshot = snapshot

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
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self.recorder is not None:
            self.recorder.stop()

    def routes_for(self, channel: SMTPChannel | None, rcpttos: list[str]) -> list[Route]:
        """The list copies to make: one per queue entry Mailman would make,
        so recipients that Mailman's rules make the same (TEST@ and test@,
        a VERP suffix, an alias domain, -subscribe and -join) get one copy."""
        known: dict[str, Route] = channel.txn.get("routes", {}) if channel else {}
        out, seen = [], set()
        for rcpt in rcpttos:
            route = known.get(rcpt) or classify(rcpt, self.router.snapshot)
            key = (route.list_id, route.subaddress, route.request)
            if route.kind is RouteKind.LIST and key not in seen:
                seen.add(key)
                out.append(route)
        return out

    async def process_message(
        self,
        peer: Any,
        mailfrom: str,
        rcpttos: list[str],
        data: bytes | str | Spooled,
        **kwargs: Any,
    ) -> ProcessResult:
        channel = current_channel.get(None)
        queue_id = new_id()
        message = with_head(self.trace_header(channel, rcpttos, queue_id), data, self)
        return await self.deliver(channel, peer, mailfrom, rcpttos, message, queue_id)

    async def deliver(
        self,
        channel: SMTPChannel | None,
        peer: Any,
        mailfrom: str,
        rcpttos: list[str],
        message: bytes | Spooled,
        queue_id: str,
    ) -> Reply:
        """One accepted message to every destination its session routed:
        list copies staged, the relayed copy upstream, then the list copies
        committed (or discarded), the postmaster's copy likewise. The reply
        holds for every recipient: all of them got it, or none."""
        routes = self.routes_for(channel, rcpttos)
        relay: RelayTransaction | None = channel.txn.get("relay") if channel else None
        relayed = list(relay.recipients) if relay is not None else []
        to_postmaster: list[str] = channel.txn.get("postmaster", []) if channel else []
        staged: Staged | None = None
        reply: Reply = replies.MESSAGE_ACCEPTED.with_text(f"OK queued as {queue_id}")
        postmaster_copy = None
        if to_postmaster:
            try:
                return_path = f"Return-Path: <{mailfrom}>\r\n".encode("utf-8", "surrogateescape")
                postmaster_copy = await asyncio.to_thread(
                    self.postmaster_box.stage, with_head(return_path, message, self)
                )
            except OSError as exc:
                log.error("id=%s: cannot write to the postmaster's mailbox: %s", queue_id, exc)
                reply = replies.LOCAL_ERROR
        if routes and reply.is_success:
            outcome = await self.mailman.stage(
                message, mailfrom, routes, self.router.snapshot, direct=not relayed
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
        if postmaster_copy is not None:
            if reply.is_success:
                try:
                    await asyncio.to_thread(self.postmaster_box.commit, postmaster_copy)
                except OSError as exc:  # the list copies are in: say so, never 4xx now
                    log.error("id=%s: postmaster copy lost at commit: %s", queue_id, exc)
            else:
                self.postmaster_box.discard(postmaster_copy)
        client = channel.client_ip if channel is not None else str(peer[0])
        if self.recorder is not None:
            self._record(client, mailfrom, routes, relayed, message, queue_id, reply, staged)
        log.info(
            "client=%s id=%s from=<%s> %s size=%d outcome=%s",
            client,
            queue_id,
            mailfrom,
            " ".join(f"to=<{r.address}>:{r.describe()}" for r in routes)
            + "".join(f" to=<{r}>:relay" for r in relayed)
            + "".join(f" to=<{r}>:postmaster" for r in to_postmaster),
            size_of(message),
            reply.code,
        )
        return reply

    def record_refusal(self, ctx: SMTPChannel, address: str, route: str, reply: Reply) -> None:
        """A refused or deferred recipient: counted, and one journal entry, so
        /v1/messages?outcome=refused (or temporary) shows it."""
        recorder = self.recorder
        if recorder is None:
            return
        recorder.count(f"recipients_refused:{reply.code}")
        recorder.record(
            {
                "time": time.time(),
                "client": ctx.client_ip,
                "sender": ctx.mailfrom or "",
                "size": 0,
                "message_id": None,
                "queue_id": None,
                "outcome": reply.code,
                "reply": str(reply),
                "lists": " ",
                "recipients": [{"address": address, "route": route, "outcome": reply.code}],
            }
        )

    def _record(
        self,
        client: str,
        mailfrom: str,
        routes: list[Route],
        relayed: list[str],
        message: bytes | Spooled,
        queue_id: str,
        reply: Reply,
        staged: Staged | None,
    ) -> None:
        """Counters and one journal entry for the admin API (never waits)."""
        recorder = self.recorder
        assert recorder is not None
        ok = reply.is_success
        recorder.count("messages_accepted" if ok else f"messages_refused:{reply.code}")
        recorder.count("bytes", size_of(message))
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
                "client": client,
                "sender": mailfrom,
                "size": size_of(message),
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
