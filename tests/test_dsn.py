"""DSN parameters (RFC 3461): checked, and passed on by the relay."""

from __future__ import annotations

import asyncio
import smtplib

from mmgate import PureProxy
from tests.harness import RawClient, Recorder, serving
from tests.upstream import ScriptedServer, Upstream, free_port

POST = b"From: a@example.org\r\nSubject: dsn\r\n\r\nhi\r\n"


class DSNUpstream(ScriptedServer):
    """Offers DSN; takes the message after DATA."""

    extensions = ("DSN", "8BITMIME")

    async def on_command(
        self,
        verb: str,
        arg: str,
        text: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if verb != "DATA":
            return False
        writer.write(b"354 go on\r\n")
        while (await reader.readline()).rstrip(b"\r\n") != b".":
            pass
        writer.write(b"250 2.0.0 queued\r\n")
        return True


def test_dsn_parameters_are_checked():
    proxy = PureProxy(("127.0.0.1", 0), ("127.0.0.1", free_port()))
    with serving(proxy) as address, RawClient(address) as client:
        client.reply()
        assert "DSN" in client.cmd("EHLO me.example")[1].split("\n")
        for bad in ("RET=ALL", "ENVID=has=equals", "ENVID=" + "x" * 101, "ENVID=bad+zz"):
            assert client.cmd(f"MAIL FROM:<a@example.org> {bad}")[0] == 501, bad
        client.cmd("RSET")
        # (the upstream is down: MAIL itself is answered 451, after the checks)
        assert client.cmd("MAIL FROM:<a@example.org> RET=HDRS ENVID=id+2B1")[0] == 451


def test_rcpt_dsn_parameters_are_checked():
    with Upstream() as upstream:
        proxy = PureProxy(("127.0.0.1", 0), upstream.address)
        with serving(proxy) as address, RawClient(address) as client:
            client.reply()
            client.cmd("EHLO me.example")
            assert client.cmd("MAIL FROM:<a@example.org>")[0] == 250
            for bad in (
                "NOTIFY=NEVER,SUCCESS",
                "NOTIFY=SOMETIMES",
                "NOTIFY=",
                "ORCPT=b@example.org",
                "ORCPT=rfc822;",
            ):
                assert client.cmd(f"RCPT TO:<b@example.org> {bad}")[0] == 501, bad


def test_dsn_parameters_reach_an_upstream_that_offers_dsn():
    with DSNUpstream() as upstream:
        proxy = PureProxy(("127.0.0.1", 0), ("127.0.0.1", upstream.port))
        with serving(proxy) as address, smtplib.SMTP(*address) as client:
            client.ehlo()
            client.sendmail(
                "a@example.org",
                ["b@example.org"],
                POST,
                mail_options=["RET=HDRS", "ENVID=id+2B1"],
                rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b+40example.org"],
            )
    mail = next(line for line in upstream.commands if line.startswith("MAIL"))
    rcpt = next(line for line in upstream.commands if line.startswith("RCPT"))
    assert mail.endswith(" RET=HDRS ENVID=id+2B1")
    assert rcpt == "RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.org"


def test_to_an_upstream_without_dsn_the_parameters_are_left_out():
    with Upstream() as upstream:  # aiosmtpd: no DSN, and it refuses unknown parameters
        proxy = PureProxy(("127.0.0.1", 0), upstream.address)
        with serving(proxy) as address, smtplib.SMTP(*address) as client:
            client.ehlo()
            refused = client.sendmail(
                "a@example.org",
                ["b@example.org"],
                POST,
                mail_options=["RET=FULL"],
                rcpt_options=["NOTIFY=FAILURE"],
            )
    assert refused == {}
    assert len(upstream.handler.messages) == 1


def test_a_plain_server_does_not_offer_dsn():
    server = Recorder(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as client:
        client.reply()
        assert "DSN" not in client.cmd("EHLO me.example")[1].split("\n")
        client.cmd("MAIL FROM:<a@example.org>")
        assert client.cmd("RCPT TO:<b@example.org> NOTIFY=NEVER")[0] == 555
