"""SMTPChannel: one client session, with the API Python's smtpd documented.

The channel is the asyncio adapter of the sans-I/O
:class:`~mmgate.smtp.session.Session`: it feeds the session the bytes it
receives, dispatches each command to a ``smtp_<COMMAND>`` method (so a
subclass adds a command by defining ``smtp_XFOO``, or changes one by
overriding it, as with smtpd), and writes what the session has to send, a
pipelined batch's replies in one write (RFC 2920). Parsing, sequencing,
limits and replies live in :mod:`mmgate.smtp`; what is here is I/O: the
transport, timers, flow control and waiting for work done elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from mmgate import tls
from mmgate.hooks import HookResult, Message, Outcome, header_fields, pending
from mmgate.smtp import replies, state, xforward
from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.events import Command, Hello, MailFrom, RcptTo
from mmgate.smtp.framing import ChunkReceived, ChunkSkipped, MessageChunk, MessageData
from mmgate.smtp.limits import DATA_SIZE_DEFAULT, Limits
from mmgate.smtp.replies import Reply
from mmgate.smtp.session import Session, printable
from mmgate.smtp.state import Phase
from mmgate.spoolfile import MemoryPool, Spooled, SpoolFile

if TYPE_CHECKING:
    from mmgate.server import SMTPServer

log = logging.getLogger("mmgate.smtp")
#: How long a client has to finish the TLS handshake after STARTTLS.
TLS_HANDSHAKE = 30.0
T = TypeVar("T")
_BACKGROUND: set[asyncio.Future[Any]] = set()


def _spawn(work: Awaitable[Any]) -> None:
    """Run ``work`` as a task, held until done: the loop keeps only weak
    references to tasks."""
    task = asyncio.ensure_future(work)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


@lru_cache(maxsize=64)  # (bounded: settings may be reloaded many times)
def _ehlo_reply(lines: tuple[str, ...]) -> Reply:
    """The EHLO reply of these lines (name, then keywords), made once per
    set rather than formatted at each EHLO: a TLS session sends two."""
    return Reply(250, None, "\n".join(lines))


class MadeOnUse(Generic[T]):
    """A field made by ``factory`` when first used, so that an idle session
    holds none: the channel's plugin notes and XFORWARD attributes. The
    value lives in the slot of the same name with a leading underscore,
    which ``None`` leaves unmade. (The session's transaction lists are
    properties instead: mypyc compiles no descriptor of this kind.)"""

    def __init__(self, factory: Callable[[], T]) -> None:
        self.factory = factory

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> MadeOnUse[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> T | MadeOnUse[T]:
        if obj is None:
            return self
        value: T | None = getattr(obj, self.slot)
        if value is None:
            value = self.factory()
            setattr(obj, self.slot, value)
        return value

    def __set__(self, obj: object, value: T) -> None:
        setattr(obj, self.slot, value)


def _delegate(name: str, doc: str) -> Any:
    """An smtpd instance variable that lives in the session."""

    def get(self: SMTPChannel) -> Any:
        return getattr(self.session, name)

    def set_(self: SMTPChannel, value: Any) -> None:
        setattr(self.session, name, value)

    return property(get, set_, doc=doc)


@lru_cache(maxsize=64)
def _handler_name(verb: str) -> str:
    """``smtp_`` and the verb, made once per verb rather than once per
    command: an interned name, hashed once, that the type's attribute cache
    matches by identity."""
    return sys.intern("smtp_" + verb)


_DATA_PHASES = frozenset({Phase.DATA, Phase.RECEIVED})  # smtpd's DATA state


class _Inbound:
    """A message a channel takes in: its share of the memory budget, its
    spool, its pace. Made at DATA (or the first BDAT) and dropped as its
    transaction ends, so that an idle session holds none of it."""

    __slots__ = ("delivering", "held", "octets", "since", "spool", "spool_failed")

    def __init__(self) -> None:
        self.spool: SpoolFile | None = None  # the message arriving, on disk
        self.spool_failed = False
        self.held = 0  # octets of it kept whole, from the spool memory pool
        self.delivering: SpoolFile | None = None  # the message being delivered
        #: when its text began to arrive (None: it is all here)
        self.since: float | None = None
        self.octets = 0  # octets of text so far, for the pace

    def give_back_held(self, pool: MemoryPool) -> None:
        """The octets kept whole go back to the spool memory pool."""
        if self.held:
            pool.give(self.held)
            self.held = 0


class SMTPChannel(asyncio.Protocol):
    """One SMTP session between the server and a client.

    Instance variables are smtpd's: ``smtp_server conn addr received_lines
    smtp_state seen_greeting mailfrom rcpttos received_data fqdn peer``, plus
    ``extended_smtp``, ``mail_options``, ``rcpt_options`` and
    ``require_SMTPUTF8``. ``map`` is accepted for smtpd's signature and
    ignored: there is no asyncore socket map.
    """

    COMMAND = 0
    DATA = 1
    #: RFC 2033 LMTP instead of SMTP (see :mod:`mmgate.lmtp`)
    lmtp = False

    # Slots: an idle session is mostly this object, and a dict of some
    # thirty attributes would be most of it. No ``__dict__`` either: on
    # Python 3.11 it costs 32 octets a session even unused. A subclass (how
    # smtpd code extends a channel) has one of its own; plugins keep their
    # notes in ``notes``.
    __slots__ = (
        "_batching",
        "_busy",
        "_closing",
        "_conn",
        "_forwarded",
        "_idle_since",
        "_inbound",
        "_line",
        "_notes",
        "_partial_since",
        "_transport",
        "_txn",
        "_write_paused",
        "addr",
        "fqdn",
        "last_message",
        "received_data",
        "session",
        "smtp_server",
        "tls_info",
    )

    seen_greeting = _delegate("seen_greeting", "The name the client gave in HELO/EHLO.")
    extended_smtp = _delegate("extended_smtp", "True after EHLO.")
    mailfrom = _delegate("mailfrom", "The envelope sender of the open transaction.")
    rcpttos = _delegate("rcpttos", "The envelope recipients accepted so far.")
    mail_options = _delegate("mail_options", "MAIL's parameters, in smtpd's form.")
    rcpt_options = _delegate("rcpt_options", "Every RCPT's parameters, in smtpd's form.")
    require_SMTPUTF8 = _delegate("require_SMTPUTF8", "MAIL asked for SMTPUTF8.")

    def __init__(
        self,
        server: SMTPServer,
        conn: Any,
        addr: Any,
        data_size_limit: int | None = DATA_SIZE_DEFAULT,
        map: object = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
    ) -> None:
        if enable_SMTPUTF8 and decode_data:
            raise ValueError(
                "decode_data and enable_SMTPUTF8 cannot be set to True at the same time"
            )
        self.smtp_server = server
        self._conn = conn
        self.addr = addr
        limits = server.limits
        if limits.message_size != (data_size_limit or None):
            limits = dataclasses.replace(limits, message_size=data_size_limit or None)
        self.session = Session(
            server.session_config(
                limits=limits,
                bare_lines=server.bare_lines,
                smtputf8=enable_SMTPUTF8,
                eight_bit=not decode_data,
                max_errors=server.max_bad_commands,
                chunk_size=server.spool_threshold or None,
                lmtp=self.lmtp,
                dsn=server.offers_dsn,
                chunking=server.offers_chunking,
            )
        )
        #: the message taken in, from DATA (or its first BDAT) until its
        #: transaction ends; None: none is, and none of the budget is held
        self._inbound: _Inbound | None = None
        # plugins' notes and XFORWARD's attributes: made when first used
        self._notes: dict[str, Any] | None = None
        self._txn: dict[str, Any] | None = None
        self._forwarded: dict[str, str] | None = None
        #: the TLS in force, in Postfix's words (None: plaintext)
        self.tls_info: str | None = None
        self._line: str | None = None
        self.received_data: str | bytes = ""
        #: The framer's account of the last message (size, long lines, bare
        #: line endings), for process_message code that reports on them.
        self.last_message: MessageData | None = None
        self.fqdn = server.fqdn
        self._batching = False
        self._busy = False  # waiting for work done elsewhere (wait_for, process_message)
        self._write_paused = False
        self._closing = False
        self._transport: asyncio.Transport | None = None
        #: the sweep that first found the session quiet (None: active since)
        self._idle_since: float | None = None
        self._partial_since: float | None = None  # a command line is arriving

    @property
    def conn(self) -> Any:
        """The connection's socket, as smtpd gave it: the one passed in, or
        (the server passes none, so that an idle session holds no socket
        object of its own) the transport's, asked for when read."""
        if self._conn is None and self._transport is not None:
            return self._transport.get_extra_info("socket")
        return self._conn

    @conn.setter
    def conn(self, conn: Any) -> None:
        self._conn = conn

    @property
    def received_lines(self) -> list[str]:
        """The line of the command being handled, while its ``smtp_`` method
        runs; empty between commands, so an idle session keeps no line."""
        return [] if self._line is None else [self._line]

    @received_lines.setter
    def received_lines(self, lines: list[str]) -> None:
        self._line = lines[-1] if lines else None

    #: plugins' notes for the whole connection, and for the transaction
    #: (emptied when it ends); XFORWARD attributes for the next transaction
    #: (see mmgate.smtp.xforward). Each made when first used.
    notes: MadeOnUse[dict[str, Any]] = MadeOnUse(dict)
    txn: MadeOnUse[dict[str, Any]] = MadeOnUse(dict)
    forwarded: MadeOnUse[dict[str, str]] = MadeOnUse(dict)

    # -- smtpd's variables that the session holds -------------------------------
    @property
    def smtp_state(self) -> int:
        """``COMMAND``, or ``DATA`` from the DATA line until the message's reply."""
        return self.DATA if self.session.phase in _DATA_PHASES else self.COMMAND

    @property
    def limits(self) -> Limits:
        return self.session.limits

    @property
    def data_size_limit(self) -> int | None:
        return self.session.limits.message_size

    @data_size_limit.setter
    def data_size_limit(self, size: int | None) -> None:
        self.session.set_message_size(size)

    @property
    def peer(self) -> Any:
        """The client's address (smtpd's ``peer``): ``addr``, one object."""
        return self.addr

    @peer.setter
    def peer(self, value: Any) -> None:
        self.addr = value

    @property
    def enable_SMTPUTF8(self) -> bool:
        """SMTPUTF8 is offered (RFC 6531), in the session's settings."""
        return self.session.config.smtputf8

    @enable_SMTPUTF8.setter
    def enable_SMTPUTF8(self, value: bool) -> None:
        self.session.config = dataclasses.replace(self.session.config, smtputf8=value)

    @property
    def _decode_data(self) -> bool:
        """The text is handed over as str (smtpd's ``_decode_data``), in the
        session's settings: then 8BITMIME is not offered, as in smtpd."""
        return not self.session.config.eight_bit

    @property
    def client_ip(self) -> str:
        """The client's address, as relay control, plugins and the journal
        judge it: the connecting host's, or the one a trusted MTA in front
        named with XFORWARD for this transaction."""
        return (self._forwarded and self._forwarded.get("ADDR")) or self.peer_ip

    @property
    def peer_ip(self) -> str:
        """The address of the host connected to us."""
        return str(self.addr[0]) if isinstance(self.addr, tuple) else str(self.addr)

    @property
    def client_helo(self) -> str:
        """The client's HELO name (XFORWARD's, if a trusted MTA gave one)."""
        return (self._forwarded and self._forwarded.get("HELO")) or self.seen_greeting

    # -- transport events ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the interface without the base class.
        self._transport = transport = cast(asyncio.Transport, transport)
        if transport.get_extra_info("ssl_object") is not None:  # implicit TLS (RFC 8314)
            self.session.tls = True
            self._note_tls(transport)
        # (No TCP_NODELAY here: asyncio's loop and uvloop both set it on
        # every TCP connection, and asking for the socket would keep an
        # object of uvloop's per session; tests/test_server.py checks it.)
        self.smtp_server._channel_opened(self)
        hooks = self.smtp_server.hooks
        if hooks.has("connect"):
            # The greeting waits for the verdict; what the client sends
            # meanwhile stays in the buffer (an early talker gains nothing).
            self._after(hooks.run("connect", self), self._greet_client)
        else:
            self._greet_client(None)

    def _greet_client(self, outcome: Outcome | None) -> None:
        if outcome is not None and outcome.refused and outcome.reply is not None:
            # RFC 5321 3.1: a server may refuse a client in its greeting.
            log.info("%s: refused at connect: %s", self._peer_text, outcome.reply)
            self.session.close(outcome.reply)
            self.close_when_done()
            return
        self.push(f"220 {self.fqdn} {self.smtp_server.banner}")
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return  # said already (a failed TLS handshake)
        self._transport = None
        if not self._busy:
            self._reset_transaction()  # a message in processing ends on its own
        self.smtp_server._channel_closed(self)
        hooks = self.smtp_server.hooks
        if hooks.has("disconnect"):
            self._background(hooks.run("disconnect", self))

    def data_received(self, data: bytes) -> None:
        self._idle_since = None  # active: no clock read (see check_pace)
        inbound = self._inbound
        if inbound is not None and inbound.since is not None:
            inbound.octets += len(data)
        self.session.framer.receive_data(data)
        if self._busy:
            # The session waits (an upstream's verdict, process_message):
            # what came stays buffered, and no more is read until the wait
            # ends (_resume). Stopped only now, not at every wait: a client
            # that waits for its reply, as most do, costs no stop and start.
            if self._transport is not None:
                self._transport.pause_reading()
            return
        self._note_partial(self._process())

    def _note_partial(self, drained: bool) -> None:
        """After the buffer was worked through (``drained``: all of it):
        start the command line's clock if part of one is left, for the
        sweep's ``command_timeout``."""
        inbound = self._inbound
        if inbound is not None and inbound.since is not None:
            return  # message text: its pace is what counts
        if drained or not self.session.framer.buffered:
            self._partial_since = None  # every line that came is complete
        elif self._partial_since is None:
            # (time.monotonic, not the loop's: no loop to keep, and on
            # Python 3.11 asyncio.get_running_loop() costs a getpid)
            self._partial_since = time.monotonic()  # a command line is arriving

    def check_pace(self, now: float) -> None:
        """The server's sweep: a session idle too long, a command line too
        slow to arrive, or message text below the minimum rate ends the
        session (421 4.4.2). One sweep for all sessions, not a timer each:
        an idle session then holds no timer at all, and no time of its own
        either. Idleness counts from the first sweep that finds the session
        quiet (``now``, one object for all): a timeout comes at most one
        sweep later than to the instant, never earlier."""
        if self._transport is None or self._closing or self._busy:
            return
        server = self.smtp_server
        if self._idle_since is None:
            self._idle_since = now  # active since the last sweep
        elif server.idle_timeout and now - self._idle_since > server.idle_timeout:
            log.info("%s: idle timeout", self._peer_text)
            self._give_up(replies.TIMEOUT)
            return
        inbound = self._inbound
        if inbound is not None and inbound.since is not None:
            elapsed = now - inbound.since
            if (
                server.min_data_rate
                and elapsed > server.data_rate_grace
                and inbound.octets < server.min_data_rate * elapsed
            ):
                log.info("%s: message text too slow", self._peer_text)
                self._give_up(replies.DATA_TOO_SLOW)
        elif (
            server.command_timeout
            and self._partial_since is not None
            and now - self._partial_since > server.command_timeout
        ):
            log.info("%s: command line too slow", self._peer_text)
            self._give_up(replies.TIMEOUT)

    def _give_up(self, reply: Reply) -> None:
        self.session.close(reply)
        self.close_when_done()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its commands.
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._busy:
            self._transport.resume_reading()
            self._process()

    # -- output ----------------------------------------------------------
    def push(self, msg: str | Reply) -> None:
        """Queue one reply; a batch's replies leave together (RFC 2920)."""
        self.session.send(msg)
        if not self._batching:
            self._flush()

    def _flush(self) -> None:
        data = self.session.data_to_send()
        if data and self._transport is not None:
            self.send_bytes(data)

    def send_bytes(self, data: bytes) -> None:
        """The one place replies reach the transport: one call, one write."""
        if self._transport is not None:
            self._transport.write(data)

    def close_when_done(self) -> None:
        """Close after the queued replies are written, as asynchat did."""
        self._closing = True
        self._flush()
        if self._transport is not None:
            self._transport.close()

    # -- the receive loop ------------------------------------------------
    def _process(self) -> bool:
        """Handle what the framer has, until it waits for more or the session
        is held; True if it ended because every octet was taken."""
        session = self.session
        drained = False
        framer = session.framer
        self._batching = True
        try:
            while not (self._busy or self._closing or self._write_paused):
                event = session.next_event()
                if event is None:
                    break
                if isinstance(event, Command):
                    self._on_command(event)
                elif isinstance(event, MessageChunk):
                    self._spool_chunk(event.data)
                elif isinstance(event, ChunkReceived):
                    self.push(replies.OK.with_text(f"{event.size} octets received"))
                elif isinstance(event, ChunkSkipped):
                    pass  # a refused BDAT's octets: its reply is out already
                else:
                    self._on_message(event)
                if framer.waiting:
                    drained = True
                    break  # all that came is handled (the common case)
            if session.closing and not self._closing:
                self.close_when_done()  # the session said 421 (too many errors)
        finally:
            self._batching = False
            self._flush()
        return drained

    def _on_command(self, command: Command) -> None:
        """Run the command's ``smtp_`` method, if it is known, offered and in
        sequence; its line is ``received_lines`` meanwhile."""
        self._line = command.line
        try:
            verb = command.verb
            method = getattr(self, _handler_name(verb), None) if verb.isascii() else None
            verbs = self.conditional_verbs
            if method is None or ((verbs is None or verb in verbs) and not self.offers(verb)):
                self.push(
                    replies.UNKNOWN_COMMAND.with_text(
                        replies.UNKNOWN_COMMAND.text.format(printable(verb))
                    )
                )
                return
            if verb != "BDAT":  # (a refused BDAT's octets must be skipped: smtp_BDAT checks)
                refusal = state.out_of_sequence(verb, self.session.phase)
                if refusal is not None:  # RFC 5321 4.1.4
                    self.push(refusal)
                    return
            method(command.arg)
        finally:
            self._line = None  # as in smtpd, no line is kept between commands

    def _parse(self, parse: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Run one of the session's parsers; its refusal is the reply."""
        try:
            return parse(*args, **kwargs)
        except ProtocolError as exc:
            self.push(exc.reply)
            return None

    def _after(self, result: HookResult, then: Callable[[Outcome | None], None]) -> None:
        """Continue with ``then`` once the hooks have spoken; an async hook
        holds the session (later pipelined commands wait, RFC 2920)."""
        if pending(result):
            self.wait_for(self._finish_hooks(result, then))
        else:
            then(cast(Outcome | None, result))

    @staticmethod
    async def _finish_hooks(
        pending: Awaitable[Outcome | None], then: Callable[[Outcome | None], None]
    ) -> None:
        then(await pending)

    @staticmethod
    def _background(result: HookResult) -> None:
        """A hook whose verdict does not matter (disconnect, reset)."""
        if pending(result):
            _spawn(result)

    def transaction_ended(self) -> None:
        """Called whenever the transaction state is cleared: after a message,
        on RSET and HELO/EHLO, and when the client leaves; must be idempotent.
        Runs the ``reset`` hooks and clears the transaction's notes."""
        if self._txn:
            hooks = self.smtp_server.hooks
            if hooks.has("reset"):
                self._background(hooks.run("reset", self))
        self._txn = None
        self._forwarded = None  # XFORWARD holds for one transaction

    def wait_for(self, work: Awaitable[None]) -> None:
        """Hold this session until ``work`` is done, then read on.

        For a command whose verdict comes from elsewhere (an upstream's RCPT
        reply): later pipelined commands wait in the buffer, so replies stay
        in order (RFC 2920). ``work`` pushes its own reply; if it raises, the
        client gets 451 4.3.0 and the session goes on.
        """
        self._busy = True  # (reading stops if the client sends meanwhile: data_received)
        _spawn(self._then_read_on(work))

    async def _then_read_on(self, work: Awaitable[None]) -> None:
        """``work``, then reading on as the task's last step. Not from a
        callback once the task is done: that would run a turn of the loop
        later, after whatever the loop queued meanwhile. After STARTTLS that
        is the client's first command over TLS, which then waited while the
        session ticket left in a write of its own, instead of in one with
        the reply."""
        try:
            await work
        except Exception:
            log.error("%s: command failed", self._peer_text, exc_info=True)
            self.push(replies.LOCAL_ERROR)
        finally:
            self._busy = False
            self._resume()

    def _resume(self) -> None:
        self._partial_since = self._idle_since = None  # the wait was ours, not the client's
        if self._transport is None:
            self._reset_transaction()  # the client left while we waited
            return
        if not self._closing:
            if not self._write_paused:
                self._transport.resume_reading()
            # what came during the wait may end in part of a command line
            self._note_partial(self._process())

    def _reset_transaction(self) -> None:
        """Forget the transaction without moving the session (the client left)."""
        self._abandon_transaction()
        self.session.clear_transaction()

    def _abandon_transaction(self) -> None:
        """Let go of what this channel holds for a transaction (RSET,
        HELO/EHLO, a client gone): the hooks' notes, smtpd's received_data,
        and BDAT chunks so far with their spool, budget and pace."""
        self.transaction_ended()
        self.received_data = ""
        self._drop_message()

    def _take_in(self) -> _Inbound | None:
        """The message about to come (DATA, or a first BDAT), with its share
        of the memory budget; None, the budget is spent."""
        if self._inbound is None:
            if not self.smtp_server._reserve_message():
                return None
            self._inbound = _Inbound()
        return self._inbound

    def _drop_message(self) -> None:
        """Give back the memory budget and remove the spool files."""
        inbound, self._inbound = self._inbound, None
        self.session.framer.hold = None  # no cycle through the channel
        if inbound is None:
            return
        server = self.smtp_server
        server._release_message()
        inbound.give_back_held(server.spool_memory)
        for spool in (inbound.spool, inbound.delivering):
            if spool is not None:
                spool.remove()

    def _hold(self, octets: int) -> bool:
        """May the framer keep ``octets`` more of a message in memory, whole?
        Only for a server that reads it whole anyway, and while the spool
        memory pool has room: a message kept whole is handed over without
        a copy, a spooled one is joined or read back from disk."""
        inbound = self._inbound
        if inbound is None or not self.smtp_server.spool_memory.take(octets, whole=True):
            return False
        inbound.held += octets
        return True

    def _spool_chunk(self, data: bytes) -> None:
        """Part of a large message: onto disk, not into memory."""
        inbound = self._inbound
        assert inbound is not None  # (text comes only after DATA or BDAT took it in)
        inbound.give_back_held(self.smtp_server.spool_memory)  # it leaves in this chunk
        if inbound.spool_failed:
            return
        try:
            if inbound.spool is None:
                server = self.smtp_server
                inbound.spool = SpoolFile(server.spool_dir, server.spool_memory)
            inbound.spool.write(data)
        except OSError as exc:
            log.error("%s: cannot spool a message: %s", self._peer_text, exc)
            inbound.spool_failed = True

    # -- the message -----------------------------------------------------
    def _on_message(self, event: MessageData) -> None:
        inbound = self._inbound
        assert inbound is not None  # (text comes only after DATA or BDAT took it in)
        inbound.since = None
        if event.error is not None:
            log.info("%s: message refused: %s", self._peer_text, event.error)
            self._end_transaction(event.error)
            return
        source: bytes | Spooled = event.data
        server = self.smtp_server
        # A BDAT message is raw (bare CR or LF, binary): a server that puts
        # it back on the wire gets it as it came, never through smtpd's form.
        if event.chunked or (event.raw and server.takes_spooled):
            spool, inbound.spool = inbound.spool, None
            if spool is None and not event.chunked:
                spool = SpoolFile(server.spool_dir, server.spool_memory)
            try:
                if spool is None or inbound.spool_failed:
                    raise OSError("the spool could not be written")
                inbound.delivering = spool
                spool.write(event.data)
                spool.finish()
            except OSError as exc:
                log.error("%s: message lost in the spool: %s", self._peer_text, exc)
                self._end_transaction(replies.INSUFFICIENT_STORAGE)
                return
            source = Spooled(b"", spool)
        server._message_ended(event.size)
        # The flags and size only: holding the data would keep every
        # connection's last message in memory until its next one.
        event.data = b""
        self.last_message = event
        self._busy = True
        session = self.session
        assert session.mailfrom is not None
        outcome: asyncio.Future[Reply | str] | Reply | str
        if server.hooks.on_message:
            outcome = asyncio.ensure_future(self._through_hooks(event, source))
        else:
            data = self._smtpd_data(source, event.lf)
            outcome = server._dispatch_message(
                self, self.addr, session.mailfrom, list(session.rcpttos), data, event
            )
            if not isinstance(outcome, asyncio.Future):  # answered inline, as smtpd did
                self._busy = False
                self._end_transaction(outcome)
                return
        outcome.add_done_callback(self._on_processed)

    def _smtpd_data(self, source: bytes | Spooled, lf: bool = False) -> bytes | str | Spooled:
        """The message as process_message takes it (``data_line_ending``,
        ``decode_data``), also kept as smtpd's ``received_data``. A spooled
        message stays on disk for servers that stream it; anyone else gets
        the whole text, read only now. ``lf``: the framer wrote it in
        smtpd's form already."""
        if isinstance(source, Spooled):
            if self.smtp_server.takes_spooled:
                return source
            raw = source.read()
        else:
            raw = source
        if self.smtp_server.data_line_ending == "\n" and not lf:
            # smtpd's form: LF line endings, without the final one (a BDAT
            # message may have none)
            raw = (raw[:-2] if raw.endswith(b"\r\n") else raw).replace(b"\r\n", b"\n")
        data = raw.decode("utf-8", "surrogateescape") if self._decode_data else raw
        self.received_data = data
        return data

    async def _through_hooks(self, event: MessageData, source: bytes | Spooled) -> Reply | str:
        """data, data_post and queue hooks, then process_message."""
        hooks = self.smtp_server.hooks
        assert self.mailfrom is not None
        message = Message(self.mailfrom, list(self.rcpttos), source)
        for name, arg in (
            ("data", lambda: header_fields(message.header_block)),
            ("data_post", lambda: message),
            ("queue", lambda: message),
        ):
            if not hooks.has(name):
                continue
            result = hooks.run(name, self, arg())
            outcome = await result if inspect.isawaitable(result) else result
            if outcome is None:
                continue
            if outcome.refused or name == "queue":
                return outcome.reply or replies.MESSAGE_ACCEPTED
        verdict = self.smtp_server._dispatch_message(
            self,
            self.peer,
            message.mail_from,
            message.rcpt_tos,
            self._smtpd_data(message.source),
            event,
        )
        return await verdict if isinstance(verdict, asyncio.Future) else verdict

    def _on_processed(self, outcome: asyncio.Future[Reply | str]) -> None:
        self._busy = False
        self._end_transaction(outcome.result())
        self._resume()

    def _end_transaction(self, reply: Reply | str) -> None:
        recipients = len(self.session.rcpttos)
        self.transaction_ended()
        accepted = reply.is_success if isinstance(reply, Reply) else reply[:1] == "2"
        self.session.end_transaction(accepted=accepted)
        self.received_data = ""
        self._drop_message()
        self.answer_message(reply, recipients)
        if self.smtp_server.shutting_down and not self._closing:
            self.session.close(replies.SHUTTING_DOWN)
            self.close_when_done()

    def answer_message(self, reply: Reply | str, recipients: int) -> None:
        """Say the verdict on a received message: one reply in SMTP."""
        self.push(reply)

    # -- timers and shutdown ---------------------------------------------
    @property
    def in_transaction(self) -> bool:
        """True while a mail transaction is open or its message is processed."""
        return self._busy or self.session.in_transaction

    def shutdown(self) -> None:
        """Tell the client the server is going away, and close (421, 4.3.2)."""
        if self._transport is not None and not self._closing:
            self.session.close(replies.SHUTTING_DOWN)
            self.close_when_done()

    @property
    def _peer_text(self) -> str:
        if isinstance(self.peer, tuple) and len(self.peer) >= 2:
            return f"{self.peer[0]}:{self.peer[1]}"
        return str(self.peer)

    # -- EHLO keywords -----------------------------------------------------
    def extensions(self) -> list[str]:
        """The EHLO keywords, in order; a subclass may add its own."""
        keywords = self.session.extensions()
        if self.starttls_offered:
            keywords.insert(-1, "STARTTLS")
        if self.smtp_server.xforward_allowed(self.peer_ip):
            keywords.insert(-1, xforward.KEYWORD)
        return keywords

    @property
    def starttls_offered(self) -> bool:
        return self.smtp_server.tls_context is not None and not self.session.tls

    def smtp_STARTTLS(self, arg: str | None) -> None:
        """RFC 3207: 220, then the handshake; the session starts anew."""
        if self._parse(self.session.starttls, arg) is None:
            return
        self.push(replies.READY_FOR_TLS)
        self.wait_for(self._start_tls())

    async def _start_tls(self) -> None:
        transport, context = self._transport, self.smtp_server.tls_context
        if transport is None or context is None:
            return
        self._flush()  # the 220 leaves in plaintext, ahead of the handshake
        dropped = self.session.begin_tls()
        if dropped:
            log.warning(
                "%s: %d octets sent in plaintext after STARTTLS were dropped",
                self._peer_text,
                dropped,
            )
        try:
            # (reading is paused: nothing arrives between the drop and this)
            upgraded = await asyncio.get_running_loop().start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=TLS_HANDSHAKE
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("%s: TLS handshake failed: %s", self._peer_text, exc)
            transport.abort()
            self.connection_lost(exc)
            return
        self._transport = cast(asyncio.Transport, upgraded)
        self._note_tls(self._transport)
        self._abandon_transaction()
        self.session.tls_started()

    def _note_tls(self, transport: asyncio.BaseTransport) -> None:
        self.tls_info = tls.describe(transport.get_extra_info("ssl_object"))

    def smtp_XFORWARD(self, arg: str | None) -> None:
        """Postfix's XFORWARD, from trusted clients only, outside a transaction."""
        if not self.smtp_server.xforward_allowed(self.peer_ip):
            self.push(xforward.NOT_AUTHORIZED)
            return
        if self.session.in_transaction:
            self.push(xforward.IN_TRANSACTION)
            return
        attributes = self._parse(xforward.parse, arg)
        if attributes is None:
            return
        for name, value in attributes.items():
            if value is None:
                self.forwarded.pop(name, None)
            else:
                self.forwarded[name] = value
        self.push(replies.OK)

    # -- SMTP and ESMTP commands ---------------------------------------------
    def smtp_HELO(self, arg: str | None) -> None:
        self._hello(arg, extended=False)

    def smtp_EHLO(self, arg: str | None) -> None:
        self._hello(arg, extended=True)

    def _hello(self, arg: str | None, *, extended: bool) -> None:
        try:
            hello = self.session.hello(arg, extended=extended)
        except ProtocolError as exc:
            self.push(exc.reply)
            return
        hooks = self.smtp_server.hooks
        if hooks.has("helo"):
            self._after(hooks.run("helo", self, hello), partial(self._helo_done, hello))
        else:
            self._helo_done(hello, None)

    def _helo_done(self, hello: Hello, outcome: Outcome | None) -> None:
        if outcome is not None and outcome.refused:
            self.push(outcome.reply or replies.LOCAL_ERROR)
            return
        self._greet(hello)
        if not hello.extended:
            self.push(f"250 {self.fqdn}")
            return
        self.push(_ehlo_reply((self.fqdn, *self.extensions())))

    def _greet(self, hello: Hello) -> None:
        self._abandon_transaction()
        self.session.greet(hello)

    def smtp_NOOP(self, arg: str | None) -> None:
        if self._parse(self.session.noop, arg) is not None:
            self.push(replies.OK)

    def smtp_QUIT(self, arg: str | None) -> None:
        self.push(replies.BYE)
        self.close_when_done()

    def smtp_RSET(self, arg: str | None) -> None:
        if self._parse(self.session.rset, arg) is not None:
            self._abandon_transaction()
            self.session.reset()
            self.push(replies.RESET_OK)

    def smtp_HELP(self, arg: str | None) -> None:
        self.push(self.session.help_reply(arg))

    def smtp_VRFY(self, arg: str | None) -> None:
        verify = self._parse(self.session.vrfy, arg)
        if verify is None:
            return
        if not verify.valid:
            self.push(
                replies.VRFY_CANNOT.with_text(
                    replies.VRFY_CANNOT.text.format(printable(verify.arg, 64))
                )
            )
            return
        self.push(replies.CANNOT_VRFY)

    def smtp_EXPN(self, arg: str | None) -> None:
        self.push(replies.EXPN_NOT_IMPLEMENTED)

    #: the verbs :meth:`offers` may refuse; the others are not asked about
    #: (a subclass that overrides ``offers`` without naming them is asked
    #: about every verb)
    conditional_verbs: frozenset[str] | None = frozenset({"STARTTLS", "BDAT"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "offers" in cls.__dict__ and "conditional_verbs" not in cls.__dict__:
            cls.conditional_verbs = None

    def offers(self, verb: str) -> bool:
        """Whether this session knows ``verb`` now: the command of an
        extension not offered (STARTTLS with no certificate or once TLS is
        up, BDAT without CHUNKING) is answered as an unknown one."""
        if verb == "STARTTLS":
            return self.starttls_offered
        if verb == "BDAT":
            return self.session.config.chunking
        return True

    def smtp_MAIL(self, arg: str | None) -> None:
        server = self.smtp_server
        if (
            server.tls_required_networks
            and not self.session.tls
            and server.tls_required(self.peer_ip)
        ):
            self.push(replies.TLS_REQUIRED)
            return
        try:
            mail = self.session.mail(arg)
        except ProtocolError as exc:
            self.push(exc.reply)
            return
        hooks = server.hooks
        if hooks.has("mail"):
            self._after(hooks.run("mail", self, mail), partial(self._mail_done, mail))
        else:
            self._mail_done(mail, None)

    def _mail_done(self, mail: MailFrom, outcome: Outcome | None) -> None:
        if outcome is not None and outcome.refused:
            self.transaction_ended()  # what the hooks began for it ends here
            self.push(outcome.reply or replies.LOCAL_ERROR)
            return
        self.session.open_transaction(mail)
        self.push((outcome and outcome.reply) or replies.SENDER_OK)

    def smtp_RCPT(self, arg: str | None) -> None:
        try:
            rcpt = self.session.rcpt(arg)
        except ProtocolError as exc:
            self.push(exc.reply)
            return
        hooks = self.smtp_server.hooks
        if hooks.has("rcpt"):
            self._after(hooks.run("rcpt", self, rcpt), partial(self._rcpt_done, rcpt))
        else:
            self._rcpt_done(rcpt, None)

    def _rcpt_done(self, rcpt: RcptTo, outcome: Outcome | None) -> None:
        if outcome is not None and outcome.refused:
            log.info("%s: RCPT %s refused: %s", self._peer_text, rcpt.address, outcome.reply)
            self.push(outcome.reply or replies.LOCAL_ERROR)
            return
        self.session.add_recipient(rcpt)
        self.push((outcome and outcome.reply) or replies.RECIPIENT_OK)

    def smtp_BDAT(self, arg: str | None) -> None:
        """RFC 3030: a chunk of the message, of the size given, raw."""
        try:
            bdat = self.session.bdat(arg)
        except ProtocolError as exc:
            # the octets that follow cannot be framed: say why, and end here
            self.push(exc.reply)
            self.session.close(replies.TOO_MANY_ERRORS.with_text("Cannot frame BDAT, closing"))
            return
        refusal = self.session.chunk_refusal()
        first = self.session.phase is not state.P_CHUNKS
        if refusal is None and first:
            refusal = self.smtp_server.data_refusal(self)
            if refusal is None and self._take_in() is None:
                log.warning("%s: BDAT refused: the memory budget is spent", self._peer_text)
                refusal = replies.INSUFFICIENT_STORAGE
        if refusal is not None:
            self.push(refusal)
            self.session.framer.start_chunk(bdat.size, bdat.last, keep=False)
            return
        if first:
            self._text_begins()
        self.session.start_chunk(bdat)

    def smtp_DATA(self, arg: str | None) -> None:
        try:
            self.session.data(arg)
        except ProtocolError as exc:
            self.push(exc.reply)
            return
        refusal = self.smtp_server.data_refusal(self)
        if refusal is not None:
            self.push(refusal)
            return
        if self._take_in() is None:
            log.warning("%s: DATA refused: the message memory budget is spent", self._peer_text)
            self.push(replies.INSUFFICIENT_STORAGE)
            return
        server = self.smtp_server
        # Nothing but process_message reads the text (no hooks, no server
        # that streams it): it may stay whole in memory, and be written in
        # smtpd's form at once.
        whole = not server.takes_spooled and not server.hooks.on_message
        framer = self.session.framer
        framer.hold = self._hold if whole else None
        framer.lf_form = whole and server.data_line_ending == "\n"
        self.session.start_data()
        self._text_begins()
        self.push(replies.START_DATA)

    def _text_begins(self) -> None:
        """The message text's pace is measured from here, the DATA (or
        first BDAT) line; what came behind that line counts."""
        inbound = self._inbound
        assert inbound is not None
        inbound.since = time.monotonic()
        inbound.octets = self.session.framer.buffered
        self._partial_since = None
