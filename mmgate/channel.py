"""SMTPChannel: one client session, with the API Python's smtpd documented.

The channel is an ``asyncio.Protocol``. It feeds received bytes to the
sans-I/O :class:`~mmgate.smtp.framing.Framer`, dispatches each command line
to a ``smtp_<COMMAND>`` method (so a subclass adds a command by defining
``smtp_XFOO``), and collects the replies of a pipelined batch so that they
leave in one write (RFC 2920). Sequencing comes from the table in
:mod:`mmgate.smtp.state`; the replies from :mod:`mmgate.smtp.replies`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

from mmgate.smtp import paths, replies, state
from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.framing import CommandLine, Framer, LineTooLong, MessageData
from mmgate.smtp.replies import Reply
from mmgate.smtp.state import Phase, Step

if TYPE_CHECKING:
    from mmgate.server import SMTPServer

log = logging.getLogger("mmgate.smtp")

DATA_SIZE_DEFAULT = 33554432
_HELP_TOPICS = {
    "EHLO": "Syntax: EHLO hostname",
    "HELO": "Syntax: HELO hostname",
    "MAIL": "Syntax: MAIL FROM: <address>",
    "RCPT": "Syntax: RCPT TO: <address>",
    "DATA": "Syntax: DATA",
    "RSET": "Syntax: RSET",
    "NOOP": "Syntax: NOOP",
    "QUIT": "Syntax: QUIT",
    "VRFY": "Syntax: VRFY <address>",
}


def _printable(text: str, limit: int = 32) -> str:
    """What of a client's word may be echoed in a reply or a log line."""
    safe = "".join(c if " " < c < "\x7f" else "?" for c in text[:limit])
    return safe + ("..." if len(text) > limit else "")


def _options(text: str) -> list[str]:
    """Parameters as smtpd listed them: one word each, keyword upper-cased."""
    words = []
    for word in text.split():
        key, sep, value = word.partition("=")
        words.append(key.upper() + sep + value)
    return words


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
        self.conn = conn
        self.addr = addr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.received_lines: list[str] = []
        self.smtp_state = self.COMMAND
        self.seen_greeting = ""
        self.extended_smtp = False
        self.mailfrom: str | None = None
        self.rcpttos: list[str] = []
        self.received_data: str | bytes = ""
        #: The framer's account of the last message (size, long lines, bare
        #: line endings), for process_message code that reports on them.
        self.last_message: MessageData | None = None
        self.mail_options: list[str] = []
        self.rcpt_options: list[str] = []
        self.require_SMTPUTF8 = False
        self.fqdn = server.fqdn
        self.peer = addr
        limits = server.limits
        if limits.message_size != (data_size_limit or None):
            limits = dataclasses.replace(limits, message_size=data_size_limit or None)
        self.limits = limits
        self._framer = Framer(limits, server.bare_lines)
        self._phase = Phase.CONNECTED
        self._out: list[bytes] = []
        self._batching = False
        self._busy = False  # waiting for process_message
        self._write_paused = False
        self._closing = False
        self._errors = 0
        self._transport: asyncio.Transport | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._last_activity = 0.0

    # -- transport events ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the interface without the base class.
        self._transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Nagle would hold the greeting and every reply for up to 40 ms.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        self._arm_idle_timer(loop)
        self.smtp_server._channel_opened(self)
        self.push(f"220 {self.fqdn} {self.smtp_server.banner}")
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        self._transport = None
        if not self._busy:
            self._reset_transaction()  # a message in processing ends on its own
        self.smtp_server._channel_closed(self)

    def data_received(self, data: bytes) -> None:
        self._last_activity = asyncio.get_running_loop().time()
        self._framer.receive_data(data)
        self._process()

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
        if isinstance(msg, Reply):
            first, wire = str(msg.code)[0], msg.to_bytes()
        else:
            first, wire = msg[:1], replies.encode_text(msg)
        if first == "5":
            self._errors += 1
        elif first == "2":
            self._errors = 0
        self._out.append(wire)
        if not self._batching:
            self._flush()

    def _flush(self) -> None:
        if self._out and self._transport is not None:
            out = self._out
            self.send_bytes(out[0] if len(out) == 1 else b"".join(out))
        self._out = []

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
    def _process(self) -> None:
        framer = self._framer
        self._batching = True
        try:
            while not (self._busy or self._closing or self._write_paused):
                event = framer.next_event()
                if event is None:
                    break
                if isinstance(event, CommandLine):
                    self._on_command(event.line)
                elif isinstance(event, MessageData):
                    self._on_message(event)
                else:
                    self._on_line_too_long(event)
                if self._errors >= self.smtp_server.max_bad_commands and not self._closing:
                    self.push(replies.TOO_MANY_ERRORS)
                    self.close_when_done()
        finally:
            self._batching = False
            self._flush()

    def _on_line_too_long(self, event: LineTooLong) -> None:
        log.info("%s: command line of %d octets refused", self._peer_text, event.length)
        self.push(replies.LINE_TOO_LONG)

    def _on_command(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "surrogateescape")
        self.received_lines = [line]
        if not line:
            self.push(replies.BAD_SYNTAX)
            return
        verb, sep, rest = line.partition(" ")
        command = verb.upper()
        arg: str | None = rest.strip() if sep else None
        if len(raw) + 2 > self._line_limit(command):
            self.push(replies.LINE_TOO_LONG)
            return
        method = getattr(self, "smtp_" + command, None) if command.isascii() else None
        if method is None:
            self.push(
                replies.UNKNOWN_COMMAND.with_text(
                    replies.UNKNOWN_COMMAND.text.format(_printable(command))
                )
            )
            return
        refusal = state.out_of_sequence(command, self._phase)
        if refusal is not None:
            self.push(refusal)
            return
        method(arg)

    def _line_limit(self, command: str) -> int:
        limits = self.limits
        if not self.extended_smtp:
            return limits.command_line
        if command == "MAIL":
            return limits.mail_line(size=bool(self.data_size_limit), smtputf8=self.enable_SMTPUTF8)
        if command == "RCPT" and self.enable_SMTPUTF8:
            return limits.mail_line(size=False, smtputf8=True)
        return limits.command_line

    def transaction_ended(self) -> None:
        """Called whenever the transaction state is cleared: after a message,
        on RSET and HELO/EHLO, and when the client leaves; must be idempotent."""

    def wait_for(self, work: Awaitable[None]) -> None:
        """Hold this session until ``work`` is done, then read on.

        For a command whose verdict comes from elsewhere (an upstream's RCPT
        reply): later pipelined commands wait in the buffer, so replies stay
        in order (RFC 2920). ``work`` pushes its own reply; if it raises, the
        client gets 451 4.3.0 and the session goes on.
        """
        self._busy = True
        if self._transport is not None:
            self._transport.pause_reading()
        task = asyncio.ensure_future(work)
        task.add_done_callback(self._work_done)

    def _work_done(self, task: asyncio.Future[None]) -> None:
        self._busy = False
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: command failed", self._peer_text, exc_info=task.exception())
            self.push(replies.LOCAL_ERROR)
        self._resume()

    def _resume(self) -> None:
        if self._transport is None:
            self._reset_transaction()  # the client left while we waited
            return
        if not self._closing:
            if not self._write_paused:
                self._transport.resume_reading()
            self._process()

    def _advance(self, step: Step) -> None:
        self._phase = state.advance(self._phase, step)
        self.smtp_state = self.DATA if self._phase is Phase.DATA else self.COMMAND

    def _reset_transaction(self) -> None:
        self.transaction_ended()
        self.mailfrom = None
        self.rcpttos = []
        self.mail_options = []
        self.rcpt_options = []
        self.require_SMTPUTF8 = False
        self.received_data = ""

    # -- the message -----------------------------------------------------
    def _on_message(self, event: MessageData) -> None:
        if event.error is not None:
            log.info("%s: message refused: %s", self._peer_text, event.error)
            self._end_transaction(event.error)
            return
        server = self.smtp_server
        raw = event.data
        if server.data_line_ending == "\n":
            # smtpd's form: LF line endings, without the final one.
            raw = raw[:-2].replace(b"\r\n", b"\n")
        data = raw.decode("utf-8", "surrogateescape") if self._decode_data else raw
        self.received_data = data
        # The flags and size only: holding the data would keep every
        # connection's last message in memory until its next one.
        self.last_message = dataclasses.replace(event, data=b"")
        self._busy = True
        assert self.mailfrom is not None
        outcome = server._dispatch_message(
            self, self.peer, self.mailfrom, list(self.rcpttos), data, event
        )
        outcome.add_done_callback(self._on_processed)
        if not outcome.done() and self._transport is not None:
            self._transport.pause_reading()

    def _on_processed(self, outcome: asyncio.Future[Reply | str]) -> None:
        self._busy = False
        self._end_transaction(outcome.result())
        self._resume()

    def _end_transaction(self, reply: Reply | str) -> None:
        self._reset_transaction()
        self._advance(Step.END)
        self.push(reply)
        if self.smtp_server.shutting_down and not self._closing:
            self.push(replies.SHUTTING_DOWN)
            self.close_when_done()

    # -- timers and shutdown ---------------------------------------------
    def _arm_idle_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        timeout = self.smtp_server.idle_timeout
        if timeout:
            self._idle_handle = loop.call_at(self._last_activity + timeout, self._on_idle)

    def _on_idle(self) -> None:
        self._idle_handle = None
        if self._transport is None or self._closing:
            return
        loop = asyncio.get_running_loop()
        if self._busy or loop.time() < self._last_activity + self.smtp_server.idle_timeout:
            self._arm_idle_timer(loop)  # activity since the timer was set
            return
        log.info("%s: idle timeout", self._peer_text)
        self.push(replies.TIMEOUT)
        self.close_when_done()

    @property
    def in_transaction(self) -> bool:
        """True while a mail transaction is open or its message is processed."""
        return self._busy or self._phase in (Phase.MAIL, Phase.RCPT, Phase.DATA)

    def shutdown(self) -> None:
        """Tell the client the server is going away, and close (421, 4.3.2)."""
        if self._transport is not None and not self._closing:
            self.push(replies.SHUTTING_DOWN)
            self.close_when_done()

    @property
    def _peer_text(self) -> str:
        if isinstance(self.peer, tuple) and len(self.peer) >= 2:
            return f"{self.peer[0]}:{self.peer[1]}"
        return str(self.peer)

    # -- EHLO keywords -----------------------------------------------------
    def extensions(self) -> list[str]:
        """The EHLO keywords, in order; a subclass may add its own."""
        keywords = []
        if self.data_size_limit:
            keywords.append(f"SIZE {self.data_size_limit}")
        if not self._decode_data:
            keywords.append("8BITMIME")
        if self.enable_SMTPUTF8:
            keywords.append("SMTPUTF8")
        keywords += ["PIPELINING", "ENHANCEDSTATUSCODES", "HELP"]
        return keywords

    # -- SMTP and ESMTP commands ---------------------------------------------
    def smtp_HELO(self, arg: str | None) -> None:
        if not arg:
            self.push(replies.SYNTAX_HELO)
            return
        self._greet(arg, extended=False)
        self.push(f"250 {self.fqdn}")

    def smtp_EHLO(self, arg: str | None) -> None:
        if not arg:
            self.push(replies.SYNTAX_EHLO)
            return
        self._greet(arg, extended=True)
        lines = [self.fqdn, *self.extensions()]
        self.push("\r\n".join(f"250-{line}" for line in lines[:-1]) + f"\r\n250 {lines[-1]}")

    def _greet(self, arg: str, *, extended: bool) -> None:
        # RFC 5321 4.1.4: a later HELO/EHLO resets the state as RSET does.
        self._reset_transaction()
        self.seen_greeting = arg
        self.extended_smtp = extended
        self._advance(Step.GREET)

    def smtp_NOOP(self, arg: str | None) -> None:
        self.push(replies.SYNTAX_NOOP if arg else replies.OK)

    def smtp_QUIT(self, arg: str | None) -> None:
        self.push(replies.BYE)
        self.close_when_done()

    def smtp_RSET(self, arg: str | None) -> None:
        if arg:
            self.push(replies.SYNTAX_RSET)
            return
        self._reset_transaction()
        self._advance(Step.RESET)
        self.push(replies.RESET_OK)

    def smtp_HELP(self, arg: str | None) -> None:
        if not arg:
            self.push(replies.HELP)
            return
        topic = _HELP_TOPICS.get(arg.upper())
        if topic is None:
            self.push(replies.HELP_UNKNOWN)
            return
        if self.extended_smtp and arg.upper() in ("MAIL", "RCPT"):
            topic += " [SP <mail-parameters>]"
        self.push(replies.OK.with_text(topic))

    def smtp_VRFY(self, arg: str | None) -> None:
        if not arg:
            self.push(replies.SYNTAX_VRFY)
            return
        try:
            path, _ = paths.split_path(arg, replies.SYNTAX_VRFY)
            paths.check_mailbox(path, replies.SYNTAX_VRFY, smtputf8=True, postmaster_ok=True)
        except ProtocolError:
            self.push(
                replies.VRFY_CANNOT.with_text(replies.VRFY_CANNOT.text.format(_printable(arg, 64)))
            )
            return
        self.push(replies.CANNOT_VRFY)

    def smtp_EXPN(self, arg: str | None) -> None:
        self.push(replies.EXPN_NOT_IMPLEMENTED)

    def smtp_MAIL(self, arg: str | None) -> None:
        syntax = replies.SYNTAX_MAIL_EXT if self.extended_smtp else replies.SYNTAX_MAIL
        try:
            self._mail(paths.strip_keyword("FROM:", arg), syntax)
        except ProtocolError as exc:
            self.push(exc.reply)

    def _mail(self, arg: str | None, syntax: Reply) -> None:
        if not arg:
            raise ProtocolError(syntax)
        path, text = paths.split_path(arg, syntax)
        if text and not self.extended_smtp:
            raise ProtocolError(syntax)
        params = paths.parse_params(text, syntax)
        smtputf8 = False
        if "SMTPUTF8" in params and self.enable_SMTPUTF8:
            if params.pop("SMTPUTF8") is not None:
                raise ProtocolError(syntax)
            smtputf8 = True
        body = params.pop("BODY", None)
        if body is not None and (self._decode_data or body.upper() not in ("7BIT", "8BITMIME")):
            raise ProtocolError(replies.BAD_BODY)
        size = params.pop("SIZE", None)
        if size is not None:
            if not size.isdigit():
                raise ProtocolError(replies.BAD_SIZE)
            if self.data_size_limit and int(size) > self.data_size_limit:
                raise ProtocolError(replies.SIZE_EXCEEDED)
        if params:
            raise ProtocolError(replies.MAIL_PARAMS_UNKNOWN)
        address = paths.check_mailbox(path, syntax, smtputf8=smtputf8, null_ok=True)
        self.require_SMTPUTF8 = smtputf8
        self.accept_sender(address, _options(text))

    def accept_sender(self, address: str, options: list[str]) -> None:
        """Open the transaction for a sender whose syntax is valid.

        A subclass may first ask someone else (an upstream, a policy) and
        push its refusal instead; see :meth:`wait_for` for asking
        asynchronously.
        """
        self.mailfrom = address
        self.mail_options = options
        self._advance(Step.MAIL)
        self.push(replies.SENDER_OK)

    def smtp_RCPT(self, arg: str | None) -> None:
        syntax = replies.SYNTAX_RCPT_EXT if self.extended_smtp else replies.SYNTAX_RCPT
        try:
            address, options = self._rcpt(paths.strip_keyword("TO:", arg), syntax)
        except ProtocolError as exc:
            self.push(exc.reply)
            return
        if len(self.rcpttos) >= self.limits.recipients:
            self.push(replies.TOO_MANY_RECIPIENTS)
            return
        self.accept_recipient(address, options)

    def _rcpt(self, arg: str | None, syntax: Reply) -> tuple[str, list[str]]:
        if not arg:
            raise ProtocolError(syntax)
        path, text = paths.split_path(arg, syntax)
        if text and not self.extended_smtp:
            raise ProtocolError(syntax)
        if paths.parse_params(text, syntax):
            raise ProtocolError(replies.RCPT_PARAMS_UNKNOWN)
        address = paths.check_mailbox(
            path, syntax, smtputf8=self.require_SMTPUTF8, postmaster_ok=True
        )
        return address, _options(text)

    def accept_recipient(self, address: str, options: list[str]) -> None:
        """Add a recipient whose syntax is valid; a gateway decides here.

        The base channel takes every syntactically valid address, as smtpd did.
        A subclass may refuse one instead by pushing its own reply.
        """
        self.rcpttos.append(address)
        self.rcpt_options += options
        self._advance(Step.RCPT)
        self.push(replies.RECIPIENT_OK)

    def smtp_DATA(self, arg: str | None) -> None:
        if arg:
            self.push(replies.SYNTAX_DATA)
            return
        self._advance(Step.DATA)
        self._framer.start_data()
        self.push(replies.START_DATA)
