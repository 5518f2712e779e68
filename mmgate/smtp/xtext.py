"""xtext (RFC 3461 4): how DSN's ENVID and ORCPT, and Postfix's XFORWARD,
carry any octet in an ESMTP parameter: ``+XX`` is the octet XX."""

from __future__ import annotations

import re

_HEX = re.compile(r"\+([0-9A-F]{2})")


def is_xtext(text: str) -> bool:
    """Printable US-ASCII but ``+`` and ``=``, or ``+`` and two upper-case hex digits."""
    if any(c < "!" or c > "~" or c == "=" for c in text):
        return False
    return "+" not in _HEX.sub("", text)


def decode(text: str) -> str:
    if not is_xtext(text):
        raise ValueError(f"not xtext: {text!r}")
    return _HEX.sub(lambda m: chr(int(m.group(1), 16)), text)
