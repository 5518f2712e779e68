"""``ratelimit``: token buckets per client address, per sender, per list.

Options, each ``"N/second"``, ``"N/minute"``, ``"N/hour"`` or ``"N/day"``
(N is also the burst): ``client`` (connections per client address; over
it the greeting is ``421 4.7.0``), ``sender`` (transactions per envelope
sender; ``450 4.7.1`` at MAIL), ``list`` (posts per list; ``450 4.7.1`` at
RCPT of the list's address); ``exempt``, networks never limited (default
loopback); ``store``, an SQLAlchemy URL, by default the gateway's own store.

The buckets live in the store (:meth:`mmgate.store.Store.take`), so every
gateway sharing the store shares the limits. A store that cannot be
reached limits nobody (logged): a rate limiter must not stop mail.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from mmgate.hooks import Outcome, defer
from mmgate.mailman.routing import RouteKind, classify
from mmgate.networks import LOOPBACK, in_networks
from mmgate.relay.policy import parse_networks
from mmgate.smtp.events import MailFrom, RcptTo
from mmgate.smtp.replies import Reply
from mmgate.store import Store

log = logging.getLogger("mmgate.plugins.ratelimit")

CLIENT_OVER = Reply(421, "4.7.0", "Too many connections from your address, try again later")
SENDER_OVER = Reply(450, "4.7.1", "Sender rate limit exceeded, try again later")
LIST_OVER = Reply(450, "4.7.1", "List {} takes no more posts now, try again later")
_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"\s*([0-9]+)\s*/\s*(second|minute|hour|day)\s*")


def parse_rate(text: Any, option: str) -> tuple[float, float] | None:
    """``"30/minute"`` as (capacity 30, 0.5 tokens per second)."""
    if text is None:
        return None
    m = _RATE.fullmatch(str(text))
    if m is None or int(m.group(1)) < 1:
        raise ValueError(f"{option}: {text!r} is not N/second, N/minute, N/hour or N/day")
    count = float(m.group(1))
    return count, count / _PERIODS[m.group(2)]


class RateLimit:
    name = "ratelimit"

    def __init__(
        self,
        client: str | None = None,
        sender: str | None = None,
        list: str | None = None,
        exempt: Any = None,
        store: str | None = None,
    ) -> None:
        self.client = parse_rate(client, "client")
        self.sender = parse_rate(sender, "sender")
        self.list = parse_rate(list, "list")
        if not (self.client or self.sender or self.list):
            raise ValueError("give at least one of client, sender, list")
        self.exempt = LOOPBACK if exempt is None else parse_networks(exempt, source="exempt")
        self.store = Store(store) if store else None
        self.server: Any = None

    def attach(self, server: Any) -> None:
        """Called by the server: its store and router, unless given here."""
        self.server = server
        if self.store is None:
            recorder = getattr(server, "recorder", None)
            if recorder is None:
                raise ValueError("ratelimit needs a store: the gateway's, or store = URL")
            self.store = recorder.store

    async def _take(self, key: str, rate: tuple[float, float]) -> bool:
        assert self.store is not None
        try:
            return await asyncio.to_thread(self.store.take, key, *rate)
        except Exception as exc:  # the store is down: limit nobody
            log.warning("store unavailable, %s not limited: %s", key, exc)
            return True

    def _exempt(self, ctx: Any) -> bool:
        return in_networks(ctx.client_ip, self.exempt)

    async def hook_connect(self, ctx: Any) -> Outcome | None:
        if self.client is None or self._exempt(ctx):
            return None
        if await self._take(f"client:{ctx.client_ip}", self.client):
            return None
        log.info("%s: over the connection rate", ctx.client_ip)
        return defer(CLIENT_OVER)

    async def hook_mail(self, ctx: Any, mail: MailFrom) -> Outcome | None:
        if self.sender is None or self._exempt(ctx):
            return None
        if await self._take(f"sender:{mail.address.lower()}", self.sender):
            return None
        return defer(SENDER_OVER)

    async def hook_rcpt(self, ctx: Any, rcpt: RcptTo) -> Outcome | None:
        router = getattr(self.server, "router", None)
        if self.list is None or router is None or self._exempt(ctx):
            return None
        route = classify(rcpt.address, router.snapshot)
        if route.kind is not RouteKind.LIST or route.subaddress is not None:
            return None  # only posts count, not -request or -owner mail
        if await self._take(f"list:{route.list_id}", self.list):
            return None
        return defer(LIST_OVER.with_text(LIST_OVER.text.format(route.list_id)))
