"""What CPython's test_smtpd pinned on the wire, over a real socket.

Each test sends what test_smtpd sent and checks the reply code (and, where
smtpd's text is the contract, the text after the enhanced status code).
Where mmgate differs on purpose, the test says why.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mmgate import SMTPServer
from tests.harness import RawClient, Recorder, serving


@pytest.fixture
def server() -> Recorder:
    return Recorder(("127.0.0.1", 0), None)


@pytest.fixture
def client(server: Recorder) -> Iterator[RawClient]:
    with serving(server) as address, RawClient(address) as c:
        code, text = c.reply()
        assert code == 220 and "mmgate" in text
        yield c


def ehlo(c: RawClient) -> None:
    assert c.cmd("EHLO example")[0] == 250


def helo(c: RawClient) -> None:
    assert c.cmd("HELO example")[0] == 250


def test_empty_line_is_500_bad_syntax(client):
    assert client.cmd("") == (500, "5.5.2 Error: bad syntax")


def test_ehlo_lists_the_extensions(client):
    code, text = client.cmd("EHLO example")
    assert code == 250
    assert text.split("\n")[1:] == [
        "SIZE 33554432",
        "8BITMIME",
        "CHUNKING",
        "BINARYMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "HELP",
    ]


@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
def test_greeting_without_hostname_is_501(client, verb):
    assert client.cmd(verb) == (501, f"5.5.4 Syntax: {verb} hostname")


def test_second_ehlo_resets_the_transaction_rfc5321_4_1_4(client, server):
    # smtpd answered "503 Duplicate HELO/EHLO"; RFC 5321 4.1.4 says a later
    # EHLO resets the state as RSET does, which is what MTAs do.
    ehlo(client)
    assert client.cmd("MAIL FROM:<a@example.com>")[0] == 250
    ehlo(client)
    assert client.cmd("RCPT TO:<b@example.com>")[0] == 503


def test_help_without_and_with_argument(client):
    assert client.cmd("HELP") == (
        250,
        "2.0.0 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY",
    )
    assert client.cmd("HELP MAIL") == (250, "2.0.0 Syntax: MAIL FROM: <address>")
    assert client.cmd("HELP SPAM")[0] == 501


def test_helo_session_refuses_mail_parameters(client):
    helo(client)
    assert client.cmd("MAIL from:<foo@example.com> SIZE=1234") == (
        501,
        "5.5.4 Syntax: MAIL FROM: <address>",
    )


def test_mail_allows_space_after_colon(client, server):
    helo(client)
    assert client.cmd("MAIL from:   <foo@example.com>")[0] == 250


def test_extended_mail_allows_space_after_colon(client):
    ehlo(client)
    assert client.cmd("MAIL from:   <foo@example.com> size=20")[0] == 250


@pytest.mark.parametrize("line,code", [("NOOP", 250), ("NOOP hi", 250)])  # RFC 5321 4.1.1.9
def test_noop(client, line, code):
    assert client.cmd(line)[0] == code


def test_quit_with_argument_says_bye_and_closes(client):
    assert client.cmd("QUIT bye bye") == (221, "2.0.0 Bye")
    assert client.closed()


def test_command_too_long_is_500(client):
    ehlo(client)
    assert client.cmd("MAIL from: " + "a" * 600 + "@example") == (500, "5.5.2 Error: line too long")
    assert client.cmd("NOOP " + "a" * 600) == (500, "5.5.2 Error: line too long")
    assert client.cmd("NOOP")[0] == 250


def test_long_local_part_is_accepted_as_postfix_and_mailman_accept_it(client):
    ehlo(client)
    assert client.cmd("MAIL from: <" + "a" * 65 + "@example>")[0] == 250


def test_mail_line_limit_grows_with_size_and_shrinks_without_ehlo(client):
    ehlo(client)
    line = "MAIL from:<a@example.com> SIZE=1000 BODY=8BITMIME"
    pad = " " * (512 + 26 + 14 - 2 - len(line))  # RFC 1870 and RFC 6152 allowances
    assert client.cmd(line + pad)[0] == 250  # exactly at the limit
    assert client.cmd("RSET")[0] == 250
    assert client.cmd(line + pad + " ")[0] == 500  # one octet over


def test_smtputf8_is_refused_unless_enabled(client):
    ehlo(client)
    assert client.cmd("MAIL from: <naive@example.com> BODY=8BITMIME SMTPUTF8")[0] == 555


def test_size_parameter(client):
    ehlo(client)
    assert client.cmd("MAIL FROM:<eggs@example> SIZE=512")[0] == 250


def test_invalid_size_parameter_is_501(client):
    ehlo(client)
    assert client.cmd("MAIL FROM:<eggs@example> SIZE=invalid")[0] == 501


@pytest.mark.parametrize("digits", ["\u00b2", "\u0663\u0664", "\uff11\uff12"])
def test_a_size_in_non_ascii_digits_is_501_and_the_session_goes_on(client, digits):
    # str.isdigit() says yes to all of these; int() refused "²" (the session died)
    # and read the others as numbers. RFC 1870: SIZE is ASCII digits only.
    ehlo(client)
    assert client.cmd(f"MAIL FROM:<eggs@example> SIZE={digits}".encode()) == (
        501,
        "5.5.4 Error: SIZE takes a number of octets",
    )
    assert client.cmd("NOOP")[0] == 250


def test_size_over_the_limit_is_552_before_any_data(client):
    ehlo(client)
    assert client.cmd(f"MAIL FROM:<eggs@example> SIZE={33554432 + 1}") == (
        552,
        "5.3.4 Error: message size exceeds fixed maximum message size",
    )


def test_unknown_mail_and_rcpt_parameters_are_555(client):
    ehlo(client)
    assert client.cmd("MAIL FROM:<eggs@example> ham=green")[0] == 555
    assert client.cmd("MAIL FROM:<eggs@example>")[0] == 250
    assert client.cmd("RCPT TO:<eggs@example> ham=green")[0] == 555


def test_bad_body_parameter_is_501(client):
    ehlo(client)
    assert client.cmd("MAIL FROM:<eggs@example> BODY=9BIT")[0] == 501


@pytest.mark.parametrize("line", ["MAIL from eggs@example", "MAIL from:", "MAIL"])
def test_mail_syntax_errors_are_501(client, line):
    helo(client)
    assert client.cmd(line) == (501, "5.5.4 Syntax: MAIL FROM: <address>")


def test_mail_syntax_error_after_ehlo_mentions_parameters(client):
    ehlo(client)
    assert client.cmd("MAIL from eggs@example") == (
        501,
        "5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]",
    )


@pytest.mark.parametrize(
    "arg,address",
    [
        ("<eggs@example>", "eggs@example"),
        ("<>", ""),
        ('<"Fred Blogs"@example.com>', '"Fred Blogs"@example.com'),
        ('"Fred Blogs"@example.com', '"Fred Blogs"@example.com'),
        ('<"Fred Blogs"@example.com> SIZE=1000', '"Fred Blogs"@example.com'),
        ('"Fred Blogs"@example.com SIZE=1000', '"Fred Blogs"@example.com'),
    ],
)
def test_mail_addresses_reach_process_message_as_smtpd_gave_them(client, server, arg, address):
    ehlo(client)
    assert client.cmd("MAIL from: " + arg)[0] == 250
    assert client.cmd("RCPT to: <spam@example>")[0] == 250
    assert client.cmd("DATA")[0] == 354
    assert client.cmd(b"x\r\n.")[0] == 250
    assert server.messages[-1]["mailfrom"] == address


def test_null_sender_may_have_recipients(client):
    # smtpd's "if not self.mailfrom" refused RCPT after MAIL FROM:<> (503).
    ehlo(client)
    assert client.cmd("MAIL FROM:<>")[0] == 250
    assert client.cmd("RCPT TO:<bounce@example.com>")[0] == 250


def test_nested_mail_is_503(client):
    helo(client)
    assert client.cmd("MAIL from:eggs@example")[0] == 250
    assert client.cmd("MAIL from:spam@example") == (503, "5.5.1 Error: nested MAIL command")


def test_vrfy_is_252_and_needs_an_argument(client):
    assert client.cmd("VRFY eggs@example")[0] == 252
    assert client.cmd("VRFY") == (501, "5.5.4 Syntax: VRFY <address>")
    assert client.cmd("VRFY <not an address>")[0] == 502


def test_expn_is_502(client):
    assert client.cmd("EXPN spam@example") == (502, "5.5.1 EXPN not implemented")


@pytest.mark.parametrize("line", ["MAIL from:<eggs@example>", "RCPT to:<eggs@example>", "DATA"])
def test_transaction_commands_before_helo_are_503(client, line):
    assert client.cmd(line) == (503, "5.5.1 Error: send HELO first")


def test_rcpt_before_mail_is_503(client):
    helo(client)
    assert client.cmd("RCPT to:spam@example") == (503, "5.5.1 Error: need MAIL command")


def test_data_before_rcpt_is_503(client):
    helo(client)
    assert client.cmd("MAIL From:eggs@example")[0] == 250
    assert client.cmd("DATA") == (503, "5.5.1 Error: need RCPT command")


@pytest.mark.parametrize("line", ["RCPT to eggs@example", "RCPT to:", "RCPT to:<>"])
def test_rcpt_syntax_errors_are_501(client, line):
    helo(client)
    assert client.cmd("MAIL From:eggs@example")[0] == 250
    assert client.cmd(line) == (501, "5.5.4 Syntax: RCPT TO: <address>")


def test_rcpt_lowercase_to_is_ok(client):
    helo(client)
    assert client.cmd("MAIL From:eggs@example")[0] == 250
    assert client.cmd("RCPT to: <eggs@example>")[0] == 250


def test_data_dialog_and_smtpd_data_form(client, server):
    helo(client)
    assert client.cmd("MAIL From:eggs@example")[0] == 250
    assert client.cmd("RCPT To:spam@example")[0] == 250
    assert client.cmd("DATA") == (354, "End data with <CR><LF>.<CR><LF>")
    assert client.cmd(b"data\r\nmore\r\n.") == (250, "2.0.0 OK")
    got = server.messages[-1]
    assert got["data"] == b"data\nmore"  # smtpd's form: LF lines, no final one
    assert (got["mailfrom"], got["rcpttos"]) == ("eggs@example", ["spam@example"])


def test_data_with_argument_is_501(client):
    helo(client)
    client.cmd("MAIL From:eggs@example")
    client.cmd("RCPT To:spam@example")
    assert client.cmd("DATA spam") == (501, "5.5.4 Syntax: DATA")


def test_data_transparency_rfc5321_4_5_2(client, server):
    helo(client)
    client.cmd("MAIL From:eggs@example")
    client.cmd("RCPT To:spam@example")
    client.cmd("DATA")
    client.send(b"..\r\nx\r\n..a\r\n...\r\n")
    assert client.cmd(b".")[0] == 250
    assert server.messages[-1]["data"] == b".\nx\n.a\n.."


def test_multiple_rcpt(client, server):
    helo(client)
    client.cmd("MAIL From:eggs@example")
    client.cmd("RCPT To:spam@example")
    client.cmd("RCPT To:ham@example")
    client.cmd("DATA")
    client.cmd(b"data\r\n.")
    assert server.messages[-1]["rcpttos"] == ["spam@example", "ham@example"]


def test_rset_resets_and_takes_no_argument(client):
    helo(client)
    client.cmd("MAIL From:eggs@example")
    client.cmd("RCPT To:spam@example")
    assert client.cmd("RSET")[0] == 250
    assert client.cmd("MAIL From:foo@example")[0] == 250
    assert client.cmd("RSET hi") == (501, "5.5.4 Syntax: RSET")


def test_unknown_command_is_500_and_named(client):
    assert client.cmd("UNKNOWN_CMD") == (500, '5.5.1 Error: command "UNKNOWN_CMD" not recognized')


def test_data_over_the_size_limit_is_552_and_session_survives():
    server = Recorder(("127.0.0.1", 0), None, data_size_limit=32)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        helo(c)
        c.cmd("MAIL From:eggs@example")
        c.cmd("RCPT To:spam@example")
        c.cmd("DATA")
        assert c.cmd(b"This is too long, more than 32 bytes\r\n.") == (
            552,
            "5.3.4 Error: Too much mail data",
        )
        assert c.cmd("NOOP")[0] == 250
    assert server.messages == []


def test_ipv6_server():
    server = Recorder(("::1", 0), None)
    with serving(server) as address, RawClient(address) as c:
        assert c.reply()[0] == 220
        assert c.cmd("HELO example")[0] == 250


class _Manual(SMTPServer):
    async def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return "250 Okish"


def test_manual_status_from_process_message():
    with serving(_Manual(("127.0.0.1", 0), None)) as address, RawClient(address) as c:
        c.reply()
        helo(c)
        c.cmd("MAIL From:eggs@example")
        c.cmd("RCPT To:spam@example")
        c.cmd("DATA")
        assert c.cmd(b"data\r\n.") == (250, "Okish")


def test_decode_data_gives_str():
    server = Recorder(("127.0.0.1", 0), None, decode_data=True)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        assert "8BITMIME" not in c.cmd("EHLO example")[1]  # smtpd: no 8BITMIME when decoding
        c.cmd("MAIL From:eggs@example")
        c.cmd("RCPT To:spam@example")
        c.cmd("DATA")
        c.cmd("utf8 enriched text: żźć\r\n.".encode())
    assert server.messages[-1]["data"] == "utf8 enriched text: żźć"


def test_smtputf8_when_enabled():
    server = Recorder(("127.0.0.1", 0), None, enable_SMTPUTF8=True)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        assert "SMTPUTF8" in c.cmd("EHLO example")[1]
        assert c.cmd("MAIL from: <naive@example.com> BODY=8BITMIME SMTPUTF8")[0] == 250
        assert c.cmd("RCPT TO:<jörg@bücher.example>".encode())[0] == 250
        c.cmd("DATA")
        assert c.cmd("Subject: żźć\r\n\r\nhi\r\n.".encode())[0] == 250
    got = server.messages[-1]
    assert got["mail_options"] == ["BODY=8BITMIME", "SMTPUTF8"]
    assert got["rcpttos"] == ["jörg@bücher.example"]
    assert got["data"] == "Subject: żźć\n\nhi".encode()


def test_non_ascii_address_without_smtputf8_is_553():
    server = Recorder(("127.0.0.1", 0), None, enable_SMTPUTF8=True)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        ehlo(c)
        assert c.cmd("MAIL from: <jörg@bücher.example>".encode())[0] == 553


def test_decode_data_and_smtputf8_together_are_refused():
    with pytest.raises(ValueError):
        SMTPServer(("127.0.0.1", 0), None, enable_SMTPUTF8=True, decode_data=True)
