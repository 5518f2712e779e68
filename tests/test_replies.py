"""Every reply on the wire is RFC 5321 4.2.1 lines: ``NNN-text`` CRLF for all
but the last, ``NNN text`` CRLF for the last; never a bare LF inside."""

from __future__ import annotations

import smtplib

from mmgate import PureProxy, SMTPChannel
from mmgate.smtp import replies
from mmgate.smtp.replies import Reply
from tests.harness import RawClient, Recorder, serving
from tests.upstream import Upstream


class _MultiChannel(SMTPChannel):
    def smtp_XREPLY(self, arg: str | None) -> None:
        self.push(Reply(250, "2.0.0", "first\nsecond\nthird"))

    def smtp_XTEXT(self, arg: str | None) -> None:
        self.push("250 first\nsecond")


class _MultiServer(Recorder):
    channel_class = _MultiChannel


def test_multi_line_reply_and_text_are_proper_continuation_lines():
    with serving(_MultiServer(("127.0.0.1", 0), None)) as address:
        with RawClient(address) as raw:
            raw.reply()
            raw.send(b"XREPLY\r\nXTEXT\r\n")
            wire = b""
            while wire.count(b"\r\n") < 5:
                wire += raw.sock.recv(4096)
        assert wire == (
            b"250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 third\r\n250-first\r\n250 second\r\n"
        )
        with smtplib.SMTP(*address) as client:
            assert client.docmd("XREPLY") == (250, b"2.0.0 first\n2.0.0 second\n2.0.0 third")
            assert client.docmd("XTEXT") == (250, b"first\nsecond")


def test_upstream_multi_line_refusal_reaches_the_client_line_by_line():
    with (
        Upstream() as up,
        serving(PureProxy(("127.0.0.1", 0), up.address)) as address,
        smtplib.SMTP(*address) as client,
    ):
        client.ehlo("client.example")
        client.mail("a@example.com")
        assert client.rcpt("multi@example.org") == (
            550,
            b"5.1.1 line one\n5.1.1 line two\n5.1.1 line three",
        )


def test_encode_text_keeps_one_line_as_smtpd_did_and_mends_bare_lf():
    assert replies.encode_text("250 OK") == b"250 OK\r\n"
    assert replies.encode_text("451 one\r\n451 two") == b"451-one\r\n451 two\r\n"
    assert replies.encode_text("554 a\nb\n") == b"554-a\r\n554 b\r\n"
