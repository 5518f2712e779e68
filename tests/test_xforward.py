"""XFORWARD (Postfix): a trusted MTA in front names the original client."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmgate.gateway import MailmanProxy
from mmgate.relay.policy import RelayPolicy, parse_networks
from mmgate.smtp.errors import ProtocolError
from mmgate.smtp.xforward import parse
from mmgate.store import Store
from tests.harness import RawClient, serving
from tests.mailman_env import MailmanEnv

POST = "From: a@example.org\r\nSubject: fwd\r\nMessage-ID: <xf-1@example.org>\r\n\r\nhi\r\n.\r\n"


def test_xforward_attributes_are_xtext_and_addresses_are_checked():
    assert parse("ADDR=IPV6:2001:db8::1 HELO=mx+2Bone.example NAME=[UNAVAILABLE]") == {
        "ADDR": "2001:db8::1",
        "HELO": "mx+one.example",
        "NAME": None,
    }
    for bad in ("", "FOO=bar", "ADDR", "ADDR=not-an-ip", "HELO=a+zz", "HELO=a=b"):
        with pytest.raises(ProtocolError):
            parse(bad)


def test_the_forwarded_client_drives_relay_control_the_journal_and_received(
    mm: MailmanEnv, tmp_path: Path
):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    server = MailmanProxy(("127.0.0.1", 0), ("127.0.0.1", 9), mailman=mm.mailman, store=store)
    with serving(server) as address, RawClient(address) as client:
        client.reply()
        _, text = client.cmd("EHLO postfix.example")
        assert "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE" in text  # trusted: offered
        assert client.cmd("XFORWARD ADDR=198.51.100.7 HELO=client.example PROTO=ESMTP")[0] == 250
        client.cmd("MAIL FROM:<a@example.org>")
        assert client.cmd("XFORWARD ADDR=192.0.2.1")[0] == 503  # not inside a transaction
        # 198.51.100.7 may not relay, whatever the MTA in front may do
        assert client.cmd("RCPT TO:<someone@elsewhere.example>")[0] in (550, 554)
        assert client.cmd("RCPT TO:<test@example.com>")[0] == 250
        assert client.cmd("DATA")[0] == 354
        client.send(POST.encode())
        assert client.reply()[0] == 250
        # the next transaction is the MTA's own again: the attributes are gone
        client.cmd("MAIL FROM:<a@example.org>")
        assert client.cmd("RCPT TO:<someone@elsewhere.example>")[0] != 550
    ((msg, _),) = mm.drain("in")
    received = str(msg["Received"])
    assert "from client.example ([198.51.100.7])" in received
    _, entries = store.messages(limit=10, offset=0)
    by_outcome = {e["outcome"]: e["client"] for e in entries}
    assert by_outcome[250] == "198.51.100.7"  # the post
    assert "198.51.100.7" in {by_outcome.get(550), by_outcome.get(554)}  # the refused RCPT


def test_an_untrusted_client_is_neither_offered_xforward_nor_allowed_it(mm: MailmanEnv):
    policy = RelayPolicy(parse_networks(["10.0.0.0/8"], source="test"))
    server = MailmanProxy(("127.0.0.1", 0), None, mailman=mm.mailman, relay_policy=policy)
    with serving(server) as address, RawClient(address) as client:
        client.reply()
        assert "XFORWARD" not in client.cmd("EHLO me.example")[1]
        code, text = client.cmd("XFORWARD ADDR=10.1.2.3")
        assert (code, text[:5]) == (550, "5.7.0")
