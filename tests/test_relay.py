"""PureProxy against a real upstream: every verdict reaches the client where
it happens, and 250 after DATA only ever means the upstream said 250."""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from mmgate import PureProxy
from mmgate.relay.policy import RelayPolicy, parse_domains
from mmgate.relay.trace import new_id
from mmgate.relay.upstream import ClientTimeouts
from tests.harness import RawClient, Recorder, serving
from tests.upstream import DroppingUpstream, GreetingRefuser, Upstream, free_port

MESSAGE = b"Subject: relay test\r\n\r\nHello upstream.\r\n"


@contextmanager
def proxy(
    upstream_address: tuple[str, int], **kwargs: Any
) -> Iterator[tuple[PureProxy, RawClient]]:
    server = PureProxy(("127.0.0.1", 0), upstream_address, **kwargs)
    with serving(server) as address, RawClient(address) as client:
        assert client.reply()[0] == 220
        assert client.cmd("EHLO client.example")[0] == 250
        yield server, client


def send(
    c: RawClient, sender: str, rcpts: list[str], body: bytes = MESSAGE
) -> list[tuple[int, str]]:
    """A whole transaction; the replies to MAIL, each RCPT, DATA and the end."""
    out = [c.cmd(f"MAIL FROM:<{sender}>")]
    if out[0][0] != 250:
        return out
    out += [c.cmd(f"RCPT TO:<{r}>") for r in rcpts]
    if not any(code == 250 for code, _ in out[1:]):
        return out
    out.append(c.cmd("DATA"))
    out.append(c.cmd(body + b"."))
    return out


def test_message_is_relayed_with_a_received_header():
    with Upstream() as up, proxy(up.address) as (_px, c):
        replies = send(c, "a@example.com", ["b@example.org"])
        assert [code for code, _ in replies] == [250, 250, 354, 250]
        assert replies[-1][1] == "2.0.0 Queued as UP1"  # the upstream's own answer
    (envelope,) = up.handler.messages
    assert envelope.mail_from == "a@example.com" and envelope.rcpt_tos == ["b@example.org"]
    content = envelope.original_content
    assert content.startswith(b"Received: from client.example ([127.0.0.1])\r\n\tby ")
    assert b"with ESMTP id " in content and b"for <b@example.org>;" in content
    assert content.endswith(MESSAGE)


def test_x_peer_header_is_an_option():
    class WithXPeer(PureProxy):
        add_x_peer = True

    with Upstream() as up:
        server = WithXPeer(("127.0.0.1", 0), up.address)
        with serving(server) as address, smtplib.SMTP(*address) as client:
            client.sendmail("a@example.com", ["b@example.org"], MESSAGE)
    assert b"\r\nX-Peer: 127.0.0.1\r\n\r\nHello" in up.handler.messages[0].original_content


@pytest.mark.parametrize("code", [451, 553])
def test_upstream_refusing_mail_is_the_answer_to_mail(code: int):
    with Upstream() as up, proxy(up.address) as (_px, c):
        (reply,) = send(c, f"mail-{code}@example.com", ["b@example.org"])
        assert reply[0] == code
        assert send(c, "a@example.com", ["b@example.org"])[-1][0] == 250  # session goes on
    assert len(up.handler.messages) == 1


@pytest.mark.parametrize("code,text", [(550, "5.1.1 No such user"), (450, "4.2.1 Try later")])
def test_upstream_refusing_rcpt_is_the_answer_to_that_rcpt(code: int, text: str):
    with Upstream() as up, proxy(up.address) as (_px, c):
        replies = send(c, "a@example.com", [f"rcpt-{code}@example.org", "ok@example.org"])
        assert replies[1] == (code, text)
        assert [r[0] for r in replies[2:]] == [250, 354, 250]
    assert up.handler.messages[0].rcpt_tos == ["ok@example.org"]


@pytest.mark.parametrize("code", [451, 554])
def test_upstream_refusing_data_is_the_answer_after_data(code: int):
    with Upstream() as up, proxy(up.address) as (_px, c):
        body = f"X-Upstream-Reply: {code}\r\n\r\nx\r\n".encode()
        assert send(c, "a@example.com", ["b@example.org"], body)[-1][0] == code
        assert send(c, "a@example.com", ["b@example.org"])[-1][0] == 250
    assert len(up.handler.messages) == 1


def test_upstream_down_is_451_4_4_1_and_nothing_is_acknowledged():
    with proxy(("127.0.0.1", free_port())) as (_px, c):
        assert send(c, "a@example.com", ["b@example.org"]) == [
            (451, "4.4.1 Upstream unreachable, try again later")
        ]
        assert c.cmd("NOOP")[0] == 250


def test_421_greeting_is_451_4_4_1():
    with GreetingRefuser() as refuser, proxy(refuser.address) as (_px, c):
        assert send(c, "a@example.com", ["b@example.org"])[0][:1] == (451,)


def test_connection_dropped_in_data_is_451_never_250():
    with Upstream() as up, proxy(up.address) as (_px, c):
        replies = send(c, "a@example.com", ["drop@example.org"])
        assert replies[-1] == (451, "4.4.2 Upstream connection lost, try again later")
        # the next transaction gets a fresh upstream session
        assert send(c, "a@example.com", ["b@example.org"])[-1][0] == 250


def test_upstream_slower_than_the_timeout_is_451_4_4_2():
    with (
        Upstream() as up,
        proxy(up.address, client_timeouts=ClientTimeouts.uniform(0.5)) as (_px, c),
    ):
        replies = send(c, "a@example.com", ["slow@example.org"])
        assert replies[1] == (451, "4.4.2 Upstream timed out, try again later")


class SlowChunkingSink(Recorder):
    """mmgate's own server as the upstream: it offers CHUNKING, so the
    message goes as BDAT; it takes 1.2 s over a message to slowdata@."""

    slow = 0  # slow messages not done yet

    async def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):  # type: ignore[no-untyped-def]
        if rcpttos[0].startswith("slowdata@"):
            self.slow += 1
            await asyncio.sleep(1.2)
            self.slow -= 1
        return await super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


@contextmanager
def chunking_upstream() -> Iterator[tuple[str, int]]:
    sink = SlowChunkingSink(("127.0.0.1", 0), None)
    with serving(sink) as address:
        yield address
        deadline = time.monotonic() + 5
        while sink.slow and time.monotonic() < deadline:  # its client left; it goes on
            time.sleep(0.05)


@contextmanager
def data_upstream() -> Iterator[tuple[str, int]]:
    with Upstream() as up:
        yield up.address


@pytest.mark.parametrize("upstream", [data_upstream, chunking_upstream], ids=["DATA", "BDAT"])
def test_upstream_slow_to_take_the_message_is_451_4_4_2_never_early_and_its_session_not_reused(
    upstream: Any,
):
    with (
        upstream() as address,
        proxy(address, client_timeouts=ClientTimeouts.uniform(0.5)) as (px, c),
    ):
        started = time.monotonic()
        replies = send(c, "a@example.com", ["slowdata@example.org"])
        waited = time.monotonic() - started
        assert replies[-1] == (451, "4.4.2 Upstream timed out, try again later")
        assert 0.5 <= waited < 1.5  # due at 0.5 s; the watcher looks every 0.25 s
        # the late reply to that message must not pass for the next one's
        assert send(c, "a@example.com", ["b@example.org"])[-1][0] == 250
        assert px.pool is not None and px.pool.connects == 2


def test_commands_pipelined_while_the_upstream_decides_are_answered_in_order():
    with Upstream() as up, proxy(up.address) as (_px, c):
        up.handler.slow_seconds = 0.3
        c.send(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<slow@example.org>\r\n"
            b"RCPT TO:<rcpt-550@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
        )
        assert [c.reply()[0] for _ in range(5)] == [250, 250, 550, 250, 354]
        assert c.cmd(MESSAGE + b".")[0] == 250
    assert up.handler.messages[0].rcpt_tos == ["slow@example.org", "b@example.org"]


def test_client_outside_relay_networks_gets_554_and_nothing_goes_upstream():
    with Upstream() as up, proxy(up.address, relay_policy=RelayPolicy(networks=())) as (px, c):
        sessions = up.handler.sessions  # aiosmtpd's own readiness probe counts one
        replies = send(c, "a@example.com", ["b@example.org"])
        assert replies[1] == (554, "5.7.1 Relay access denied")
    assert up.handler.sessions == sessions and px.pool is not None and px.pool.connects == 0


def test_relay_domains_are_open_to_anyone():
    policy = RelayPolicy(networks=(), domains=parse_domains("open.example, .lists.example"))
    with Upstream() as up, proxy(up.address, relay_policy=policy) as (_px, c):
        replies = send(
            c, "a@example.com", ["x@closed.example", "y@open.example", "z@a.lists.example"]
        )
        assert [r[0] for r in replies] == [250, 554, 250, 250, 354, 250]
    assert up.handler.messages[0].rcpt_tos == ["y@open.example", "z@a.lists.example"]


def test_many_messages_share_one_pooled_upstream_session():
    with Upstream() as up, proxy(up.address) as (px, c):
        for _ in range(25):
            assert send(c, "a@example.com", ["b@example.org"])[-1][0] == 250
        assert c.cmd("RSET")[0] == 250
        assert send(c, "a@example.com", ["b@example.org"])[-1][0] == 250
    assert len(up.handler.messages) == 26
    assert px.pool is not None and px.pool.connects == 1


def test_pool_survives_an_upstream_restart():
    up = Upstream().start()
    try:
        with proxy(up.address) as (px, c):
            assert send(c, "a@example.com", ["b@example.org"])[-1][0] == 250
            up.stop()
            restarted = Upstream(port=up.port).start()
            try:
                assert send(c, "a@example.com", ["b@example.org"])[-1][0] == 250
            finally:
                restarted.stop()
            assert px.pool is not None and px.pool.connects == 2
    finally:
        up.stop()
    assert len(restarted.handler.messages) == 1


EIGHT_BIT = "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode()


def test_8bit_message_is_relayed_with_body_8bitmime_when_upstream_offers_it():
    with Upstream() as up, proxy(up.address) as (_px, c):
        c.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME")
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        assert c.cmd(EIGHT_BIT + b".")[0] == 250
    assert up.handler.mail_options == [["BODY=8BITMIME"]]


def test_8bit_message_to_upstream_without_8bitmime_is_554_5_6_3():
    with Upstream(decode_data=True) as up, proxy(up.address) as (_px, c):
        assert c.cmd("MAIL FROM:<a@example.com> BODY=8BITMIME")[0] == 250
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
        c.cmd("DATA")
        assert c.cmd(EIGHT_BIT + b".")[:1] == (554,)
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250  # 7-bit still goes
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        assert c.cmd(MESSAGE + b".")[0] == 250
    assert up.handler.mail_options[0] == []  # no BODY= to a server that did not offer it
    assert len(up.handler.messages) == 1


def test_smtputf8_is_passed_on_when_upstream_offers_it():
    with Upstream(enable_SMTPUTF8=True) as up, proxy(up.address, enable_SMTPUTF8=True) as (_px, c):
        assert c.cmd("MAIL FROM:<j\u00f6rg@example.com> SMTPUTF8".encode())[0] == 250
        assert c.cmd("RCPT TO:<b\u00fccher@example.org>".encode())[0] == 250
        c.cmd("DATA")
        assert c.cmd("Subject: gr\u00fc\u00dfe\r\n\r\nhi\r\n.".encode())[0] == 250
    (envelope,) = up.handler.messages
    assert envelope.mail_from == "j\u00f6rg@example.com"
    assert "SMTPUTF8" in up.handler.mail_options[0]


def test_smtputf8_to_upstream_without_it_is_553_5_6_7():
    with Upstream() as up, proxy(up.address, enable_SMTPUTF8=True) as (_px, c):
        assert c.cmd("MAIL FROM:<j\u00f6rg@example.com> SMTPUTF8".encode())[:1] == (553,)
        assert c.cmd("MAIL FROM:<a@example.com> SMTPUTF8")[0] == 250
        assert c.cmd("RCPT TO:<b\u00fccher@example.org>".encode())[:1] == (553,)
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
        c.cmd("DATA")
        assert c.cmd("Subject: gr\u00fc\u00dfe\r\n\r\nhi\r\n.".encode())[:1] == (554,)
    assert up.handler.messages == []


def test_no_upstream_configured_means_relaying_is_refused():
    server = PureProxy(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        c.cmd("EHLO a")
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        # a trusted client (Mailman on this host): temporary, it keeps the mail
        assert c.cmd("RCPT TO:<b@example.org>") == (
            451,
            "4.3.5 Relaying is not configured here yet (mmgate serve --relay HOST:PORT)",
        )


RECIPIENTS = ["one@example.org", "two@example.org", "three@example.org"]


def _transaction(c: RawClient, body: bytes) -> list[int]:
    """MAIL, three RCPTs, DATA and the text where DATA allows: the codes."""
    codes = [c.cmd("MAIL FROM:<a@example.com>")[0]]
    if codes[0] != 250:
        return codes
    codes += [c.cmd(f"RCPT TO:<{r}>")[0] for r in RECIPIENTS]
    codes.append(c.cmd("DATA")[0])
    if codes[-1] == 354:
        codes.append(c.cmd(body + b".")[0])
    return codes


@pytest.mark.parametrize(
    ("at", "expected", "delivered_to"),
    [
        # lost at MAIL: nothing is open yet, the client hears 451 and retries
        ("mail", [451], None),
        # lost before any recipient was taken: a new session carries on
        ("rcpt1", [250, 451, 250, 250, 354, 250], ["two@example.org", "three@example.org"]),
        # lost after the upstream took recipients: their acceptance died with
        # the session, so nothing of this transaction may be acknowledged
        ("rcpt2", [250, 250, 451, 451, 451], None),
        ("rcpt3", [250, 250, 250, 451, 451], None),
        ("data", [250, 250, 250, 250, 354, 451], None),
        ("body", [250, 250, 250, 250, 354, 451], None),
    ],
)
def test_upstream_drop_never_acknowledges_a_recipient_it_did_not_deliver(
    at: str, expected: list[int], delivered_to: list[str] | None
):
    body = MESSAGE + (b"x" * 998 + b"\r\n") * (1024 if at == "body" else 0)
    with DroppingUpstream(at) as up, proxy(up.address) as (_px, c):
        assert _transaction(c, body) == expected
        assert up.dropped
        if delivered_to is None:
            assert up.delivered == []
            c.cmd("RSET")
            # the client's retry goes through whole, on a fresh session
            assert _transaction(c, body) == [250, 250, 250, 250, 354, 250]
            delivered_to = RECIPIENTS
        ((sender, rcpts, data),) = up.delivered
        assert sender == "a@example.com" and rcpts == delivered_to
        assert data.endswith(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")


@pytest.mark.parametrize(
    "address",
    [
        "user%elsewhere.example@example.org",
        "elsewhere!user@example.org",
        '"user@elsewhere.example"@example.org',
    ],
)
def test_sender_specified_routing_is_refused_for_untrusted_clients(address: str):
    open_domain = RelayPolicy(networks=(), domains=parse_domains("example.org"))
    with Upstream() as up, proxy(up.address, relay_policy=open_domain) as (_px, c):
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd(f"RCPT TO:<{address}>") == (
            550,
            "5.7.1 Sender-specified routing is not allowed here",
        )
        assert c.cmd("RCPT TO:<user@example.org>")[0] == 250  # the domain stays open
    with Upstream() as up, proxy(up.address) as (_px, c):  # a trusted client may
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd(f"RCPT TO:<{address}>")[0] == 250


def test_queue_ids_never_repeat_in_a_process_or_in_a_forked_child():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, then gone
        os.write(write, " ".join(new_id() for _ in range(2000)).encode())
        os._exit(0)
    os.close(write)
    ours = [new_id() for _ in range(2000)]
    with os.fdopen(read) as pipe:
        theirs = pipe.read().split()
    os.waitpid(pid, 0)
    assert len(theirs) == 2000 and len(set(ours) | set(theirs)) == 4000
    assert all(re.fullmatch(r"[0-9A-F]{12}", qid) for qid in ours + theirs)
