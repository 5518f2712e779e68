"""SMTPServer: binds, accepts, admits, and hands finished messages on.

Constructing a server binds its socket at once (a port in use raises there,
as in smtpd); :func:`loop` then serves every server constructed so far, the
way ``asyncore.loop()`` did for smtpd scripts. ``serve_forever()`` and
``async with`` serve one. ``process_message`` may be a plain function (run in
a worker thread, so a slow one never stalls other sessions) or ``async def``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import inspect
import logging
import re
import signal
import socket
from collections import Counter
from collections.abc import Awaitable, Sequence
from typing import Any, cast

from mmgate import runtime
from mmgate._version import __version__
from mmgate.channel import DATA_SIZE_DEFAULT, SMTPChannel
from mmgate.hooks import HookChain
from mmgate.networks import LOOPBACK, Network, in_networks
from mmgate.smtp import replies
from mmgate.smtp.framing import BareLinePolicy, MessageData
from mmgate.smtp.limits import IDLE_TIMEOUT, Limits
from mmgate.smtp.replies import Reply

log = logging.getLogger("mmgate.smtp")

#: What process_message may give: None (250), a reply string, or a Reply.
ProcessResult = str | Reply | None

#: The channel whose message process_message is handling, for code (a
#: PureProxy's relay, a gateway) that needs the session behind the message.
current_channel: contextvars.ContextVar[SMTPChannel] = contextvars.ContextVar("current_channel")

#: Servers constructed and not yet closed: what :func:`loop` serves.
_registry: list[SMTPServer] = []
_REPLY_LINE = re.compile(r"[2-5][0-9][0-9](?:[ -][^\r\n]*)?")


@functools.cache
def _default_fqdn() -> str:
    # socket.getfqdn() may ask DNS; smtpd asked once per channel, we once.
    return socket.getfqdn()


def _bind(localaddr: tuple[str, int], backlog: int) -> socket.socket:
    host, port = localaddr
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _accepts_options(function: Any) -> bool:
    """Does ``process_message`` take smtpd's ``mail_options``/``rcpt_options``?

    smtpd-era overrides were written as ``(peer, mailfrom, rcpttos, data)``;
    passing them keywords they do not take would break them.
    """
    params = inspect.signature(function).parameters.values()
    return any(p.kind is p.VAR_KEYWORD or p.name == "mail_options" for p in params)


class _Acceptor(asyncio.Protocol):
    """Admits a connection, then hands the transport to a new channel.

    The channel is built only once the socket and peer are known, so
    ``channel_class(server, conn, addr, ...)`` gets smtpd's real arguments.
    """

    def __init__(self, server: SMTPServer) -> None:
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        server = self._server
        peer = transport.get_extra_info("peername")
        refusal = server._admission(peer)
        if refusal is not None:
            log.warning("%s: refused: %s", peer, refusal)
            transport.write(refusal.to_bytes())
            transport.close()
            return
        channel = server.channel_class(
            server,
            transport.get_extra_info("socket"),
            peer,
            server.data_size_limit,
            None,
            server.enable_SMTPUTF8,
            server._decode_data,
        )
        transport.set_protocol(channel)
        channel.connection_made(transport)


class SMTPServer:
    """An SMTP server bound to ``localaddr``; ``remoteaddr`` is the upstream.

    The first six arguments are smtpd's (``map`` is accepted and ignored).
    The keyword-only ones are mmgate's robustness settings; see docs/usage.md.
    """

    #: The channel class built for each connection, as in smtpd.
    channel_class: type[SMTPChannel] = SMTPChannel
    #: ``"\\n"``: data reaches process_message as smtpd gave it (LF line
    #: endings, no final newline). ``"\\r\\n"``: the wire form, CRLF lines.
    data_line_ending = "\n"
    banner = f"ESMTP mmgate {__version__}"
    #: Clients the per-client connection cap does not apply to, as Postfix
    #: exempts $mynetworks (loopback by default) from its anvil limits.
    per_client_exempt: tuple[Network, ...] = LOOPBACK

    def __init__(
        self,
        localaddr: tuple[str, int],
        remoteaddr: tuple[str, int] | None,
        data_size_limit: int | None = DATA_SIZE_DEFAULT,
        map: object = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        *,
        limits: Limits | None = None,
        bare_lines: BareLinePolicy = BareLinePolicy.NORMALISE,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = 1000,
        max_connections_per_client: int = 50,
        max_bad_commands: int = 20,
        shutdown_timeout: float = 30.0,
        fqdn: str | None = None,
        backlog: int = 1024,
        plugins: Sequence[object] = (),
        per_client_exempt: Sequence[Network] | None = None,
    ) -> None:
        if enable_SMTPUTF8 and decode_data:
            raise ValueError(
                "decode_data and enable_SMTPUTF8 cannot be set to True at the same time"
            )
        self._localaddr = localaddr
        self._remoteaddr = remoteaddr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.limits = dataclasses.replace(limits or Limits(), message_size=data_size_limit or None)
        self.bare_lines = bare_lines
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.max_bad_commands = max_bad_commands
        self.shutdown_timeout = shutdown_timeout
        self.fqdn = fqdn or _default_fqdn()
        self.backlog = backlog
        if per_client_exempt is not None:
            self.per_client_exempt = tuple(per_client_exempt)
        self.hooks = HookChain()
        self.set_plugins(plugins)
        self.shutting_down = False
        self._channels: set[SMTPChannel] = set()
        self._per_client: Counter[str] = Counter()
        self._aserver: asyncio.Server | None = None
        self._pm_is_async = inspect.iscoroutinefunction(self.process_message)
        self._pm_options = _accepts_options(self.process_message)
        self._socket: socket.socket | None = _bind(localaddr, backlog)
        _registry.append(self)
        log.debug("%s bound to %s, upstream %s", type(self).__name__, self.address, remoteaddr)

    @property
    def address(self) -> tuple[str, int]:
        """The address really bound (the port, when ``localaddr`` said 0)."""
        if self._socket is not None:
            host, port = self._socket.getsockname()[:2]
            return host, port
        return self._localaddr

    # -- the hooks -------------------------------------------------------
    def final_hooks(self) -> list[object]:
        """The server's own steps, run after the plugins' (see mmgate.hooks):
        none here, so every valid command is accepted as smtpd accepted it."""
        return []

    def set_plugins(self, plugins: Sequence[object]) -> None:
        """Replace the plugins; sessions pick the new chain at their next step.
        A plugin with an ``attach(server)`` method is given the server first."""
        for plugin in plugins:
            attach = getattr(plugin, "attach", None)
            if attach is not None:
                attach(self)
        self.hooks = HookChain(plugins, self.final_hooks())

    def data_refusal(self, channel: SMTPChannel) -> Reply | None:
        """A reply to refuse the DATA command with, or None to answer 354."""
        return None

    def process_message(
        self, peer: Any, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any
    ) -> ProcessResult | Awaitable[ProcessResult]:
        """Override to do something with a message; return None for 250.

        ``peer`` is the client's address, ``mailfrom`` the envelope sender,
        ``rcpttos`` the envelope recipients, ``data`` the message. A string
        returned is the reply (``"550 5.7.1 Not today"``). ``kwargs`` holds
        ``mail_options`` and ``rcpt_options``.
        """
        raise NotImplementedError

    def _dispatch_message(
        self,
        channel: SMTPChannel,
        peer: Any,
        mailfrom: str,
        rcpttos: list[str],
        data: bytes | str,
        event: MessageData,
    ) -> asyncio.Future[Reply | str]:
        return asyncio.get_running_loop().create_task(
            self._run_process_message(channel, peer, mailfrom, rcpttos, data)
        )

    async def _run_process_message(
        self, channel: SMTPChannel, peer: Any, mailfrom: str, rcpttos: list[str], data: bytes | str
    ) -> Reply | str:
        current_channel.set(channel)  # in this task's own context
        kwargs: dict[str, Any] = {}
        if self._pm_options:
            kwargs = {"mail_options": channel.mail_options, "rcpt_options": channel.rcpt_options}
        try:
            if self._pm_is_async:
                result = self.process_message(peer, mailfrom, rcpttos, data, **kwargs)
            else:
                call = functools.partial(
                    contextvars.copy_context().run,
                    self.process_message,
                    peer,
                    mailfrom,
                    rcpttos,
                    data,
                    **kwargs,
                )
                result = await asyncio.get_running_loop().run_in_executor(None, call)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            log.exception("%s: process_message failed; answered 451", peer)
            return replies.LOCAL_ERROR
        return self._as_reply(result, peer)

    @staticmethod
    def _as_reply(result: object, peer: Any) -> Reply | str:
        if result is None:
            return replies.MESSAGE_ACCEPTED
        if isinstance(result, Reply):
            return result
        if isinstance(result, str) and all(_REPLY_LINE.fullmatch(x) for x in result.split("\r\n")):
            return result
        log.error(
            "%s: process_message returned %r, not None or a reply; answered 451", peer, result
        )
        return replies.LOCAL_ERROR

    # -- admission -------------------------------------------------------
    def _admission(self, peer: Any) -> Reply | None:
        if self.shutting_down:
            return replies.SHUTTING_DOWN
        if self.max_connections and len(self._channels) >= self.max_connections:
            return replies.TOO_MANY_CONNECTIONS
        host = peer[0] if isinstance(peer, tuple) else str(peer)
        cap = self.max_connections_per_client
        if cap and self._per_client[host] >= cap and not in_networks(host, self.per_client_exempt):
            return replies.TOO_MANY_FROM_HOST
        return None

    def _channel_opened(self, channel: SMTPChannel) -> None:
        self._channels.add(channel)
        self._per_client[self._client_key(channel)] += 1

    def _channel_closed(self, channel: SMTPChannel) -> None:
        if channel in self._channels:
            self._channels.discard(channel)
            key = self._client_key(channel)
            self._per_client[key] -= 1
            if self._per_client[key] <= 0:
                del self._per_client[key]

    @staticmethod
    def _client_key(channel: SMTPChannel) -> str:
        return channel.addr[0] if isinstance(channel.addr, tuple) else str(channel.addr)

    @property
    def connections(self) -> int:
        return len(self._channels)

    # -- serving ---------------------------------------------------------
    async def start(self) -> None:
        """Start accepting on the running event loop."""
        if self._socket is None:
            raise RuntimeError("server is closed")
        if self._aserver is None:
            loop = asyncio.get_running_loop()
            # create_server listens again, with its own backlog of 100 unless told.
            self._aserver = await loop.create_server(
                lambda: _Acceptor(self), sock=self._socket, backlog=self.backlog
            )

    async def close(self, timeout: float | None = None) -> None:
        """Stop gracefully: no new connections; 421 to idle sessions; let
        transactions in flight finish until ``timeout``; then 421 to all."""
        self.shutting_down = True
        if self in _registry:
            _registry.remove(self)
        if self._aserver is not None:
            self._aserver.close()
        elif self._socket is not None:
            self._socket.close()
        self._socket = None
        for channel in list(self._channels):
            if not channel.in_transaction:
                channel.shutdown()
        deadline = asyncio.get_running_loop().time() + (
            self.shutdown_timeout if timeout is None else timeout
        )
        while self._channels and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for channel in list(self._channels):
            channel.shutdown()
        await asyncio.sleep(0)

    async def __aenter__(self) -> SMTPServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def serve(self) -> None:
        """Serve until SIGTERM or SIGINT, then close gracefully."""
        await _serve_until_signalled([self])

    def serve_forever(self) -> None:
        """Block serving this server until SIGTERM/SIGINT (socketserver style)."""
        runtime.run(self.serve())


async def _serve_until_signalled(servers: list[SMTPServer]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread: the caller stops us another way
    try:
        for server in servers:
            await server.start()
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        await asyncio.gather(*(server.close() for server in servers))
        for sig in installed:
            loop.remove_signal_handler(sig)


def loop(
    timeout: float | None = None,
    use_poll: bool = False,
    map: object = None,
    count: int | None = None,
) -> None:
    """Serve every server constructed so far, until SIGTERM or SIGINT.

    The successor of ``asyncore.loop()`` in smtpd scripts; its arguments are
    accepted and ignored.
    """
    servers = list(_registry)
    if not servers:
        raise RuntimeError("no SMTPServer has been constructed")
    runtime.run(_serve_until_signalled(servers))
