"""SMTPServer: binds, accepts, admits, and hands finished messages on.

Constructing a server binds its socket at once (a port in use raises there,
as in smtpd); :func:`loop` then serves every server constructed so far, the
way ``asyncore.loop()`` did for smtpd scripts. ``serve_forever()`` and
``async with`` serve one. ``process_message`` may be a plain function
(called as smtpd called it: on the loop's thread, one call at a time, in
order; see ``sync_process_message``) or ``async def`` (concurrent).
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
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, cast

from mmgate import proxyheader, runtime
from mmgate._version import __version__
from mmgate.channel import TLS_HANDSHAKE, SMTPChannel
from mmgate.hooks import HookChain
from mmgate.networks import LOOPBACK, Network, in_networks
from mmgate.smtp import replies
from mmgate.smtp.framing import BareLinePolicy, MessageData
from mmgate.smtp.limits import (
    COMMAND_TIMEOUT,
    DATA_RATE_GRACE,
    DATA_SIZE_DEFAULT,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_CLIENT,
    MEMORY_BUDGET,
    MIN_DATA_RATE,
    SPOOL_MEMORY,
    SPOOL_THRESHOLD,
    Limits,
)
from mmgate.smtp.replies import Reply
from mmgate.smtp.session import SessionConfig
from mmgate.spoolfile import (
    LARGE_BLOCK,
    MemoryPool,
    Spooled,
    give_back_memory,
    keep_large_blocks,
    map_large_blocks,
)

log = logging.getLogger("mmgate.smtp")

#: What process_message may give: None (250), a reply string, or a Reply.
ProcessResult = str | Reply | None

#: The channel whose message process_message is handling, for code (a
#: PureProxy's relay, a gateway) that needs the session behind the message.
current_channel: contextvars.ContextVar[SMTPChannel] = contextvars.ContextVar("current_channel")


class Listener(Protocol):
    """What :func:`loop` serves: an SMTP server, or a listener beside it
    (the Postfix socketmap) that starts and stops with it."""

    async def start(self) -> None: ...

    async def close(self, timeout: float | None = None) -> None: ...


#: How long a balancer has to send the PROXY header after connecting.
PROXY_HEADER_TIMEOUT = 10.0

#: Servers constructed and not yet closed: what :func:`loop` serves.
_registry: list[Listener] = []


def register(listener: Listener) -> None:
    """Serve ``listener`` with the SMTP servers in :func:`loop`; it takes
    itself out when closed (:func:`unregister`)."""
    _registry.append(listener)


def unregister(listener: Listener) -> None:
    if listener in _registry:
        _registry.remove(listener)


_REPLY_LINE = re.compile(r"[2-5][0-9][0-9](?:[ -][^\r\n]*)?")


@functools.cache
def _default_fqdn() -> str:
    # socket.getfqdn() may ask DNS; smtpd asked once per channel, we once.
    return socket.getfqdn()


def bind(localaddr: tuple[str, int], backlog: int) -> socket.socket:
    """A listening, non-blocking socket, bound before the loop runs (so a
    port in use stops the constructor, not the serving)."""
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


def _failed(peer: Any) -> Reply:
    """process_message raised: said in the log, answered 451 4.3.0."""
    log.exception("%s: process_message failed; answered 451", peer)
    return replies.LOCAL_ERROR


async def _ready(value: Any) -> Any:
    """``value``, awaited if it is awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


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
    On a PROXY-protocol listener the peer is the one the balancer's header
    names: the header is read first (from a trusted balancer only, within
    ``PROXY_HEADER_TIMEOUT``), and admission and the session see the real
    client. A missing or malformed header closes the connection unanswered.
    """

    def __init__(self, server: SMTPServer, *, proxy: bool = False) -> None:
        self._server = server
        self._proxy = proxy
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if not self._proxy:
            self._admit(peer, b"")
            return
        if not in_networks(str(peer[0]), self._server.proxy_networks):
            log.warning("%s: not a trusted balancer; closed (PROXY listener)", peer)
            transport.abort()
            return
        self._timer = asyncio.get_running_loop().call_later(
            PROXY_HEADER_TIMEOUT, self._give_up, "no PROXY header in time"
        )

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            proxied = proxyheader.parse(self._buf)
        except proxyheader.HeaderError as exc:
            self._give_up(str(exc))
            return
        if proxied is None or self._transport is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        rest = bytes(self._buf[proxied.length :])
        self._buf = bytearray()
        # LOCAL (a health check): the balancer's own connection
        self._admit(proxied.client or self._transport.get_extra_info("peername"), rest)

    def _give_up(self, why: str) -> None:
        if self._transport is not None:
            peer = self._transport.get_extra_info("peername")
            log.warning("%s: %s; closed without a greeting", peer, why)
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None

    def _admit(self, peer: Any, rest: bytes) -> None:
        transport = self._transport
        assert transport is not None
        server = self._server
        if type(peer) is tuple and peer and type(peer[0]) is str:
            # one string per client address, not one per connection
            peer = (sys.intern(peer[0]), *peer[1:])
        refusal = server._admission(peer)
        if refusal is not None:
            log.warning("%s: refused: %s", peer, refusal)
            transport.write(refusal.to_bytes())
            transport.close()
            return
        channel = server.channel_class(
            server,
            None,  # the socket: read from the transport when asked for
            peer,
            server.data_size_limit,
            None,
            server.enable_SMTPUTF8,
            server._decode_data,
        )
        self._transport = None
        transport.set_protocol(channel)
        channel.connection_made(transport)
        if rest:  # the client's first bytes came with the header
            channel.data_received(rest)


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
    #: How a plain ``def process_message`` is called. ``"inline"``: on the
    #: event loop's thread, one call at a time, in the order messages end,
    #: as smtpd called it (the thread that built the server, when
    #: :func:`loop` runs there, so objects made in ``__init__`` such as a
    #: sqlite3 connection work); other sessions wait meanwhile, as they did
    #: under smtpd. ``"thread"``: one dedicated worker thread, still one call
    #: at a time and in order, while other sessions go on. ``async def`` is
    #: the way to concurrency. See benchmarks/smtpd_path.py for both.
    sync_process_message = "inline"
    #: Give process_message a large message as a
    #: :class:`~mmgate.spoolfile.Spooled` (still on disk) instead of bytes.
    #: For servers that stream it on (PureProxy, MailmanProxy); smtpd-style
    #: code gets the whole ``data`` it expects, read only when it is called.
    takes_spooled = False
    #: Large messages are parsed or copied in worker threads (the gateway's
    #: parse and pickle): the serving process then maps each large block
    #: anew, since a thread's heap does not give memory back (see
    #: :func:`mmgate.spoolfile.map_large_blocks`).
    large_blocks_in_threads = False
    #: Offer DSN (RFC 3461) and take its parameters: for servers that pass
    #: them on (PureProxy); a plain server would have to send the DSNs itself.
    offers_dsn = False
    #: Offer CHUNKING (BDAT) and BINARYMIME, RFC 3030
    offers_chunking = True
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
        command_timeout: float = COMMAND_TIMEOUT,
        min_data_rate: float = MIN_DATA_RATE,
        data_rate_grace: float = DATA_RATE_GRACE,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        max_bad_commands: int = 20,
        shutdown_timeout: float = 30.0,
        fqdn: str | None = None,
        backlog: int = 1024,
        plugins: Sequence[object] = (),
        per_client_exempt: Sequence[Network] | None = None,
        spool_threshold: int = SPOOL_THRESHOLD,
        memory_budget: int = MEMORY_BUDGET,
        spool_dir: str | Path | None = None,
        spool_memory: int = SPOOL_MEMORY,
        tls_context: ssl.SSLContext | None = None,
        tls_required_networks: Sequence[Network] = (),
        proxy_protocol: bool = False,
        proxy_networks: Sequence[Network] = LOOPBACK,
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
        self.command_timeout = command_timeout
        self.min_data_rate = min_data_rate
        self.data_rate_grace = data_rate_grace
        self._sweeper: asyncio.Task[None] | None = None
        self._large_ended = False  # a large message ended since the last sweep
        self._trim_due = False  # large messages stopped: give memory back
        self.max_connections = max_connections
        self.max_connections_per_client = max_connections_per_client
        self.max_bad_commands = max_bad_commands
        self.shutdown_timeout = shutdown_timeout
        self.fqdn = fqdn or _default_fqdn()
        self.backlog = backlog
        #: message text past this many octets goes to a file in ``spool_dir``
        #: as it arrives (0: never), so a session holds about this much of it
        self.spool_threshold = spool_threshold
        #: message text all sessions together may hold in memory; DATA beyond
        #: it is 452 4.3.1 (each session in DATA counts spool_threshold)
        self.memory_budget = memory_budget
        self.spool_dir = Path(spool_dir) if spool_dir else Path(tempfile.gettempdir())
        #: spooled text all sessions may keep in memory before it spills to
        #: files in spool_dir (a few large messages cost no disk I/O)
        self.spool_memory = MemoryPool(spool_memory)
        self._in_memory = 0
        if per_client_exempt is not None:
            self.per_client_exempt = tuple(per_client_exempt)
        self.hooks = HookChain()
        self.set_plugins(plugins)
        self.shutting_down = False
        self._channels: set[SMTPChannel] = set()
        self._per_client: Counter[str] = Counter()
        self._aserver: asyncio.Server | None = None
        self._pm_is_async = inspect.iscoroutinefunction(self.process_message)
        self._serial: ThreadPoolExecutor | None = None
        self._pm_options = _accepts_options(self.process_message)
        #: STARTTLS is offered when set (see mmgate.tls); replace it, or
        #: reload its certificate, at any time: new handshakes use it
        self.tls_context = tls_context
        #: clients that must use TLS before MAIL (530 5.7.0)
        self.tls_required_networks = tuple(tls_required_networks)
        #: the main listener reads a PROXY header (v1 or v2) from the
        #: balancers in proxy_networks, and takes no other connection
        self.proxy_protocol = proxy_protocol
        self.proxy_networks = tuple(proxy_networks)
        #: more listening sockets (an implicit-TLS one): socket, TLS context
        self._more: list[tuple[socket.socket, ssl.SSLContext | None]] = []
        self._more_servers: list[asyncio.Server] = []
        self._socket: socket.socket | None = bind(localaddr, backlog)
        register(self)
        log.debug("%s bound to %s, upstream %s", type(self).__name__, self.address, remoteaddr)

    @property
    def address(self) -> tuple[str, int]:
        """The address really bound (the port, when ``localaddr`` said 0)."""
        if self._socket is not None:
            host, port = self._socket.getsockname()[:2]
            return host, port
        return self._localaddr

    def add_listener(
        self, localaddr: tuple[str, int], *, implicit_tls: bool = False
    ) -> tuple[str, int]:
        """Listen on ``localaddr`` too, for the same sessions; with
        ``implicit_tls`` the connection is TLS from its first octet (RFC
        8314), with :attr:`tls_context`. Returns the address bound."""
        if implicit_tls and self.tls_context is None:
            raise ValueError("implicit TLS needs a tls_context")
        sock = bind(localaddr, self.backlog)
        self._more.append((sock, self.tls_context if implicit_tls else None))
        host, port = sock.getsockname()[:2]
        return host, port

    def tls_required(self, client_ip: str) -> bool:
        """Whether this client must start TLS before MAIL. (The channel asks
        only when some network is configured: with none, it is never.)"""
        return in_networks(client_ip, self.tls_required_networks)

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

    def xforward_allowed(self, client_ip: str) -> bool:
        """Whether this client may name another with XFORWARD (an MTA in
        front that this server trusts): nobody, for a plain server."""
        return False

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
        data: bytes | str | Spooled,
        event: MessageData,
    ) -> asyncio.Future[Reply | str] | Reply | str:
        """process_message's verdict: at once for a plain ``def`` called
        inline (smtpd's way), else a future of it."""
        if self._pm_is_async or self.sync_process_message == "thread":
            return asyncio.get_running_loop().create_task(
                self._run_process_message(channel, peer, mailfrom, rcpttos, data)
            )
        # smtpd's way: on this thread, one call at a time, in order.
        token = current_channel.set(channel)
        try:
            # (no typing.cast here: at run time it is a call of its own)
            if self._pm_options:
                result = self.process_message(
                    peer,
                    mailfrom,
                    rcpttos,
                    data,  # type: ignore[arg-type]
                    **self._options(channel),
                )
            else:
                result = self.process_message(peer, mailfrom, rcpttos, data)  # type: ignore[arg-type]
        except Exception:
            result = _failed(peer)
        finally:
            current_channel.reset(token)
        if result is None:  # (the common case first)
            return replies.MESSAGE_ACCEPTED
        if not isinstance(result, Reply | str) and inspect.isawaitable(result):
            # a plain def that hands back a coroutine
            return asyncio.get_running_loop().create_task(self._finish(result, peer))
        return self._as_reply(result, peer)

    def _options(self, channel: SMTPChannel) -> dict[str, Any]:
        if not self._pm_options:
            return {}
        return {"mail_options": channel.mail_options, "rcpt_options": channel.rcpt_options}

    async def _finish(self, pending: Awaitable[ProcessResult], peer: Any) -> Reply | str:
        try:
            result = await pending
        except Exception:
            return _failed(peer)
        return self._as_reply(result, peer)

    async def _run_process_message(
        self,
        channel: SMTPChannel,
        peer: Any,
        mailfrom: str,
        rcpttos: list[str],
        data: bytes | str | Spooled,
    ) -> Reply | str:
        current_channel.set(channel)  # in this task's own context
        kwargs = self._options(channel)
        try:
            if self._pm_is_async:
                result = self.process_message(peer, mailfrom, rcpttos, cast(Any, data), **kwargs)
            else:
                call = functools.partial(
                    contextvars.copy_context().run,
                    self.process_message,
                    peer,
                    mailfrom,
                    rcpttos,
                    cast(Any, data),
                    **kwargs,
                )
                if self._serial is None:
                    self._serial = ThreadPoolExecutor(1, thread_name_prefix="process_message")
                result = await asyncio.get_running_loop().run_in_executor(self._serial, call)
        except Exception:
            return _failed(peer)
        return await self._finish(_ready(result), peer)

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

    # -- the memory budget for message text ------------------------------
    @property
    def _message_share(self) -> int:
        """What a session in DATA may hold in memory: up to the spool
        threshold, or the whole message when nothing is spooled."""
        return self.spool_threshold or self.limits.message_size or 0

    def _reserve_message(self) -> bool:
        share = self._message_share
        if self.memory_budget and self._in_memory + share > self.memory_budget:
            return False
        self._in_memory += share
        return True

    def _release_message(self) -> None:
        self._in_memory -= self._message_share

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
            proxy = self.proxy_protocol
            self._aserver = await loop.create_server(
                lambda: _Acceptor(self, proxy=proxy), sock=self._socket, backlog=self.backlog
            )
            for sock, context in self._more:
                self._more_servers.append(
                    await loop.create_server(
                        lambda: _Acceptor(self),
                        sock=sock,
                        backlog=self.backlog,
                        ssl=context,
                        ssl_handshake_timeout=TLS_HANDSHAKE if context else None,
                    )
                )
            self._sweeper = loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """Once a second (more often for a timeout under two seconds): end
        sessions idle for ``idle_timeout``, whose command line has been
        arriving for longer than ``command_timeout``, or whose message text
        averages less than ``min_data_rate`` after ``data_rate_grace``
        (421 4.4.2). The settings are read each time: a reload changes them."""
        while True:
            timeouts = [t for t in (self.idle_timeout, self.command_timeout) if t]
            await asyncio.sleep(min([1.0, *(t / 2 for t in timeouts)]))
            now = time.monotonic()  # the channels' clock
            for channel in list(self._channels):
                channel.check_pace(now)
            # A sweep with no large message ended after one with some: the
            # burst is over, and the memory kept for it goes back.
            if self._large_ended:
                self._large_ended, self._trim_due = False, True
            elif self._trim_due:
                self._trim_due = False
                give_back_memory()

    def _message_ended(self, size: int) -> None:
        if size >= LARGE_BLOCK:
            self._large_ended = True

    def makes_large_blocks_in_threads(self) -> bool:
        """Does large message memory get made off the loop's thread? (The
        gateway's work, or process_message in its worker thread.)"""
        return self.large_blocks_in_threads or (
            self.sync_process_message == "thread" and not self._pm_is_async
        )

    def session_config(self, **values: Any) -> SessionConfig:
        """One frozen SessionConfig shared by every session with the same
        values, rather than one per connection."""
        return _shared_session_config(tuple(values.items()))

    async def close(self, timeout: float | None = None) -> None:
        """Stop gracefully: no new connections; 421 to idle sessions; let
        transactions in flight finish until ``timeout``; then 421 to all."""
        self.shutting_down = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        unregister(self)
        if self._aserver is not None:
            self._aserver.close()
        elif self._socket is not None:
            self._socket.close()
        self._socket = None
        for more in self._more_servers:
            more.close()
        if not self._more_servers:
            for sock, _ in self._more:
                sock.close()
        self._more, self._more_servers = [], []
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
        if self._serial is not None:
            self._serial.shutdown(wait=False)

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


@functools.lru_cache(maxsize=64)  # (bounded: settings may be reloaded many times)
def _shared_session_config(values: tuple[tuple[str, Any], ...]) -> SessionConfig:
    return SessionConfig(**dict(values))


def set_large_block_policy(servers: Sequence[Listener]) -> None:
    """For the process that serves ``servers``: large messages' memory
    comes back, mapped anew each time where worker threads make it, else
    kept while large messages come and given back when they stop."""
    if any(isinstance(s, SMTPServer) and s.makes_large_blocks_in_threads() for s in servers):
        map_large_blocks()
    else:
        keep_large_blocks()


async def _serve_until_signalled(
    servers: list[Listener], on_hangup: Callable[[], None] | None = None
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    set_large_block_policy(servers)
    installed = []
    handlers: list[tuple[signal.Signals, Callable[[], None]]] = [
        (signal.SIGTERM, stop.set),
        (signal.SIGINT, stop.set),
    ]
    if on_hangup is not None:
        handlers.append((signal.SIGHUP, on_hangup))
    for sig, handler in handlers:
        try:
            loop.add_signal_handler(sig, handler)
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
    *,
    on_hangup: Callable[[], None] | None = None,
) -> None:
    """Serve every server constructed so far, until SIGTERM or SIGINT.

    The successor of ``asyncore.loop()`` in smtpd scripts; its arguments are
    accepted and ignored. ``on_hangup`` is called on SIGHUP (a reload of
    settings, for ``mmgate serve``); sessions are not touched by it.
    """
    servers = list(_registry)
    if not servers:
        raise RuntimeError("no SMTPServer has been constructed")
    runtime.run(_serve_until_signalled(servers, on_hangup))
