"""Every SMTP reply mmgate sends, each with its enhanced status code.

One catalogue, so that a reader can see every answer the server can give and
so that a code is never typed twice with two meanings. Basic codes are from
RFC 5321 4.2.2, enhanced status codes from RFC 3463 (and RFC 6531 for the
SMTPUTF8 ones). The texts keep the wording of Python's ``smtpd`` where smtpd
had the reply, so logs and habits carry over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_CODE_PREFIX = re.compile(r"[2-5][0-9][0-9](?:[ -]|$)")
_REPLY_TEXT = re.compile(r"([2-5][0-9][0-9])(?: ([2-5]\.[0-9]{1,3}\.[0-9]{1,3}))?(?: (.*))?", re.S)


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: a three-digit code, an RFC 3463 status, a text.

    ``status`` is ``None`` for the replies RFC 2034 section 3 exempts from
    enhanced codes (the greeting, EHLO and HELO answers).
    """

    code: int
    status: str | None
    text: str
    #: the wire form, made once: most replies are constants sent again and
    #: again, and formatting one costs more than the rest of a command
    wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # RFC 5321 4.2: "a three-digit code"; the first digit is 2..5.
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")
        lines = self.text.split("\n")
        prefix = f"{self.status} " if self.status else ""
        out = [f"{self.code}-{prefix}{line}" for line in lines[:-1]]
        out.append(f"{self.code} {prefix}{lines[-1]}")
        wire = ("\r\n".join(out) + "\r\n").encode("utf-8", "surrogateescape")
        object.__setattr__(self, "wire", wire)

    @property
    def is_success(self) -> bool:
        return self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @classmethod
    def parse(cls, text: str, *, default_status: str | None = None) -> Reply:
        """``"550 5.7.1 Go away"`` as a Reply; without an enhanced code the
        class of ``default_status`` (or ``X.0.0``) is used. ValueError if
        ``text`` does not start with a reply code."""
        m = _REPLY_TEXT.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"not an SMTP reply: {text!r}")
        code = int(m.group(1))
        status = m.group(2)
        if status is None or status[0] != m.group(1)[0]:
            klass = m.group(1)[0]
            status = default_status if default_status and default_status[0] == klass else None
            status = status or f"{klass}.0.0"
        return cls(code, status, m.group(3) or "")

    def with_text(self, text: str) -> Reply:
        """The same code and status with another text (a name, a limit)."""
        return Reply(self.code, self.status, text)

    def __str__(self) -> str:
        """The reply as one logical line, without CRLF (smtpd's push form)."""
        if self.status:
            return f"{self.code} {self.status} {self.text}"
        return f"{self.code} {self.text}"

    def to_bytes(self) -> bytes:
        """Wire form; a multi-line text becomes RFC 5321 4.2.1 ``code-`` lines."""
        return self.wire


def encode_text(text: str) -> bytes:
    """A reply given as text (smtpd's ``push`` form) in its wire form.

    One line gets CRLF, as smtpd did. A text of several lines (separated by
    LF or CRLF) becomes RFC 5321 4.2.1 lines: ``NNN-text`` for all but the
    last, ``NNN text`` for the last, the code taken from the first line, so
    a client never sees a bare LF inside a reply.
    """
    if "\n" not in text:
        return text.encode("utf-8", "surrogateescape") + b"\r\n"
    lines = text.replace("\r\n", "\n").rstrip("\n").split("\n")
    code = lines[0][:3]
    out = []
    for i, line in enumerate(lines):
        body = line[4:] if _CODE_PREFIX.match(line) else line
        out.append(f"{code}{' ' if i == len(lines) - 1 else '-'}{body}")
    return ("\r\n".join(out) + "\r\n").encode("utf-8", "surrogateescape")


# --- 2xx: success ------------------------------------------------------------
OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "OK")
RECIPIENT_OK = Reply(250, "2.1.5", "OK")
MESSAGE_ACCEPTED = Reply(250, "2.0.0", "OK")
RESET_OK = Reply(250, "2.0.0", "OK")
BYE = Reply(221, "2.0.0", "Bye")
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(250, "2.0.0", "Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY")

# --- 3xx ---------------------------------------------------------------------
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")

# --- 4xx: temporary, the client retries --------------------------------------
SHUTTING_DOWN = Reply(421, "4.3.2", "Server shutting down, closing channel")
TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
DATA_TOO_SLOW = Reply(421, "4.4.2", "Error: message text arrives too slowly")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_HOST = Reply(421, "4.7.0", "Too many connections from your address, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing channel")
LOCAL_ERROR = Reply(451, "4.3.0", "Error: local error in processing")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
#: RFC 3463 X.3.1 "Mail system full": the memory budget for messages in
#: flight is spent, or the spool cannot be written; the client retries.
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage, try again later")

# --- 5xx: permanent ----------------------------------------------------------
BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
TEXT_LINE_TOO_LONG = Reply(500, "5.5.2", "Error: message text line too long (RFC 5321 4.5.3.1.6)")
UNKNOWN_COMMAND = Reply(500, "5.5.1", 'Error: command "{}" not recognized')
SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: HELO hostname")
SYNTAX_EHLO = Reply(501, "5.5.4", "Syntax: EHLO hostname")
SYNTAX_RSET = Reply(501, "5.5.4", "Syntax: RSET")
SYNTAX_DATA = Reply(501, "5.5.4", "Syntax: DATA")
SYNTAX_VRFY = Reply(501, "5.5.4", "Syntax: VRFY <address>")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM: <address>")
SYNTAX_MAIL_EXT = Reply(501, "5.5.4", "Syntax: MAIL FROM: <address> [SP <mail-parameters>]")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO: <address>")
SYNTAX_RCPT_EXT = Reply(501, "5.5.4", "Syntax: RCPT TO: <address> [SP <mail-parameters>]")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Error: bad recipient address syntax")
DOMAIN_TOO_LONG = Reply(501, "5.1.3", "Error: domain too long (RFC 5321 4.5.3.1.2)")
BAD_BODY = Reply(501, "5.5.4", "Error: BODY can only be one of 7BIT, 8BITMIME")
BAD_BODY_BINARY = Reply(501, "5.5.4", "Error: BODY can only be one of 7BIT, 8BITMIME, BINARYMIME")
BAD_SIZE = Reply(501, "5.5.4", "Error: SIZE takes a number of octets")
HELP_UNKNOWN = Reply(
    501, "5.5.4", "Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"
)
EXPN_NOT_IMPLEMENTED = Reply(502, "5.5.1", "EXPN not implemented")
VRFY_CANNOT = Reply(502, "5.5.1", "Could not VRFY {}")
SEND_HELO_FIRST = Reply(503, "5.5.1", "Error: send HELO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
TRANSACTION_IN_PROGRESS = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
#: RFC 3030: what BDAT needs, and what it rules out
CHUNKS_IN_PROGRESS = Reply(503, "5.5.1", "Error: BDAT in progress (RSET to abandon it)")
SYNTAX_BDAT = Reply(501, "5.5.4", "Syntax: BDAT chunk-size [LAST]")
BINARYMIME_NEEDS_BDAT = Reply(503, "5.5.1", "Error: BODY=BINARYMIME needs BDAT, not DATA")
#: RFC 3207 4: the reply that starts TLS, and its refusals
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
SYNTAX_STARTTLS = Reply(501, "5.5.4", "Syntax: STARTTLS")
TLS_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
#: RFC 3207 4: a client that must use TLS first (Postfix's wording)
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
SIZE_EXCEEDED = Reply(552, "5.3.4", "Error: message size exceeds fixed maximum message size")
TOO_MUCH_DATA = Reply(552, "5.3.4", "Error: Too much mail data")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Error: non-ASCII address needs SMTPUTF8 (RFC 6531 3.5)")
BARE_LINE_ENDING = Reply(550, "5.6.0", "Error: bare CR or LF in message text (RFC 5321 2.3.8)")
MAIL_PARAMS_UNKNOWN = Reply(555, "5.5.4", "MAIL FROM parameters not recognized or not implemented")
RCPT_PARAMS_UNKNOWN = Reply(555, "5.5.4", "RCPT TO parameters not recognized or not implemented")
#: RFC 3461: DSN parameters out of their syntax
BAD_RET = Reply(501, "5.5.4", "Error: RET takes FULL or HDRS")
BAD_ENVID = Reply(501, "5.5.4", "Error: ENVID must be xtext of at most 100 characters")
BAD_NOTIFY = Reply(501, "5.5.4", "Error: NOTIFY takes NEVER, or SUCCESS, FAILURE, DELAY")
BAD_ORCPT = Reply(501, "5.5.4", "Error: ORCPT takes addr-type;xtext")
