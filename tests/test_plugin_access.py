"""The access plugin against real SMTP traffic: Postfix access(5) meaning."""

from __future__ import annotations

from typing import Any

import pytest
from mmgate_plugins.access import Access

from tests.harness import RawClient, Recorder, serving


def test_a_rejected_client_network_is_refused_in_the_greeting():
    server = Recorder(
        ("127.0.0.1", 0), None, plugins=[Access(clients=[["127.0.0.0/8", "REJECT go away"]])]
    )
    with serving(server) as address, RawClient(address) as c:
        assert c.reply() == (554, "5.7.1 go away")
        assert c.closed()


def test_a_deferred_client_gets_421_at_connect():
    server = Recorder(("127.0.0.1", 0), None, plugins=[Access(clients=[["127.0.0.1", "DEFER"]])])
    with serving(server) as address, RawClient(address) as c:
        assert c.reply() == (421, "4.7.0 Try again later")


SENDERS = [
    ["ok@spam.example", "OK"],  # first match wins: before the domain's REJECT
    ["postmaster@", "DUNNO"],  # decides nothing, and no later rule is looked at
    ["spam.example", "REJECT no spam"],  # the domain and its subdomains
    ["/^bulk[0-9]+@/", "DEFER slow down"],
    ["evil@example.net", "551 5.7.1 Gone elsewhere"],
]


@pytest.mark.parametrize(
    ("sender", "reply"),
    [
        ("ok@spam.example", (250, "2.1.0 OK")),
        ("x@spam.example", (554, "5.7.1 no spam")),
        ("x@mail.spam.example", (554, "5.7.1 no spam")),
        ("x@notspam.example", (250, "2.1.0 OK")),
        ("postmaster@spam.example", (250, "2.1.0 OK")),
        ("BULK42@example.org", (450, "4.7.1 slow down")),
        ("evil@example.net", (551, "5.7.1 Gone elsewhere")),
    ],
)
def test_sender_table_first_match_wins(sender: str, reply: tuple[int, str]):
    server = Recorder(("127.0.0.1", 0), None, plugins=[Access(senders=SENDERS)])
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        c.cmd("EHLO client.example")
        assert c.cmd(f"MAIL FROM:<{sender}>") == reply


def test_helo_and_recipient_tables_and_a_client_ok_that_skips_them():
    tables = {
        "helo": [["/^localhost$/", "REJECT say who you are"]],
        "recipients": [["secret@example.org", "REJECT"]],
    }
    server = Recorder(("127.0.0.1", 0), None, plugins=[Access(**tables)])
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        assert c.cmd("EHLO localhost") == (554, "5.7.1 say who you are")
        assert c.cmd("EHLO client.example")[0] == 250
        c.cmd("MAIL FROM:<a@example.com>")
        assert c.cmd("RCPT TO:<secret@example.org>") == (554, "5.7.1 Access denied")
        assert c.cmd("RCPT TO:<open@example.org>")[0] == 250
    trusted = Access(clients=[["127.0.0.0/8", "OK"]], **tables)
    server = Recorder(("127.0.0.1", 0), None, plugins=[trusted])
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        assert c.cmd("EHLO localhost")[0] == 250
        c.cmd("MAIL FROM:<a@example.com>")
        assert c.cmd("RCPT TO:<secret@example.org>")[0] == 250


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ({"clients": [["not-a-net", "OK"]]}, "clients: 'not-a-net' is not a network or /regex/"),
        ({"senders": [["a@b", "MAYBE"]]}, "action must be OK, REJECT, DEFER, DUNNO or NNN"),
        ({"senders": [["/(/", "OK"]]}, "bad regular expression"),
        ({"senders": ["a@b"]}, "each rule is [pattern, action]"),
    ],
)
def test_bad_tables_are_refused_when_the_plugin_is_built(tables: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        Access(**tables)
