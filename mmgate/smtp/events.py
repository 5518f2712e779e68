"""The typed events of an SMTP session, as the core hands them out.

Small values, validated by the session before they are made: an event
exists only for a command whose syntax, sequence and limits were right
(RFC 5321 4.1.1 and 4.1.4). They are treated as immutable but not frozen:
a frozen dataclass costs three times as much to build (every field set
through object.__setattr__), and several are built per message. For the
same reason the events of every message write their ``__init__`` out: the
module is compiled (setup.py), and a dataclass's generated one would stay
interpreted. The framing events (a command line, a finished message) are in
:mod:`mmgate.smtp.framing`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, init=False)
class Command:
    """One command line, split into its verb (upper case) and argument."""

    verb: str
    arg: str | None
    line: str  #: the whole line as received (UTF-8, surrogateescape)

    def __init__(self, verb: str, arg: str | None, line: str) -> None:
        self.verb = verb
        self.arg = arg
        self.line = line


@dataclass(slots=True, init=False)
class Hello:
    """HELO or EHLO (RFC 5321 4.1.1.1); ``extended`` for EHLO."""

    name: str
    extended: bool

    def __init__(self, name: str, extended: bool) -> None:
        self.name = name
        self.extended = extended


@dataclass(slots=True, init=False)
class MailFrom:
    """MAIL FROM with its parsed reverse-path and parameters (4.1.1.2).

    ``address`` is the path without brackets ("" for the null sender), as
    smtpd gave it; ``options`` are the parameters in smtpd's form (one word
    each, keyword upper-cased).
    """

    address: str
    params: dict[str, str | None]
    options: tuple[str, ...]
    smtputf8: bool  #: RFC 6531: the client asked for SMTPUTF8
    body: str | None  #: RFC 6152: 7BIT or 8BITMIME
    size: int | None  #: RFC 1870: the declared size
    ret: str | None  #: RFC 3461 4.3: FULL or HDRS
    envid: str | None  #: RFC 3461 4.4: the envelope id, as xtext

    def __init__(
        self,
        address: str,
        params: dict[str, str | None] | None = None,
        options: tuple[str, ...] = (),
        smtputf8: bool = False,
        body: str | None = None,
        size: int | None = None,
        ret: str | None = None,
        envid: str | None = None,
    ) -> None:
        self.address = address
        self.params = {} if params is None else params
        self.options = options
        self.smtputf8 = smtputf8
        self.body = body
        self.size = size
        self.ret = ret
        self.envid = envid


@dataclass(slots=True, init=False)
class RcptTo:
    """RCPT TO with its parsed forward-path and parameters (4.1.1.3)."""

    address: str
    params: dict[str, str | None]
    options: tuple[str, ...]
    #: RFC 3461 4.1: NEVER, or some of SUCCESS, FAILURE, DELAY
    notify: tuple[str, ...] | None
    orcpt: str | None  #: RFC 3461 4.2: addr-type;xtext, as given

    def __init__(
        self,
        address: str,
        params: dict[str, str | None] | None = None,
        options: tuple[str, ...] = (),
        notify: tuple[str, ...] | None = None,
        orcpt: str | None = None,
    ) -> None:
        self.address = address
        self.params = {} if params is None else params
        self.options = options
        self.notify = notify
        self.orcpt = orcpt


@dataclass(slots=True, init=False)
class DataRequest:
    """DATA, in sequence and without an argument (4.1.1.4)."""


@dataclass(slots=True, init=False)
class Reset:
    """RSET (4.1.1.5)."""


@dataclass(slots=True)
class Verify:
    """VRFY (4.1.1.6); ``valid`` says whether the argument is a mailbox."""

    arg: str
    valid: bool


@dataclass(slots=True)
class Expand:
    """EXPN (4.1.1.7)."""

    arg: str | None


@dataclass(slots=True)
class Help:
    """HELP (4.1.1.8), with its topic if any."""

    topic: str | None


@dataclass(slots=True, init=False)
class Noop:
    """NOOP (4.1.1.9): "any parameter ... SHOULD be ignored"."""


@dataclass(slots=True, init=False)
class Quit:
    """QUIT (4.1.1.10)."""


@dataclass(slots=True)
class Bdat:
    """BDAT (RFC 3030 2): ``size`` octets of the message follow; ``last``
    ends it."""

    size: int
    last: bool


@dataclass(slots=True, init=False)
class StartTLS:
    """STARTTLS (RFC 3207): the transport answers 220 and starts TLS."""


@dataclass(slots=True)
class Unknown:
    """A verb the core does not implement; the transport may (``smtp_XFOO``)."""

    verb: str
    arg: str | None


Event = (
    Hello
    | MailFrom
    | RcptTo
    | DataRequest
    | Reset
    | Verify
    | Expand
    | Help
    | Noop
    | Quit
    | StartTLS
    | Bdat
    | Unknown
)
