"""Parsing of MAIL/RCPT arguments: reverse and forward paths, ESMTP parameters.

The grammar is RFC 5321 4.1.2 (Path, Mailbox, Local-part, Domain,
address-literal, esmtp-param), widened by RFC 6531 3.3 to UTF-8 in local
parts and domains when the client asked for SMTPUTF8. Like smtpd, a bare
address without angle brackets is accepted (Postel), and an RFC 5321
appendix C source route (``<@a,@b:user@c>``) is accepted and dropped.
"""

from __future__ import annotations

import re

from mmgate.smtp import limits, replies
from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.replies import Reply

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_UTF8 = "\u0080-\U0010ffff"


def _dot_string(utf8: str) -> str:
    atom = rf"[{_ATEXT}{utf8}]+"
    return rf"{atom}(?:\.{atom})*"


def _domain(utf8: str) -> str:
    label = rf"[A-Za-z0-9{utf8}](?:[A-Za-z0-9\-{utf8}]*[A-Za-z0-9{utf8}])?"
    return rf"{label}(?:\.{label})*"


def _mailbox_re(utf8: str) -> re.Pattern[str]:
    dot_string = _dot_string(utf8)
    quoted = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{utf8}]|\\[\x20-\x7e])*"'
    domain = _domain(utf8)
    literal = (
        r"\[(?:IPv6:[0-9A-Fa-f:.]+|[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
        r"|[A-Za-z0-9\-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+)\]"
    )
    return re.compile(rf"(?P<local>{dot_string}|{quoted})@(?P<domain>{domain}|{literal})")


_MAILBOX_ASCII = _mailbox_re("")
_MAILBOX_UTF8 = _mailbox_re(_UTF8)
# The bracketed path, with '>' allowed inside a quoted local part.
_ANGLE = re.compile(r'<((?:"(?:[^"\\]|\\.)*"|[^<>"])*)>')
# A bare path (no brackets) runs to the first space outside quotes.
_BARE = re.compile(r'(?:"(?:[^"\\]|\\.)*"|[^ "])+')
_SOURCE_ROUTE = re.compile(r"@[^:,]+(?:,@[^:,]+)*:")
# The common path, whole: an ASCII dot-string mailbox with a domain name, in
# angle brackets, then nothing or spaces and the parameters. Every path it
# takes, split_path and check_mailbox take alike (no quotes, brackets or
# '@' source route can be in it), so it can answer for them in one match;
# after MAIL's ``FROM:`` or RCPT's ``TO:`` (in ASCII letters of either case,
# spaces after the colon), for strip_keyword too.
_PLAIN_PATH = rf"<({_dot_string('')}@({_domain('')}))>(?: +((?s:.*)))?"
_PLAIN = {
    keyword: re.compile(
        "".join(f"[{c.upper()}{c.lower()}]" for c in keyword[:-1]) + ": *" + _PLAIN_PATH
    )
    for keyword in ("FROM:", "TO:")
}
_PLAIN[""] = re.compile(_PLAIN_PATH)
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*)(?:=([\x21-\x3c\x3e-\x7e" + _UTF8 + r"]+))?")


def strip_keyword(keyword: str, arg: str | None) -> str | None:
    """``FROM:``/``TO:`` off the argument; ``None`` if it is not there.

    Spaces after the colon are tolerated, as smtpd and every MTA do.
    """
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return None
    return arg[len(keyword) :].lstrip(" ")


def plain_path(arg: str | None, keyword: str = "") -> tuple[str, str] | None:
    """The mailbox and the parameter text of the common path (what
    :func:`strip_keyword` with ``keyword``, :func:`split_path` then
    :func:`check_mailbox` give it), in one match; ``None`` for any other,
    which those then parse."""
    m = None if arg is None else _PLAIN[keyword].fullmatch(arg)
    if m is None or len(m.group(2)) > limits.DOMAIN:
        return None
    return m.group(1), (m.group(3) or "").strip(" ")


def split_path(arg: str, syntax: Reply) -> tuple[str, str]:
    """Split ``<path> params`` into the inner path and the parameter text."""
    if arg.startswith("<"):
        m = _ANGLE.match(arg)
        if m is None:
            raise ProtocolError(syntax)
        path, rest = m.group(1), arg[m.end() :]
        if rest and not rest.startswith(" "):
            raise ProtocolError(syntax)
        return path, rest.strip(" ")
    m = _BARE.match(arg)
    if m is None:
        raise ProtocolError(syntax)
    rest = arg[m.end() :]
    if rest and not rest.startswith(" "):
        raise ProtocolError(syntax)
    return m.group(0), rest.strip(" ")


#: the surrogateescape range: bytes that were not UTF-8 (made with chr(),
#: a literal that mypyc cannot compile)
_LOW_SURROGATES = (chr(0xDC80), chr(0xDCFF))


def check_mailbox(
    path: str,
    syntax: Reply,
    *,
    smtputf8: bool,
    null_ok: bool = False,
    postmaster_ok: bool = False,
) -> str:
    """Validate a path's mailbox and return it as smtpd did (no brackets).

    ``<>`` is the null reverse-path (RFC 5321 4.5.5), allowed for MAIL only;
    ``<postmaster>`` without a domain must be accepted by RCPT (4.5.1).
    """
    if path == "":
        if null_ok:
            return ""
        raise ProtocolError(syntax)
    route = _SOURCE_ROUTE.match(path)
    if route:
        path = path[route.end() :]
    if postmaster_ok and path.lower() == "postmaster":
        return path
    if not path.isascii():
        if any(_LOW_SURROGATES[0] <= c <= _LOW_SURROGATES[1] for c in path):
            raise ProtocolError(syntax)  # bytes that were not UTF-8
        if not smtputf8:
            raise ProtocolError(replies.NON_ASCII_ADDRESS)
    m = (_MAILBOX_UTF8 if smtputf8 else _MAILBOX_ASCII).fullmatch(path)
    if m is None:
        raise ProtocolError(syntax)
    if len(m.group("domain").encode("utf-8")) > limits.DOMAIN:
        raise ProtocolError(replies.DOMAIN_TOO_LONG)
    return path


def parse_params(text: str, syntax: Reply) -> dict[str, str | None]:
    """ESMTP parameters as ``{KEYWORD: value or None}``; keywords upper-cased.

    RFC 5321 4.1.2: ``esmtp-keyword ["=" esmtp-value]``, separated by SP.
    A repeated keyword is a syntax error, as it has no defined meaning.
    """
    params: dict[str, str | None] = {}
    for word in text.split():
        m = _PARAM.fullmatch(word)
        if m is None:
            raise ProtocolError(syntax)
        key = m.group(1).upper()
        if key in params:
            raise ProtocolError(syntax)
        params[key] = m.group(2)
    return params
