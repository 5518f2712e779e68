"""The size and count limits of an SMTP session, each with its RFC source.

Defaults are the RFC 5321 4.5.3.1 minimums that every implementation must
accept; raising them is allowed, lowering them breaks conforming clients.
"""

from __future__ import annotations

from dataclasses import dataclass

#: RFC 5321 4.5.3.1.4: "The maximum total length of a command line including
#: the command word and the <CRLF> is 512 octets."
COMMAND_LINE = 512
#: RFC 5321 4.5.3.1.6: "The maximum total length of a text line including the
#: <CRLF> is 1000 octets (not counting the leading dot duplicated for
#: transparency)."
TEXT_LINE = 1000
#: Python's smtpd default for ``data_size_limit`` (32 MiB), kept as ours.
MESSAGE_SIZE = 33554432
#: RFC 5321 4.5.3.1.8: at least 100 recipients must be buffered.
RECIPIENTS = 1000
#: RFC 5321 4.5.3.1.2: a domain is at most 255 octets (a DNS limit too).
#: The 64-octet local part and 256-octet path of 4.5.3.1.1 and 4.5.3.1.3
#: are minimums a server must accept, not maximums it must enforce: VERP
#: bounce addresses and SRS addresses carry a whole address in the local
#: part, and Mailman's LMTP runner and Postfix take any path that fits the
#: command line. So does mmgate.
DOMAIN = 255
#: RFC 1870 section 3: "the maximum length of a MAIL FROM command line is
#: increased by 26 characters by the possible addition of the SIZE keyword".
MAIL_EXTRA_SIZE = 26
#: RFC 6152 (BODY=8BITMIME is 14 octets with its space).
MAIL_EXTRA_BODY = 14
#: RFC 6531 3.4: "the maximum length of MAIL and RCPT commands is increased
#: by 10 characters by the possible addition of the SMTPUTF8 keyword".
MAIL_EXTRA_SMTPUTF8 = 10
#: smtpd's data_size_limit default: 32 MiB of message text.
DATA_SIZE_DEFAULT = 33554432
#: How many sessions a server holds at once, and from one client address.
MAX_CONNECTIONS = 1000
MAX_CONNECTIONS_PER_CLIENT = 50
#: RFC 5321 4.5.3.2.7: "Server Timeout: 5 Minutes" (waiting for a command).
IDLE_TIMEOUT = 300.0
#: Message text past this many octets is written to a spool file as it
#: arrives: a list post is mostly far smaller, and a session then holds
#: about this much whatever the message's size (benchmarks/memory.py).
SPOOL_THRESHOLD = 256 * 1024
#: Spooled text all sessions together may keep in memory before it spills
#: to files: within it large messages cost no disk I/O, beyond it memory no
#: longer grows with what clients send.
SPOOL_MEMORY = 64 * 1024 * 1024
#: Message text all sessions together may hold in memory; each session in
#: DATA counts SPOOL_THRESHOLD against it, so 256 at once by default.
MEMORY_BUDGET = 64 * 1024 * 1024
#: A command line must arrive whole within this many seconds of its first
#: byte: a client dribbling one byte at a time would otherwise re-arm the
#: idle timer forever and hold a connection slot.
COMMAND_TIMEOUT = 60.0
#: The least average rate of message text, in octets per second, after a
#: grace period; Postfix's smtpd_min_data_rate is 500.
MIN_DATA_RATE = 500
DATA_RATE_GRACE = 30.0


@dataclass(frozen=True, slots=True)
class Limits:
    """What one session may send before it is refused.

    ``message_size`` of 0 or ``None`` means no limit, as smtpd's
    ``data_size_limit`` did. ``lenient_text_lines`` accepts text lines over
    ``text_line`` (DebuggingServer does, because test suites send them).
    """

    command_line: int = COMMAND_LINE
    text_line: int = TEXT_LINE
    message_size: int | None = MESSAGE_SIZE
    recipients: int = RECIPIENTS
    lenient_text_lines: bool = False

    def __post_init__(self) -> None:
        if self.command_line < COMMAND_LINE:
            raise ValueError(f"command_line below the RFC 5321 minimum {COMMAND_LINE}")
        if self.text_line < TEXT_LINE:
            raise ValueError(f"text_line below the RFC 5321 minimum {TEXT_LINE}")
        if self.recipients < 100:
            raise ValueError("recipients below the RFC 5321 4.5.3.1.8 minimum 100")

    def mail_line(self, *, size: bool, smtputf8: bool) -> int:
        """The MAIL command line limit with the allowances of what EHLO offered."""
        extra = MAIL_EXTRA_BODY
        if size:
            extra += MAIL_EXTRA_SIZE
        if smtputf8:
            extra += MAIL_EXTRA_SMTPUTF8
        return self.command_line + extra

    @property
    def frame_line(self) -> int:
        """The longest command line the framer must hold before it gives up."""
        return self.mail_line(size=True, smtputf8=True)
