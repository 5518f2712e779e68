"""The LMTP listener (RFC 2033), in the place of Mailman's own LMTP runner.

The differential test gives the same recipients and messages, over LMTP, to
Mailman's runner (started as Mailman starts it) and to mmgate's listener:
the replies at RCPT and after the message, and the queue entries, must be
the same.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mmgate.gateway import MailmanProxy
from mmgate.lmtp import LMTPGateway, per_recipient
from mmgate.smtp import replies
from mmgate.smtp.framing import dot_stuff
from mmgate.smtp.replies import Reply
from mmgate.store import Store
from tests.harness import RawClient, serving, wait_for_port
from tests.mailman_env import MailmanEnv
from tests.test_mailman_roundtrip import ADDRESSES, MESSAGES, entries
from tests.upstream import free_port

POST = b"From: alice@example.org\r\nSubject: hi\r\nMessage-ID: <l-1@example.org>\r\n\r\nhello\r\n"


def lmtp_gateway(mm: MailmanEnv, **kwargs: Any) -> tuple[MailmanProxy, LMTPGateway]:
    gateway = MailmanProxy(("127.0.0.1", 0), None, mailman=mm.mailman, **kwargs)
    return gateway, LMTPGateway(("127.0.0.1", 0), gateway)


def transaction(
    address: tuple[str, int], rcpts: list[str], body: bytes
) -> tuple[list[int], list[tuple[int, bytes]]]:
    """One LMTP transaction: the reply to each RCPT, then RFC 2033's one
    reply per accepted recipient after the message."""
    with smtplib.LMTP(*address) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        lmtp.mail("alice@example.org")
        at_rcpt = [lmtp.rcpt(r)[0] for r in rcpts]
        accepted = at_rcpt.count(250)
        if not accepted:
            return at_rcpt, []
        assert lmtp.docmd("DATA")[0] == 354
        lmtp.send(dot_stuff(body))
        return at_rcpt, [lmtp.getreply() for _ in range(accepted)]


@pytest.mark.parametrize("body", MESSAGES)
def test_same_replies_and_same_queue_entries_as_mailmans_lmtp_runner(mm, lmtp_runner, body):
    runner_rcpt, runner_after = transaction(("127.0.0.1", mm.lmtp_port), ADDRESSES, body)
    accepted = runner_rcpt.count(250)
    mm.wait_for_queue(accepted)
    runner_entries = entries(mm)

    gateway, lmtp = lmtp_gateway(mm)
    with serving(gateway), serving(lmtp) as address:
        ours_rcpt, ours_after = transaction(address, ADDRESSES, body)
    ours_entries = entries(mm)

    assert ours_rcpt == runner_rcpt
    assert runner_rcpt.count(550) == 4
    assert [code for code, _ in runner_after] == [250] * accepted
    assert [code for code, _ in ours_after] == [code for code, _ in runner_after]
    # Mailman's runner queues a copy per recipient, duplicates too; mmgate
    # each distinct entry once, and exactly those (as over SMTP).
    assert ours_entries == sorted({repr(e): e for e in runner_entries}.values(), key=repr)


def test_the_queued_message_is_byte_for_byte_what_mailmans_runner_queues(mm, lmtp_runner):
    """No Received: line of ours, the same headers added, the same text."""
    transaction(("127.0.0.1", mm.lmtp_port), ["test@example.com"], POST)
    mm.wait_for_queue(1)
    ((runner_msg, runner_data),) = mm.drain("in")
    gateway, lmtp = lmtp_gateway(mm)
    with serving(gateway), serving(lmtp) as address:
        transaction(address, ["test@example.com"], POST)
    ((our_msg, our_data),) = mm.drain("in")
    assert our_msg.as_bytes() == runner_msg.as_bytes()
    assert our_msg.get_unixfrom() == runner_msg.get_unixfrom()
    for data in (runner_data, our_data):
        del data["received_time"]
    assert our_data == runner_data


def test_lhlo_is_the_greeting_and_helo_and_ehlo_are_unknown(mm: MailmanEnv):
    gateway, lmtp = lmtp_gateway(mm)
    with serving(gateway), serving(lmtp) as address, RawClient(address) as client:
        code, text = client.reply()
        assert code == 220 and "LMTP" in text
        assert client.cmd("HELO me.example")[0] == 500
        assert client.cmd("EHLO me.example")[0] == 500
        assert client.cmd("MAIL FROM:<a@example.org>")[0] == 503
        code, text = client.cmd("LHLO me.example")
        assert code == 250 and "PIPELINING" in text and "ENHANCEDSTATUSCODES" in text


def test_nothing_is_relayed_over_lmtp_even_for_a_trusted_client(mm: MailmanEnv):
    """LMTP is final delivery: an address that is not a list is 550 5.1.1,
    where SMTP from the same loopback client would relay it."""
    gateway, lmtp = lmtp_gateway(mm)
    with serving(gateway), serving(lmtp) as address, smtplib.LMTP(*address) as client:
        client.ehlo_or_helo_if_needed()
        client.mail("alice@example.org")
        for rcpt in ("someone@example.org", "nolist@example.com", "postmaster"):
            code, text = client.rcpt(rcpt)
            assert (code, text[:5]) == (550, b"5.1.1"), rcpt


def test_each_recipient_gets_the_verdict_on_a_message_refused_whole(mm: MailmanEnv):
    """RFC 2033 4.2: after the message, one reply per accepted recipient,
    a refusal of the whole message too (here, too big)."""
    gateway = MailmanProxy(("127.0.0.1", 0), None, mailman=mm.mailman)
    lmtp = LMTPGateway(("127.0.0.1", 0), gateway, data_size_limit=100)
    rcpts = ["test@example.com", "test-request@example.com", "announce@lists.example.net"]
    with serving(gateway), serving(lmtp) as address:
        at_rcpt, after = transaction(address, rcpts, POST + b"x" * 200 + b"\r\n")
    assert at_rcpt == [250, 250, 250]
    assert [code for code, _ in after] == [552, 552, 552]
    assert mm.drain_all() == {"in": [], "command": [], "bounces": []}


def test_a_paused_list_is_deferred_over_lmtp_and_the_refusal_is_journaled(
    mm: MailmanEnv, tmp_path: Path
):
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    gateway, lmtp = lmtp_gateway(mm, store=store, paused=lambda: {"test.example.com"})
    with serving(gateway), serving(lmtp) as address:
        at_rcpt, after = transaction(address, ["test@example.com", "x@example.com"], POST)
    assert at_rcpt == [451, 250]
    assert [code for code, _ in after] == [250]
    assert [msgdata["listid"] for _, msgdata in mm.drain("in")] == ["x.example.com"]
    outcomes = {
        r["address"]: r["outcome"]
        for m in store.messages(limit=10, offset=0)[1]
        for r in m["recipients"]
    }
    assert outcomes == {"test@example.com": 451, "x@example.com": 250}


def test_per_recipient_replies_from_process_message_text():
    ok, bad = "250 2.0.0 Ok", "550 5.1.1 No"
    assert per_recipient(f"{ok}\r\n{bad}", 2) == [ok, bad]
    assert per_recipient(ok, 3) == [ok] * 3
    assert per_recipient(replies.OK, 2) == [replies.OK] * 2
    # a multi-line reply is one reply, for everyone
    continued = "250-first\r\n250 second"
    assert per_recipient(continued, 2) == [continued] * 2
    # the wrong number: those left without a verdict are told to try again
    got = per_recipient(f"{ok}\r\n{bad}\r\n{ok}", 2)
    assert got == [ok, bad]
    short = per_recipient(ok + "\r\n" + ok, 3)
    assert short[:2] == [ok, ok] and isinstance(short[2], Reply) and short[2].code == 451


def test_serve_listens_for_lmtp_beside_smtp(tmp_path: Path, mailman_env: MailmanEnv):
    port, lmtp_port = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mmgate",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--lmtp",
            f"127.0.0.1:{lmtp_port}",
            "--mailman-config",
            str(mailman_env.config),
            "--var-dir",
            str(tmp_path / "var"),
            "--no-api",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(lmtp_port, proc, "mmgate serve --lmtp")
        mailman_env.drain_all()
        at_rcpt, after = transaction(("127.0.0.1", lmtp_port), ["test@example.com"], POST)
        assert at_rcpt == [250] and after[0][0] == 250
        mailman_env.wait_for_queue(1)
        assert [m["message-id"] for m, _ in mailman_env.drain("in")] == ["<l-1@example.org>"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"LMTP on 127.0.0.1:{lmtp_port}" in err
