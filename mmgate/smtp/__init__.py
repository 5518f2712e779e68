"""The sans-I/O SMTP protocol core: bytes in, events out; replies in, bytes out.

Nothing in this package touches a socket, an event loop or a thread, so the
same core serves the asyncio server, the tests and any other transport.
"""

from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.framing import (
    BareLinePolicy,
    CommandLine,
    Framer,
    LineTooLong,
    MessageChunk,
    MessageData,
)
from mmgate.smtp.limits import Limits
from mmgate.smtp.replies import Reply

__all__ = [
    "BareLinePolicy",
    "CommandLine",
    "Framer",
    "Limits",
    "LineTooLong",
    "MessageChunk",
    "MessageData",
    "ProtocolError",
    "Reply",
]
