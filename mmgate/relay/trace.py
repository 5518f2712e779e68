"""The Received: trace header (RFC 5321 4.4) and smtpd's X-Peer: header.

Every hop adds one Received: line so that loops can be detected and a
message's path read back; RFC 5321 4.4 says an SMTP server "MUST" insert it
on relay. The "with" keyword is from the RFC 3848 registry.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time
from email.utils import format_datetime, localtime

from mmgate._version import __version__


def _reseed() -> None:
    global _prefix, _serial
    _prefix = secrets.token_hex(3).upper()
    _serial = itertools.count(secrets.randbelow(1 << 24))


_prefix = ""
_serial = itertools.count()
_reseed()
os.register_at_fork(after_in_child=_reseed)  # a forked child never repeats its parent's


def new_id() -> str:
    """A short unique id for logs and the Received: header's ``id`` clause:
    12 hex digits, a random prefix per process and a serial number. Not
    ``secrets`` per message: that is a getrandom system call each, and the
    id needs to be unique, not unguessable."""
    return f"{_prefix}{next(_serial) & 0xFFFFFF:06X}"


def protocol_keyword(*, extended: bool, smtputf8: bool, tls: bool = False) -> str:
    """RFC 3848 / RFC 6531 3.7.3 "with" keyword for this session (``S``:
    over TLS)."""
    if smtputf8:
        return "UTF8SMTPS" if tls else "UTF8SMTP"
    if extended:
        return "ESMTPS" if tls else "ESMTP"
    return "SMTP"


_date: tuple[int, str] = (0, "")


def _now() -> str:
    """The RFC 5322 date of this second, in local time: made once a
    second, not once a message (email.utils builds it in Python)."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, format_datetime(localtime()))
    return _date[1]


def received_header(
    *,
    helo: str,
    client_ip: str,
    by: str,
    protocol: str,
    message_id: str,
    recipient: str | None = None,
    tls: str | None = None,
) -> bytes:
    """One Received: header, folded, with CRLF line endings.

    ``for`` names the recipient only when there is exactly one, as MTAs do,
    so that a list of recipients is not disclosed to each of them.
    """
    literal = f"[IPv6:{client_ip}]" if ":" in client_ip else f"[{client_ip}]"
    helo_text = "".join(c if " " < c < "\x7f" and c not in "()\\" else "?" for c in helo) or literal
    lines = [f"Received: from {helo_text} ({literal})"]
    if tls is not None:  # as Postfix says it
        lines.append(f"\t(using {tls})")
    lines.append(f"\tby {by} (mmgate {__version__}) with {protocol} id {message_id}")
    if recipient is not None:
        lines.append(f"\tfor <{recipient}>")
    lines[-1] += f"; {_now()}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def insert_x_peer(message: bytes, peer_ip: str) -> bytes:
    """smtpd PureProxy's ``X-Peer:`` header, after the last header line."""
    end = message.find(b"\r\n\r\n")
    header = f"X-Peer: {peer_ip}\r\n".encode()
    if end < 0:
        return message + (b"" if message.endswith(b"\r\n") or not message else b"\r\n") + header
    return message[: end + 2] + header + message[end + 2 :]
