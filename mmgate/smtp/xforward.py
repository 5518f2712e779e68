"""Postfix's XFORWARD command: a trusted MTA in front says who the client was.

Postfix's SMTP and LMTP clients (``smtp_send_xforward_command = yes``) send,
after EHLO and outside a mail transaction, ``XFORWARD NAME=... ADDR=...
PORT=... PROTO=... HELO=... IDENT=... SOURCE=...``, values in xtext (RFC
3461 4), ``[UNAVAILABLE]`` (or ``[TEMPUNAVAIL]``) for what it does not know.
The attributes hold for the next mail transaction: the original client's
address and HELO name then drive relay decisions, plugins, the journal and
the ``Received:`` line, as if that client had connected. Only clients the
server trusts (its relay networks) are offered it and may use it.
"""

from __future__ import annotations

import ipaddress

from mmgate.smtp import xtext
from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.replies import Reply

#: The attributes understood, in the order the EHLO keyword lists them.
ATTRIBUTES = ("NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE")
KEYWORD = "XFORWARD " + " ".join(ATTRIBUTES)
UNKNOWN_VALUES = ("[UNAVAILABLE]", "[TEMPUNAVAIL]")

SYNTAX = Reply(501, "5.5.4", "Syntax: XFORWARD attribute=value...")
NOT_AUTHORIZED = Reply(550, "5.7.0", "Error: insufficient authorization")
IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
BAD_ADDRESS = Reply(501, "5.5.4", "Bad XFORWARD ADDR: not an IP address")


def parse(arg: str | None) -> dict[str, str | None]:
    """The attributes of one XFORWARD command: ``None`` for a value the
    client does not know. ADDR is an IP address (``IPV6:`` prefix removed)."""
    if not arg:
        raise ProtocolError(SYNTAX)
    out: dict[str, str | None] = {}
    for word in arg.split():
        name, eq, raw = word.partition("=")
        name = name.upper()
        if not eq or name not in ATTRIBUTES:
            raise ProtocolError(SYNTAX)
        if raw in UNKNOWN_VALUES:
            out[name] = None
            continue
        try:
            value = xtext.decode(raw)
        except ValueError:
            raise ProtocolError(SYNTAX) from None
        if name == "ADDR":
            if value.upper().startswith("IPV6:"):
                value = value[5:]
            try:
                value = str(ipaddress.ip_address(value))
            except ValueError:
                raise ProtocolError(BAD_ADDRESS) from None
        out[name] = value
    return out
