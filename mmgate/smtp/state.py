"""The SMTP session state machine, as data.

Everything that decides whether a command may run now lives in this file:
``SEQUENCE`` says which reply a command gets in a phase where it is out of
order (RFC 5321 4.1.4 and 3.3), and ``TRANSITIONS`` says where each
successful step leads. A move that is not in the table is a bug, raised as
such, never a silent state change.
"""

from __future__ import annotations

from enum import Enum

from mmgate.smtp import replies
from mmgate.smtp.replies import Reply


class Phase(Enum):
    # Members are singletons: hash them by identity, in C. Enum's own
    # __hash__ is a Python function, and the state tables ask at every command.
    __hash__ = object.__hash__

    #: RFC 5321 4.1.4: the server greeted; the client has not sent HELO/EHLO.
    CONNECTED = "connected"
    #: HELO/EHLO accepted; no mail transaction (RFC 5321 3.3) is open.
    GREETED = "greeted"
    #: MAIL accepted: a transaction is open, no recipient yet.
    MAIL = "mail"
    #: At least one RCPT accepted.
    RCPT = "rcpt"
    #: DATA answered 354; message text is being read (RFC 5321 4.1.1.4).
    #: The framer reads message text in this phase and only in this one.
    DATA = "data"
    #: BDAT chunks are arriving (RFC 3030); the LAST one ends the message.
    CHUNKS = "chunks"
    #: The text ended at CRLF.CRLF; its reply is pending. Nothing more is
    #: read until it is sent, so later pipelined commands wait (RFC 2920).
    RECEIVED = "received"


class Step(Enum):
    """The successful outcomes that move a session."""

    # Members are singletons: hash them by identity, in C. Enum's own
    # __hash__ is a Python function, and the state tables ask at every command.
    __hash__ = object.__hash__

    GREET = "greet"  #: HELO or EHLO accepted (a second one resets, 4.1.4)
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  #: DATA answered 354
    CHUNK = "chunk"  #: a BDAT chunk accepted
    RECEIVED = "received"  #: the message text ended (CRLF.CRLF, or BDAT LAST)
    END = "end"  #: the message was answered
    RESET = "reset"  #: RSET, or a transaction aborted
    #: TLS started (RFC 3207 4.2): the session is as new, EHLO again
    TLS = "tls"


#: Phases and steps by module name, for the code that asks at every
#: command: on Python 3.11 a member read off an Enum class costs about ten
#: times a global (EnumType's ``__getattr__`` keeps it off the fast path).
P_CONNECTED, P_DATA, P_CHUNKS, P_RECEIVED = (
    Phase.CONNECTED,
    Phase.DATA,
    Phase.CHUNKS,
    Phase.RECEIVED,
)
S_GREET, S_MAIL, S_RCPT, S_DATA, S_CHUNK, S_RECEIVED, S_END, S_RESET, S_TLS = (
    Step.GREET,
    Step.MAIL,
    Step.RCPT,
    Step.DATA,
    Step.CHUNK,
    Step.RECEIVED,
    Step.END,
    Step.RESET,
    Step.TLS,
)

TRANSITIONS: dict[Phase, dict[Step, Phase]] = {
    Phase.CONNECTED: {Step.GREET: Phase.GREETED, Step.RESET: Phase.CONNECTED},
    Phase.GREETED: {
        Step.GREET: Phase.GREETED,
        Step.MAIL: Phase.MAIL,
        Step.RESET: Phase.GREETED,
        Step.TLS: Phase.CONNECTED,
    },
    Phase.MAIL: {Step.GREET: Phase.GREETED, Step.RCPT: Phase.RCPT, Step.RESET: Phase.GREETED},
    Phase.RCPT: {
        Step.GREET: Phase.GREETED,
        Step.RCPT: Phase.RCPT,
        Step.DATA: Phase.DATA,
        Step.CHUNK: Phase.CHUNKS,
        Step.RESET: Phase.GREETED,
    },
    Phase.DATA: {Step.RECEIVED: Phase.RECEIVED},
    Phase.CHUNKS: {
        Step.CHUNK: Phase.CHUNKS,
        Step.RECEIVED: Phase.RECEIVED,
        Step.RESET: Phase.GREETED,
        Step.GREET: Phase.GREETED,
    },
    Phase.RECEIVED: {Step.END: Phase.GREETED},
}

#: Commands that need a phase, and the reply they get anywhere else.
#: Commands not listed (HELO EHLO NOOP QUIT RSET HELP VRFY EXPN and any
#: subclass's own) are legal in every command phase.
SEQUENCE: dict[str, dict[Phase, Reply]] = {
    "MAIL": {
        Phase.CONNECTED: replies.SEND_HELO_FIRST,
        Phase.MAIL: replies.NESTED_MAIL,
        Phase.RCPT: replies.NESTED_MAIL,
        Phase.CHUNKS: replies.NESTED_MAIL,
    },
    "RCPT": {
        Phase.CONNECTED: replies.SEND_HELO_FIRST,
        Phase.GREETED: replies.NEED_MAIL,
        Phase.CHUNKS: replies.CHUNKS_IN_PROGRESS,
    },
    "DATA": {
        Phase.CONNECTED: replies.SEND_HELO_FIRST,
        Phase.GREETED: replies.NEED_RCPT,
        Phase.MAIL: replies.NEED_RCPT,
        Phase.CHUNKS: replies.CHUNKS_IN_PROGRESS,
    },
    # RFC 3030 2: after RCPT, and again for each chunk; its octets are
    # read whatever the reply (the transport skips them)
    "BDAT": {
        Phase.CONNECTED: replies.SEND_HELO_FIRST,
        Phase.GREETED: replies.NEED_MAIL,
        Phase.MAIL: replies.NEED_RCPT,
    },
    # RFC 3207 4: after EHLO (whose reply offers it), outside a transaction
    "STARTTLS": {
        Phase.CONNECTED: replies.SEND_HELO_FIRST,
        Phase.MAIL: replies.TRANSACTION_IN_PROGRESS,
        Phase.RCPT: replies.TRANSACTION_IN_PROGRESS,
        Phase.CHUNKS: replies.TRANSACTION_IN_PROGRESS,
    },
}


def out_of_sequence(verb: str, phase: Phase) -> Reply | None:
    """The 503 for ``verb`` in ``phase``, or ``None`` if it may run."""
    rules = SEQUENCE.get(verb)
    return rules.get(phase) if rules else None


def advance(phase: Phase, step: Step) -> Phase:
    """Where ``step`` leads from ``phase``; a move not in the table is a bug."""
    try:
        return TRANSITIONS[phase][step]
    except KeyError:
        raise RuntimeError(f"Invalid step {step.name} in phase {phase.name}") from None
