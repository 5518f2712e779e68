"""The server side of one SMTP session, sans-I/O, in the manner of h11.

Bytes go in (:meth:`Session.receive_data`); framing events come out
(:meth:`Session.next_event`: a :class:`~mmgate.smtp.events.Command` or a
finished :class:`~mmgate.smtp.framing.MessageData`); a command is turned
into a typed event by the parser of its verb (:meth:`Session.interpret`,
or :meth:`hello`, :meth:`mail`, :meth:`rcpt` ... one by one), which checks
its sequence, syntax, parameters and limits and raises
:class:`~mmgate.smtp.errors.ProtocolError` with the reply otherwise. The
owner decides (a hook, a router, an upstream) and then either accepts the
event (:meth:`greet`, :meth:`open_transaction`, :meth:`add_recipient`,
:meth:`start_data`, :meth:`end_transaction`, :meth:`reset`) or refuses it;
replies go in (:meth:`send`) and bytes come out (:meth:`data_to_send`).

Every move of the session goes through :func:`mmgate.smtp.state.advance`,
the framer's switch to message text included: the state table is the one
place where the session can change phase. Nothing here touches a socket, a
clock or a thread, so the whole protocol is testable without any.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from mmgate.smtp import paths, replies, state, xtext
from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.events import (
    Bdat,
    Command,
    DataRequest,
    Event,
    Expand,
    Hello,
    Help,
    MailFrom,
    Noop,
    Quit,
    RcptTo,
    Reset,
    StartTLS,
    Unknown,
    Verify,
)
from mmgate.smtp.framing import (
    BareLinePolicy,
    ChunkReceived,
    ChunkSkipped,
    CommandLine,
    Framer,
    MessageChunk,
    MessageData,
)
from mmgate.smtp.limits import Limits
from mmgate.smtp.replies import Reply
from mmgate.smtp.state import (
    P_CONNECTED,
    P_DATA,
    P_RECEIVED,
    S_CHUNK,
    S_DATA,
    S_END,
    S_GREET,
    S_MAIL,
    S_RCPT,
    S_RECEIVED,
    S_RESET,
    S_TLS,
    Phase,
    Step,
)

_HELP_TOPICS = {
    "EHLO": "Syntax: EHLO hostname",
    "LHLO": "Syntax: LHLO hostname",
    "HELO": "Syntax: HELO hostname",
    "MAIL": "Syntax: MAIL FROM: <address>",
    "RCPT": "Syntax: RCPT TO: <address>",
    "DATA": "Syntax: DATA",
    "RSET": "Syntax: RSET",
    "NOOP": "Syntax: NOOP",
    "QUIT": "Syntax: QUIT",
    "BDAT": "Syntax: BDAT chunk-size [LAST]",
    "VRFY": "Syntax: VRFY <address>",
}


def printable(text: str, limit: int = 32) -> str:
    """What of a client's word may be echoed in a reply or a log line."""
    safe = "".join(c if " " < c < "\x7f" else "?" for c in text[:limit])
    return safe + ("..." if len(text) > limit else "")


def _options(text: str) -> tuple[str, ...]:
    """Parameters as smtpd listed them: one word each, keyword upper-cased."""
    words = []
    for word in text.split():
        key, sep, value = word.partition("=")
        words.append(key.upper() + sep + value)
    return tuple(words)


_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})
_BDAT = re.compile(r"([0-9]{1,12})(?: +(?i:(LAST)))? *")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def _notify(value: str | None) -> tuple[str, ...] | None:
    """RFC 3461 4.1: NEVER alone, or a list of SUCCESS, FAILURE, DELAY."""
    if value is None:
        return None
    words = tuple(w.upper() for w in value.split(","))
    if words == ("NEVER",) or (words and set(words) <= _NOTIFY and len(set(words)) == len(words)):
        return words
    raise ProtocolError(replies.BAD_NOTIFY)


def _is_orcpt(value: str) -> bool:
    """RFC 3461 4.2: ``addr-type ";" xtext``, at most 500 characters."""
    kind, semicolon, address = value.partition(";")
    return (
        bool(semicolon and address)
        and len(value) <= 500
        and _ADDR_TYPE.fullmatch(kind) is not None
        and xtext.is_xtext(address)
    )


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What the server offers; fixed for a session."""

    limits: Limits = field(default_factory=Limits)
    bare_lines: BareLinePolicy = BareLinePolicy.NORMALISE
    #: RFC 6531 SMTPUTF8 offered (smtpd's ``enable_SMTPUTF8``)
    smtputf8: bool = False
    #: RFC 6152 8BITMIME offered (off under smtpd's ``decode_data``)
    eight_bit: bool = True
    #: message text past this many octets leaves the framer as MessageChunk
    #: events while it arrives (the transport spools them); None: never
    chunk_size: int | None = None
    #: refusals (4xx, 5xx) since the last accepted message before the session
    #: is ended with 421 4.7.0, as Postfix's smtpd_hard_error_limit; 0: none
    max_errors: int = 20
    #: RFC 2033 LMTP: LHLO instead of HELO and EHLO (which are unknown
    #: commands), and one reply per accepted recipient after the message
    lmtp: bool = False
    #: RFC 3461 DSN offered: NOTIFY, ORCPT, RET and ENVID are taken (for a
    #: server that passes them on: the relay)
    dsn: bool = False
    #: RFC 3030 CHUNKING (BDAT) and BINARYMIME offered
    chunking: bool = True


_IN_TRANSACTION = frozenset({Phase.MAIL, Phase.RCPT, Phase.DATA, Phase.CHUNKS, Phase.RECEIVED})


class Session:
    """One SMTP session's protocol state: phase, envelope, framing, output.

    The envelope is kept in smtpd's shapes (``mailfrom``, ``rcpttos``,
    ``mail_options`` ...) because the asyncio channel exposes these very
    objects as smtpd's instance variables.
    """

    # Slots: one Session per connection, idle ones included (and no
    # ``__dict__``, which costs 32 octets on Python 3.11 even unused).
    __slots__ = (
        "_mail_options",
        "_out",
        "_rcpt_options",
        "_rcpttos",
        "_recipients",
        "closing",
        "config",
        "errors",
        "extended_smtp",
        "framer",
        "mail_from",
        "mailfrom",
        "phase",
        "require_SMTPUTF8",
        "seen_greeting",
        "tls",
    )

    def __init__(self, config: SessionConfig | None = None) -> None:
        self.config = config = config or SessionConfig()
        self.framer = Framer(config.limits, config.bare_lines, config.chunk_size)
        self.phase = P_CONNECTED
        self.seen_greeting = ""
        self.extended_smtp = False
        self.mailfrom: str | None = None
        self.mail_from: MailFrom | None = None
        self._mail_options: list[str] | None = None
        self._rcpttos: list[str] | None = None
        self._rcpt_options: list[str] | None = None
        self._recipients: list[RcptTo] | None = None
        self.require_SMTPUTF8 = False
        #: refusals (4xx and 5xx) since the last accepted message
        self.errors = 0
        #: the session has said 421 and must be closed once its output is out
        self.closing = False
        #: TLS is in force (STARTTLS done, or an implicit-TLS listener)
        self.tls = False
        self._out: list[bytes] | None = None

    # The transaction's lists, made when first used so that an idle
    # session holds none (``None`` in the slot: not made).
    @property
    def mail_options(self) -> list[str]:
        if self._mail_options is None:
            self._mail_options = []
        return self._mail_options

    @mail_options.setter
    def mail_options(self, value: list[str]) -> None:
        self._mail_options = value

    @property
    def rcpttos(self) -> list[str]:
        if self._rcpttos is None:
            self._rcpttos = []
        return self._rcpttos

    @rcpttos.setter
    def rcpttos(self, value: list[str]) -> None:
        self._rcpttos = value

    @property
    def rcpt_options(self) -> list[str]:
        if self._rcpt_options is None:
            self._rcpt_options = []
        return self._rcpt_options

    @rcpt_options.setter
    def rcpt_options(self, value: list[str]) -> None:
        self._rcpt_options = value

    @property
    def recipients(self) -> list[RcptTo]:
        if self._recipients is None:
            self._recipients = []
        return self._recipients

    @recipients.setter
    def recipients(self, value: list[RcptTo]) -> None:
        self._recipients = value

    # -- configuration -----------------------------------------------------
    @property
    def limits(self) -> Limits:
        return self.config.limits

    def set_message_size(self, size: int | None) -> None:
        """Change the message size limit (smtpd's ``data_size_limit``)."""
        limits = replace(self.config.limits, message_size=size or None)
        self.config = replace(self.config, limits=limits)
        self.framer.limits = limits

    def extensions(self) -> list[str]:
        """The EHLO keywords (RFC 5321 4.1.1.1), in order."""
        keywords = []
        if self.limits.message_size:
            keywords.append(f"SIZE {self.limits.message_size}")
        if self.config.eight_bit:
            keywords.append("8BITMIME")
        if self.config.smtputf8:
            keywords.append("SMTPUTF8")
        if self.config.dsn:
            keywords.append("DSN")
        if self.config.chunking:
            keywords.append("CHUNKING")
            if self.config.eight_bit:
                keywords.append("BINARYMIME")
        keywords += ["PIPELINING", "ENHANCEDSTATUSCODES", "HELP"]
        return keywords

    # -- bytes in, events out ------------------------------------------------
    def receive_data(self, data: bytes | bytearray) -> None:
        self.framer.receive_data(data)

    def next_event(
        self,
    ) -> Command | MessageChunk | MessageData | ChunkReceived | ChunkSkipped | None:
        """The next command, part of a large message, or finished message;
        ``None`` when more bytes are needed, or while a received message
        waits for its reply.

        Lines that are errors in themselves (too long, empty) are answered
        here and skipped.
        """
        framer = self.framer
        while self.phase is not P_RECEIVED and not self.closing:
            event = framer.next_event()
            if event is None:
                return None
            if type(event) is CommandLine:  # the common case first
                raw = event.line
                line = raw.decode("utf-8", "surrogateescape")
                if not line:
                    self.send(replies.BAD_SYNTAX)
                    continue
                verb, sep, rest = line.partition(" ")
                verb = verb.upper()
                length = len(raw) + 2
                if length > self.config.limits.command_line and length > self._line_limit(verb):
                    self.send(replies.LINE_TOO_LONG)
                    continue
                return Command(verb, rest.strip() if sep else None, line)
            if isinstance(event, MessageData):
                self._advance(S_RECEIVED)
                return event
            if isinstance(event, MessageChunk | ChunkReceived | ChunkSkipped):
                return event
            self.send(replies.LINE_TOO_LONG)  # LineTooLong
        return None

    def _line_limit(self, verb: str) -> int:
        """RFC 5321 4.5.3.1.4, with the allowances of what EHLO offered."""
        limits = self.limits
        if not self.extended_smtp:
            return limits.command_line
        if verb == "MAIL":
            return limits.mail_line(size=bool(limits.message_size), smtputf8=self.config.smtputf8)
        if verb == "RCPT" and self.config.smtputf8:
            return limits.mail_line(size=False, smtputf8=True)
        return limits.command_line

    # -- commands into typed events --------------------------------------------
    def interpret(self, command: Command) -> Event:
        """The typed event of a command; ProtocolError with its reply if the
        command is out of sequence or malformed."""
        parse = (_LMTP_PARSERS if self.config.lmtp else _PARSERS).get(command.verb)
        if parse is None:
            return Unknown(command.verb, command.arg)
        if command.verb != "BDAT":  # its octets are read even when refused
            self.check_sequence(command.verb)
        return parse(self, command.arg)

    def check_sequence(self, verb: str) -> None:
        """RFC 5321 4.1.4: 503 for a command out of order (the state table)."""
        refusal = state.out_of_sequence(verb, self.phase)
        if refusal is not None:
            raise ProtocolError(refusal)

    def hello(self, arg: str | None, *, extended: bool) -> Hello:
        if not arg:
            raise ProtocolError(replies.SYNTAX_EHLO if extended else replies.SYNTAX_HELO)
        return Hello(arg, extended)

    def _path_and_params(
        self, keyword: str, arg: str | None, syntax: Reply
    ) -> tuple[str, bool, str, dict[str, str | None]]:
        """``FROM:<path> params`` (or ``TO:``): the path, whether it is a
        mailbox checked already (the common path, :func:`paths.plain_path`),
        the parameter text and the parameters. RFC 5321 4.1.1.2: parameters
        only after EHLO."""
        plain = paths.plain_path(arg, keyword)
        if plain is None:
            arg = paths.strip_keyword(keyword, arg)
            if not arg:
                raise ProtocolError(syntax)
            path, text = paths.split_path(arg, syntax)
        else:
            path, text = plain
        checked = plain is not None
        if not text:
            return path, checked, text, {}
        if not self.extended_smtp:
            raise ProtocolError(syntax)
        return path, checked, text, paths.parse_params(text, syntax)

    def mail(self, arg: str | None) -> MailFrom:
        """MAIL's argument, parsed and checked; the sequence is the caller's
        to check (:meth:`interpret` does, as the channel does before it
        dispatches)."""
        syntax = replies.SYNTAX_MAIL_EXT if self.extended_smtp else replies.SYNTAX_MAIL
        path, checked, text, params = self._path_and_params("FROM:", arg, syntax)
        smtputf8 = False
        body = size = ret = envid = None
        if params:  # (none, the common case: nothing more to check)
            rest = dict(params)
            if "SMTPUTF8" in rest and self.config.smtputf8:
                if rest.pop("SMTPUTF8") is not None:
                    raise ProtocolError(syntax)
                smtputf8 = True
            body = rest.pop("BODY", None)
            binary = self.config.chunking and self.config.eight_bit
            if body is not None:
                body = body.upper()
                if not self.config.eight_bit or not (
                    body in ("7BIT", "8BITMIME") or (binary and body == "BINARYMIME")
                ):
                    raise ProtocolError(replies.BAD_BODY_BINARY if binary else replies.BAD_BODY)
            size_text = rest.pop("SIZE", None)
            if size_text is not None:
                if not (size_text.isascii() and size_text.isdigit()):
                    raise ProtocolError(replies.BAD_SIZE)
                size = int(size_text)
                limit = self.limits.message_size
                if limit and size > limit:
                    raise ProtocolError(replies.SIZE_EXCEEDED)
            if self.config.dsn:
                ret = rest.pop("RET", None)
                if ret is not None:
                    ret = ret.upper()
                    if ret not in ("FULL", "HDRS"):
                        raise ProtocolError(replies.BAD_RET)
                envid = rest.pop("ENVID", None)
                if envid is not None and not (len(envid) <= 100 and xtext.is_xtext(envid)):
                    raise ProtocolError(replies.BAD_ENVID)
            if rest:
                raise ProtocolError(replies.MAIL_PARAMS_UNKNOWN)
        address = (
            path if checked else paths.check_mailbox(path, syntax, smtputf8=smtputf8, null_ok=True)
        )
        return MailFrom(
            address, params, _options(text) if text else (), smtputf8, body, size, ret, envid
        )

    def rcpt(self, arg: str | None) -> RcptTo:
        syntax = replies.SYNTAX_RCPT_EXT if self.extended_smtp else replies.SYNTAX_RCPT
        path, checked, text, params = self._path_and_params("TO:", arg, syntax)
        notify = orcpt = None
        if params:
            rest = dict(params)
            if self.config.dsn:
                notify = _notify(rest.pop("NOTIFY", None))
                orcpt = rest.pop("ORCPT", None)
                if orcpt is not None and not _is_orcpt(orcpt):
                    raise ProtocolError(replies.BAD_ORCPT)
            if rest:
                raise ProtocolError(replies.RCPT_PARAMS_UNKNOWN)
        address = (
            path
            if checked
            else paths.check_mailbox(
                path, syntax, smtputf8=self.require_SMTPUTF8, postmaster_ok=True
            )
        )
        # RFC 5321 4.5.3.1.10: "452 Too many recipients" once the cap is reached.
        if len(self._rcpttos or ()) >= self.config.limits.recipients:  # (made on use: not here)
            raise ProtocolError(replies.TOO_MANY_RECIPIENTS)
        return RcptTo(address, params, _options(text) if text else (), notify, orcpt)

    def data(self, arg: str | None) -> DataRequest:
        if arg:
            raise ProtocolError(replies.SYNTAX_DATA)
        if self.mail_from is not None and self.mail_from.body == "BINARYMIME":
            raise ProtocolError(replies.BINARYMIME_NEEDS_BDAT)  # RFC 3030 3
        return DataRequest()

    def bdat(self, arg: str | None) -> Bdat:
        """BDAT's size and LAST (RFC 3030 2). A size that cannot be read
        leaves the octets that follow unframeable: the caller ends the
        session. The sequence is checked apart (:meth:`chunk_refusal`),
        because a refused chunk's octets must still be read."""
        m = _BDAT.fullmatch(arg or "")
        if m is None:
            raise ProtocolError(replies.SYNTAX_BDAT)
        return Bdat(int(m.group(1)), m.group(2) is not None)

    def chunk_refusal(self) -> Reply | None:
        """Why a well-formed BDAT is refused now (its octets are skipped)."""
        return state.out_of_sequence("BDAT", self.phase)

    def start_chunk(self, bdat: Bdat) -> None:
        """BDAT accepted: its octets are message text (the framer's switch
        is part of this move)."""
        self._advance(S_CHUNK)
        self.framer.start_chunk(bdat.size, bdat.last)

    def rset(self, arg: str | None) -> Reset:
        if arg:
            raise ProtocolError(replies.SYNTAX_RSET)
        return Reset()

    def noop(self, arg: str | None) -> Noop:
        # RFC 5321 4.1.1.9: "any parameter ... SHOULD be ignored".
        return Noop()

    def vrfy(self, arg: str | None) -> Verify:
        if not arg:
            raise ProtocolError(replies.SYNTAX_VRFY)
        try:
            path, _ = paths.split_path(arg, replies.SYNTAX_VRFY)
            paths.check_mailbox(path, replies.SYNTAX_VRFY, smtputf8=True, postmaster_ok=True)
        except ProtocolError:
            return Verify(arg, False)
        return Verify(arg, True)

    def starttls(self, arg: str | None) -> StartTLS:
        """RFC 3207 4: no argument, once per session; the sequence (after
        EHLO, outside a transaction) is the state table's."""
        if arg:
            raise ProtocolError(replies.SYNTAX_STARTTLS)
        if self.tls:
            raise ProtocolError(replies.TLS_ACTIVE)
        return StartTLS()

    def begin_tls(self) -> int:
        """Just before the handshake, once 220 is sent: whatever came in
        plaintext behind the STARTTLS line is dropped, never run as a
        command of the encrypted session (the command injection of
        CVE-2011-0411). Returns how many octets were dropped."""
        return self.framer.discard()

    def tls_started(self) -> None:
        """TLS is up (RFC 3207 4.2): everything known from before it is
        forgotten, so the client must say EHLO again. (What arrives from
        here on came through TLS: nothing more is dropped.)"""
        self.clear_transaction()
        self.seen_greeting = ""
        self.extended_smtp = False
        self._advance(S_TLS)
        self.tls = True

    def help_reply(self, topic: str | None) -> Reply:
        if not topic:
            return replies.HELP
        text = _HELP_TOPICS.get(topic.upper())
        if text is None:
            return replies.HELP_UNKNOWN
        if self.extended_smtp and topic.upper() in ("MAIL", "RCPT"):
            text += " [SP <mail-parameters>]"
        return replies.OK.with_text(text)

    # -- accepted events: the moves of the state table --------------------------
    def _advance(self, step: Step) -> None:
        try:  # (state.advance, inlined: five moves a message)
            self.phase = phase = state.TRANSITIONS[self.phase][step]
        except KeyError:
            state.advance(self.phase, step)  # says which move is missing
            raise
        if phase is P_DATA:
            self.framer.start_data()

    def greet(self, hello: Hello) -> None:
        """HELO/EHLO accepted; RFC 5321 4.1.4: it resets the transaction."""
        self.clear_transaction()
        self.framer.abort_chunks()
        # One string per name, not one per session: an MX's peers (a
        # relay in front of it, a pool of connections) give the same few
        # names; interned strings still go with their last session.
        self.seen_greeting = sys.intern(hello.name)
        self.extended_smtp = hello.extended
        self._advance(S_GREET)

    def open_transaction(self, mail: MailFrom) -> None:
        """MAIL accepted: the transaction is open."""
        self.mail_from = mail
        self.mailfrom = mail.address
        self._mail_options = list(mail.options)  # (the slot: no descriptor call)
        self.require_SMTPUTF8 = mail.smtputf8
        self._advance(S_MAIL)

    def add_recipient(self, rcpt: RcptTo) -> None:
        """RCPT accepted."""
        # (the slots themselves: MadeOnUse's lookups cost a call each)
        if self._recipients is None:
            self._recipients = [rcpt]
        else:
            self._recipients.append(rcpt)
        if self._rcpttos is None:
            self._rcpttos = [rcpt.address]
        else:
            self._rcpttos.append(rcpt.address)
        if self._rcpt_options is None:
            self._rcpt_options = list(rcpt.options)
        else:
            self._rcpt_options += rcpt.options
        self._advance(S_RCPT)

    def start_data(self) -> None:
        """DATA answered 354: what follows is message text (the framer's
        switch is part of this move)."""
        self._advance(S_DATA)

    def end_transaction(self, *, accepted: bool = False) -> None:
        """The received message was answered (or refused): a new one may
        begin. An accepted message forgives the errors so far."""
        self.clear_transaction()
        self._advance(S_END)
        if accepted:
            self.errors = 0

    def reset(self) -> None:
        """RSET, or a transaction aborted."""
        self.clear_transaction()
        self.framer.abort_chunks()
        self._advance(S_RESET)

    def clear_transaction(self) -> None:
        self.mail_from = None
        self.mailfrom = None
        self._mail_options = self._rcpttos = self._rcpt_options = None
        self._recipients = None
        self.require_SMTPUTF8 = False

    @property
    def in_transaction(self) -> bool:
        return self.phase in _IN_TRANSACTION

    # -- replies in, bytes out ---------------------------------------------------
    def send(self, reply: Reply | str) -> None:
        """Queue one reply in its wire form (several lines become RFC 5321
        4.2.1 continuation lines) and count errors as Postfix does."""
        if self.closing:
            return  # 421 was the last word
        if isinstance(reply, Reply):
            wire = reply.wire
            refused = reply.code >= 400
        else:
            wire = replies.encode_text(reply)
            refused = reply[:1] in ("4", "5")
        if self._out is None:
            self._out = [wire]
        else:
            self._out.append(wire)
        if refused:
            # Postfix's smtpd_hard_error_limit: every refusal counts (a
            # refused RCPT too) until a message is accepted, so probing
            # addresses between NOOPs gains nothing.
            self.errors += 1
            if self.config.max_errors and self.errors >= self.config.max_errors:
                self.close(replies.TOO_MANY_ERRORS)

    def close(self, reply: Reply) -> None:
        """Say ``reply`` (a 421) as the session's last word."""
        if not self.closing:
            self._out = [*(self._out or ()), reply.to_bytes()]
            self.closing = True

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, to be written at once
        (RFC 2920: the replies of a pipelined batch leave together)."""
        out, self._out = self._out, None
        if not out:
            return b""
        return out[0] if len(out) == 1 else b"".join(out)

    @property
    def has_output(self) -> bool:
        return bool(self._out)


_PARSERS: dict[str, Callable[[Session, str | None], Event]] = {
    "HELO": lambda s, arg: s.hello(arg, extended=False),
    "EHLO": lambda s, arg: s.hello(arg, extended=True),
    "MAIL": Session.mail,
    "RCPT": Session.rcpt,
    "DATA": Session.data,
    "RSET": Session.rset,
    "NOOP": Session.noop,
    "VRFY": Session.vrfy,
    "EXPN": lambda s, arg: Expand(arg),
    "HELP": lambda s, arg: Help(arg),
    "QUIT": lambda s, arg: Quit(),
    "STARTTLS": Session.starttls,
    "BDAT": Session.bdat,
}
#: RFC 2033 4.1: LHLO replaces HELO and EHLO, which LMTP does not know.
_LMTP_PARSERS: dict[str, Callable[[Session, str | None], Event]] = {
    **{verb: parse for verb, parse in _PARSERS.items() if verb not in ("HELO", "EHLO")},
    "LHLO": lambda s, arg: s.hello(arg, extended=True),
}
