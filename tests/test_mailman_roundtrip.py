"""The gateway against Mailman itself: its runners, and its own LMTP runner.

* End to end: a post injected by mmgate is processed by Mailman's real
  runners (in, pipeline, out) and the member's copy reaches the capture
  SMTP server Mailman uses as its outgoing host.
* Differential: the same recipients and message are given to Mailman's own
  LMTP runner (started as Mailman starts it) and to mmgate; the verdicts and
  the queue entries must be the same.
"""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

from mmgate.gateway import MailmanProxy
from mmgate.smtp.framing import dot_stuff
from tests.harness import serving
from tests.mailman_env import MailmanEnv


def run_runners(mm: MailmanEnv, *names: str) -> None:
    """Drain Mailman queues with its real runner classes, in-process."""

    def run() -> None:
        from mailman.runners.incoming import IncomingRunner
        from mailman.runners.outgoing import OutgoingRunner
        from mailman.runners.pipeline import PipelineRunner
        from mailman.testing.helpers import make_testable_runner

        classes = {"in": IncomingRunner, "pipeline": PipelineRunner, "out": OutgoingRunner}
        for name in names:
            make_testable_runner(classes[name], name).run()

    mm.call(run)


def test_post_through_mmgate_is_delivered_by_mailmans_runners(mm: MailmanEnv):
    server = MailmanProxy(("127.0.0.1", 0), None, mailman=mm.mailman)
    before = len(mm.capture.messages)
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.sendmail(
            "alice@example.org",
            ["test@example.com"],
            b"From: alice@example.org\r\nTo: test@example.com\r\n"
            b"Subject: round trip\r\nMessage-ID: <rt-1@example.org>\r\n\r\nHi all.\r\n",
        )
    run_runners(mm, "in", "pipeline", "out")
    copies = mm.capture.wait_for(before + 1)[before:]
    assert [c.rcpt_tos for c in copies] == [["alice@example.org"]]
    content = copies[0].original_content
    assert b"Subject: [Test] round trip" in content
    assert b"List-Id: <test.example.com>" in content
    assert b"Message-ID: <rt-1@example.org>" in content
    assert copies[0].mail_from == "test-bounces@example.com"


# -- differential -----------------------------------------------------------

ADDRESSES = [
    "test@example.com",
    "TEST@example.com",
    "test-request@example.com",
    "test-join@example.com",
    "test-subscribe@example.com",
    "test-leave@example.com",
    "test-unsubscribe@example.com",
    "test-owner@example.com",
    "test-bounces+a=b.org@example.com",
    # VERP of a long member address: a local part over 64 octets
    "test-bounces+first.middle.last.name=department.university.example.edu@example.com",
    # an SRS address (forwarded mail) in a list domain: no such list
    "SRS0=HHH=TT=example.org=someone.with.a.rather.long.name.indeed@example.com",
    "test-confirm+c0ffee@example.com",
    "test+verp@example.com",
    "foo-bar@example.com",
    "foo-bar-request@example.com",
    "x-owner@example.com",
    "x-owner-owner@example.com",
    "x-join@example.com",
    "test@alias.example",
    "test-request@alias.example",
    "announce@lists.example.net",
    "nolist@example.com",
    "test-bogus@example.com",
    "nolist@lists.example.net",
]
MESSAGES = [
    b"From: alice@example.org\r\nSubject: plain\r\nMessage-ID: <d-1@example.org>\r\n\r\nx\r\n",
    b"From: alice@example.org\r\nSubject: no message id\r\n\r\nx\r\n",
    b"From: alice@example.org\r\nMessage-ID: [d-3@example.org]\r\n\r\nx\r\n",
]


def lmtp_deliver(lmtp: smtplib.LMTP, sender: str, rcpts: list[str], body: bytes) -> list[int]:
    """An LMTP transaction read as RFC 2033 says: one reply per recipient
    after DATA (smtplib's sendmail reads only the first)."""
    lmtp.mail(sender)
    for rcpt in rcpts:
        assert lmtp.rcpt(rcpt)[0] == 250
    assert lmtp.docmd("DATA")[0] == 354
    lmtp.send(dot_stuff(body))
    return [lmtp.getreply()[0] for _ in rcpts]


def rcpt_verdicts(client: smtplib.SMTP, addresses: list[str]) -> list[int]:
    client.ehlo_or_helo_if_needed()
    client.mail("alice@example.org")
    return [client.rcpt(a)[0] for a in addresses]


def entries(mm: MailmanEnv) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """Queue entries as comparable data: the queue, msgdata, key headers."""
    out = []
    for queue, items in mm.drain_all().items():
        for msg, msgdata in items:
            data = {k: v for k, v in msgdata.items() if k not in ("received_time", "original_size")}
            headers = {h: str(msg[h]) for h in ("X-MailFrom", "Subject", "From")}
            mid = str(msg["Message-ID"])
            headers["Message-ID"] = mid if "d-" in mid else "<generated>"
            headers["Message-ID-Hash"] = str(msg["Message-ID-Hash"]) if "d-" in mid else "<gen>"
            out.append((queue, data, headers))
    return sorted(out, key=repr)


@pytest.mark.parametrize("body", MESSAGES)
def test_same_verdicts_and_same_queue_entries_as_mailmans_lmtp_runner(mm, lmtp_runner, body):
    with smtplib.LMTP("127.0.0.1", mm.lmtp_port) as lmtp:
        lmtp_verdicts = rcpt_verdicts(lmtp, ADDRESSES)
        accepted = [a for a, v in zip(ADDRESSES, lmtp_verdicts, strict=True) if v == 250]
        lmtp.rset()
        assert lmtp_deliver(lmtp, "alice@example.org", accepted, body) == [250] * len(accepted)
    mm.wait_for_queue(len(accepted))
    lmtp_entries = entries(mm)

    server = MailmanProxy(("127.0.0.1", 0), None, mailman=mm.mailman)
    with serving(server) as address, smtplib.SMTP(*address) as client:
        gateway_verdicts = rcpt_verdicts(client, ADDRESSES)
        client.rset()
        client.sendmail("alice@example.org", accepted, body)
    gateway_entries = entries(mm)

    # Mailman answers 550 after DATA only; mmgate at RCPT: the same verdicts.
    assert gateway_verdicts == lmtp_verdicts
    assert lmtp_verdicts.count(550) == 4
    long_verp = next(a for a in ADDRESSES if a.startswith("test-bounces+first"))
    assert len(long_verp.partition("@")[0]) > 64 and long_verp in accepted
    # Mailman's LMTP runner queues a copy per recipient, duplicates too (TEST@
    # and test@, a VERP suffix, the alias domain, -subscribe and -join);
    # mmgate queues each distinct entry once, and exactly those.
    distinct = sorted({repr(e): e for e in lmtp_entries}.values(), key=repr)
    assert gateway_entries == distinct
    assert len(lmtp_entries) == len(accepted) > len(gateway_entries)
