"""Reverse/forward path and ESMTP parameter parsing (RFC 5321 4.1.2, RFC 6531)."""

from __future__ import annotations

import pytest

from mmgate.smtp import replies
from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.paths import (
    check_mailbox,
    parse_params,
    plain_path,
    split_path,
    strip_keyword,
)

S = replies.SYNTAX_MAIL


def mailbox(arg: str, **kw: bool) -> str:
    path, rest = split_path(arg, S)
    assert rest == ""
    return check_mailbox(
        path,
        S,
        smtputf8=kw.get("smtputf8", False),
        null_ok=kw.get("null_ok", False),
        postmaster_ok=kw.get("postmaster_ok", False),
    )


@pytest.mark.parametrize(
    "arg,expected",
    [
        ("<a@example.com>", "a@example.com"),
        ("a@example.com", "a@example.com"),
        ('<"john doe"@example.com>', '"john doe"@example.com'),
        ('<"a>b"@example.com>', '"a>b"@example.com'),
        ("<@relay.one,@relay.two:a@example.com>", "a@example.com"),
        ("<a@[127.0.0.1]>", "a@[127.0.0.1]"),
        ("<a@[IPv6:::1]>", "a@[IPv6:::1]"),
        ("<list-request+cookie@lists.example.com>", "list-request+cookie@lists.example.com"),
    ],
)
def test_valid_paths_parse_to_smtpd_form(arg: str, expected: str):
    assert mailbox(arg) == expected


@pytest.mark.parametrize(
    "arg",
    [
        "<a@>",
        "<@example.com>",
        "<a b@example.com>",
        "<a@exa mple.com>",
        "<a@-example.com>",
        "<a..b@example.com>",
        "<a@example.com",
        "a@example.com>",
        "<>x",
        "<a@b.c>junk",
    ],
)
def test_malformed_paths_are_syntax_errors(arg: str):
    with pytest.raises(ProtocolError) as info:
        mailbox(arg)
    assert info.value.reply.code == 501


def test_null_reverse_path_only_where_allowed():
    assert mailbox("<>", null_ok=True) == ""
    with pytest.raises(ProtocolError):
        mailbox("<>")


def test_postmaster_without_domain_is_a_valid_recipient():
    assert mailbox("<Postmaster>", postmaster_ok=True) == "Postmaster"


def test_non_ascii_address_needs_smtputf8():
    with pytest.raises(ProtocolError) as info:
        mailbox("<jörg@bücher.example>")
    assert info.value.reply == replies.NON_ASCII_ADDRESS
    assert mailbox("<jörg@bücher.example>", smtputf8=True) == "jörg@bücher.example"


def test_bytes_that_are_not_utf8_are_a_syntax_error_even_under_smtputf8():
    bad = b"<j\xffrg@example.com>".decode("utf-8", "surrogateescape")
    with pytest.raises(ProtocolError) as info:
        mailbox(bad, smtputf8=True)
    assert info.value.reply.code == 501


@pytest.mark.parametrize(
    "address",
    [
        # a VERP bounce address of a long member address, as Mailman makes them
        "list-bounces+first.middle.last=dept.university.example.edu@lists.example.org",
        # an SRS address from a forwarder
        "SRS0=HHH=TT=example.org=a.very.long.user.name.indeed@forwarder.example.com",
        "a" * 300 + "@example.com",
    ],
)
def test_long_local_parts_and_paths_are_accepted_as_postfix_and_mailman_do(address: str):
    assert mailbox(f"<{address}>") == address


def test_a_domain_over_255_octets_is_refused():
    with pytest.raises(ProtocolError) as info:
        mailbox("<a@" + "b" * 250 + ".example.com>")
    assert info.value.reply == replies.DOMAIN_TOO_LONG


def test_params_are_keyword_value_pairs_with_upper_keys():
    assert parse_params("size=100 BODY=8BITMIME SMTPUTF8", S) == {
        "SIZE": "100",
        "BODY": "8BITMIME",
        "SMTPUTF8": None,
    }


@pytest.mark.parametrize("text", ["=x", "SIZE=", "SIZE=1 SIZE=2", "A=b=c", "-X"])
def test_malformed_params_are_syntax_errors(text: str):
    with pytest.raises(ProtocolError):
        parse_params(text, S)


def test_keyword_is_stripped_case_insensitively_with_spaces_after_colon():
    assert strip_keyword("FROM:", "from:  <a@b.c>") == "<a@b.c>"
    assert strip_keyword("FROM:", "TO:<a@b.c>") is None


def _general(arg: str) -> tuple[str, str] | None:
    try:
        path, text = split_path(arg, S)
        return check_mailbox(path, S, smtputf8=True, null_ok=True), text
    except ProtocolError:
        return None


@pytest.mark.parametrize(
    "arg",
    [
        "<a@example.com>",
        "<a@example.com> SIZE=10 BODY=8BITMIME",
        "<a@example.com>   ",
        "<a@example.com>  SIZE=10  ",
        "<a.b+c@sub-1.example.com>\tSIZE=1",
        "<a@example.com>SIZE=10",
        "<a@example.com> \r",
        "<a..b@example.com>",
        "<.a@example.com>",
        "<a@-example.com>",
        "<a@example-.com>",
        "<a@example..com>",
        "<a@[127.0.0.1]>",
        '<"a b"@example.com>',
        "<@relay.one:a@example.com>",
        "<postmaster>",
        "<>",
        "a@example.com",
        "<a@example.com",
        "<a@b@example.com>",
        "<é@example.com>",
        "<a@" + "x" * 250 + ".com>",
        "<a@" + "x" * 63 + "." + "y" * 63 + "." + "z" * 63 + "." + "w" * 60 + ">",
        "<a@" + "b" * 250 + ".example.com>",
    ],
)
def test_the_common_path_parses_as_the_general_parser_does(arg: str):
    """plain_path answers only for paths the general parser takes, and
    gives what it gives; for the rest it declines and the general parser
    decides."""
    plain = plain_path(arg)
    if plain is not None:
        assert plain == _general(arg)
    for keyword, given_ in (
        ("FROM:", "FROM:"),
        ("FROM:", "from:  "),
        ("TO:", "To:"),
        ("TO:", "TO"),
    ):
        line = given_ + arg
        plain = plain_path(line, keyword)
        stripped = strip_keyword(keyword, line)
        if plain is not None:
            assert stripped is not None and plain == _general(stripped)


def test_the_common_path_is_answered_in_one_match():
    assert plain_path("<list-request+x@lists.example.org>") == (
        "list-request+x@lists.example.org",
        "",
    )
    assert plain_path("<a@example.com>  SIZE=10 BODY=8BITMIME ") == (
        "a@example.com",
        "SIZE=10 BODY=8BITMIME",
    )
    assert plain_path('<"a b"@example.com>') is None  # the general parser's
    assert plain_path("fRoM: <a@example.com> SIZE=1", "FROM:") == ("a@example.com", "SIZE=1")
    assert plain_path("TO:<a@example.com>", "FROM:") is None
