"""Postfix's lookup tables answered live from the gateway's router.

Postfix asks lookup tables at RCPT time; answering them from mmgate's own
routing snapshot lets Postfix refuse an unknown address in a list domain
itself, during the session (``550 5.1.1``), so no bounce is ever made, and
a new list is accepted within the refresh interval, with no generated map
files to rebuild.

The protocol is Postfix's socketmap (socketmap_table(5), Postfix 2.10 and
later): the client sends the netstring ``NAME KEY``, the server answers the
netstring ``OK VALUE``, ``NOTFOUND ``, ``TEMP REASON`` or ``PERM REASON``.
It was chosen over policy delegation (access_policy(5)) because it is a
*table*: one mechanism serves ``relay_domains``, ``relay_recipient_maps``
and ``transport_maps`` alike, each a plain Postfix setting, and Postfix
applies its own reply codes and restriction order; a policy service can
only accept or reject, and cannot tell Postfix where to deliver.

Tables (the ``NAME``):

* ``domains``: Mailman's mail hosts and alias domains (``relay_domains``);
* ``recipients``: list addresses, with every subaddress and VERP form
  Mailman's LMTP runner takes (``relay_recipient_maps``);
* ``transport``: for a list address, where Postfix sends it (``lmtp:`` to
  mmgate's LMTP listener, else ``smtp:`` to its SMTP listener).

While the directory is stale (Mailman unreadable for longer than
``stale_after``) every lookup is ``TEMP``: Postfix then answers ``451 4.3.0``
and the sender retries, instead of a wrong OK or NOTFOUND.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from mmgate.router import Action, Router
from mmgate.server import bind, register, unregister

log = logging.getLogger("mmgate.socketmap")

#: The longest request taken: a name, a space and an address of at most
#: RFC 5321's 256-octet path, with room to spare.
MAX_REQUEST = 2048
#: Postfix reconnects when it needs to; an idle connection is closed after this.
IDLE_TIMEOUT = 300.0
TABLES = ("domains", "recipients", "transport")


def netstring(text: str) -> bytes:
    data = text.encode("utf-8", "surrogateescape")
    return b"%d:%s," % (len(data), data)


class NetstringError(ValueError):
    """The client did not send a netstring: the connection is closed."""


def parse_netstrings(buffer: bytearray) -> list[bytes]:
    """Take every complete netstring from the front of ``buffer``."""
    out = []
    while buffer:
        colon = buffer.find(b":", 0, 8)
        if colon < 0:
            if len(buffer) >= 8 or not buffer.isdigit():
                raise NetstringError("no length")
            break
        length_text = bytes(buffer[:colon])
        if not length_text.isdigit():
            raise NetstringError("bad length")
        length = int(length_text)
        if length > MAX_REQUEST:
            raise NetstringError("request too long")
        end = colon + 1 + length
        if len(buffer) < end + 1:
            break
        if buffer[end : end + 1] != b",":
            raise NetstringError("no comma")
        out.append(bytes(buffer[colon + 1 : end]))
        del buffer[: end + 1]
    return out


class Tables:
    """The answers, from the router's current snapshot."""

    def __init__(self, router: Router, transport: str | None) -> None:
        self.router = router
        #: the ``transport`` table's value for a list address (``lmtp:...``)
        self.transport = transport

    def lookup(self, request: str) -> str:
        name, _, key = request.partition(" ")
        if name not in TABLES:
            return f"PERM no such table {name!r} (mmgate serves {', '.join(TABLES)})"
        if name == "transport" and self.transport is None:
            return "PERM no transport: mmgate has no listener for Postfix to deliver to"
        router = self.router
        if router.is_stale():
            return "TEMP Mailman's list directory is unavailable"
        key = key.strip().lower()
        if not key:
            return "NOTFOUND "
        if name == "domains":
            snap = router.snapshot
            return "OK " + key if key in snap.domains or key in snap.aliases else "NOTFOUND "
        if key.startswith("@") or "@" not in key:
            return "NOTFOUND "  # no catch-all: only list addresses are ours
        decision = router.decide_final(key)
        if decision.action not in (Action.LIST, Action.PAUSED):
            return "NOTFOUND "  # a paused list is ours: mmgate answers 451 for it
        if name == "recipients":
            return f"OK {decision.route.list_id}"
        return f"OK {self.transport}"


class _Connection(asyncio.Protocol):
    def __init__(self, server: SocketmapServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.connections.add(self)
        self._arm()

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.server.idle_timeout, self.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            requests = parse_netstrings(self.buffer)
        except NetstringError as exc:
            log.warning("socketmap client sent no netstring (%s): closed", exc)
            self.close()
            return
        out = []
        for request in requests:
            try:
                answer = self.server.tables.lookup(request.decode("utf-8", "surrogateescape"))
            except Exception:
                log.exception("socketmap lookup failed: %r", request)
                answer = "TEMP lookup failed in mmgate"
            out.append(netstring(answer))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
            self._arm()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.server.connections.discard(self)
        self.transport = None


class SocketmapServer:
    """The socketmap listener, served by :func:`mmgate.server.loop` beside
    the SMTP (and LMTP) listeners of the same process."""

    def __init__(
        self,
        localaddr: tuple[str, int],
        router: Router,
        *,
        transport: str | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.tables = Tables(router, transport)
        self.idle_timeout = idle_timeout
        self.connections: set[_Connection] = set()
        self._socket = bind(localaddr, 128)
        self._aserver: asyncio.Server | None = None
        register(self)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        if self._aserver is None:
            loop = asyncio.get_running_loop()
            self._aserver = await loop.create_server(
                lambda: _Connection(self), sock=self._socket, backlog=128
            )

    async def close(self, timeout: float | None = None) -> None:
        unregister(self)
        if self._aserver is not None:
            self._aserver.close()
        else:
            self._socket.close()
        for connection in list(self.connections):
            connection.close()
        await asyncio.sleep(0)
