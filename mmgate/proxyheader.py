"""The PROXY protocol header (HAProxy, versions 1 and 2), sans-I/O.

Behind a load balancer every connection comes from the balancer; with
``send-proxy`` or ``send-proxy-v2`` it first sends one header naming the
real client. This module frames that header (where it ends in the bytes
received so far) and hands the header itself to the ``proxy-protocol``
library to parse and check. The server (:mod:`mmgate.server`) reads the
header before it greets, from trusted balancers only, and closes a
connection whose header is missing or malformed without a word of SMTP.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxyprotocol import ProxyProtocolIncompleteError, ProxyProtocolSyntaxError
from proxyprotocol.detect import ProxyProtocolDetect

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The spec's bound for a version 1 line, CRLF included.
V1_MAX = 107
#: Version 2 may carry TLVs; more than this is not a header we take.
V2_MAX = 16 + 4096


class HeaderError(ValueError):
    """Not a PROXY header: the connection is closed without a greeting."""


@dataclass(frozen=True)
class Proxied:
    """What the header said: the client's address and port, or ``None``
    for a connection of the balancer's own (a LOCAL or UNKNOWN header, as
    health checks send)."""

    client: tuple[str, int] | None
    length: int  #: octets of the header (what follows is the client's SMTP)


def header_length(buf: bytes | bytearray) -> int | None:
    """How long the header at the start of ``buf`` is; ``None`` if more
    bytes are needed to tell; :class:`HeaderError` if it is no header."""
    if buf[:1] == b"P" or not buf:
        if len(buf) < len(V1_SIGNATURE):
            if not V1_SIGNATURE.startswith(bytes(buf)):
                raise HeaderError("no PROXY header")
            return None
        if not buf.startswith(V1_SIGNATURE):
            raise HeaderError("no PROXY header")
        end = buf.find(b"\r\n", 0, V1_MAX)
        if end < 0:
            if len(buf) >= V1_MAX:
                raise HeaderError("PROXY v1 line too long")
            return None
        return end + 2
    if len(buf) < 16:
        if not V2_SIGNATURE.startswith(bytes(buf[:12])):
            raise HeaderError("no PROXY header")
        return None
    if not buf.startswith(V2_SIGNATURE):
        raise HeaderError("no PROXY header")
    total = 16 + int.from_bytes(buf[14:16], "big")
    if total > V2_MAX:
        raise HeaderError("PROXY v2 header too long")
    return total if len(buf) >= total else None


def parse(buf: bytes | bytearray) -> Proxied | None:
    """The header at the start of ``buf``: ``None`` while incomplete."""
    length = header_length(buf)
    if length is None:
        return None
    try:
        result = ProxyProtocolDetect().unpack(bytes(buf[:length]))
    except (ProxyProtocolSyntaxError, ProxyProtocolIncompleteError, ValueError) as exc:
        raise HeaderError(f"malformed PROXY header: {exc}") from None
    source = result.source if result.proxied else None
    if isinstance(source, tuple) and len(source) >= 2:
        return Proxied((str(source[0]), int(source[1])), length)
    return Proxied(None, length)
