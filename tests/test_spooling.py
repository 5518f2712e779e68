"""Large messages go to a spool file as they arrive and are delivered from
it: to process_message (whole, as smtpd gave it), upstream, into Mailman's
queue and over LMTP. Nothing is left behind; a spent memory budget or an
unwritable spool is a 452, never a loss."""

from __future__ import annotations

import smtplib
from pathlib import Path

from mmgate import PureProxy
from mmgate.gateway import MailmanProxy
from mmgate.spoolfile import MemoryPool
from tests.harness import RawClient, Recorder, serving
from tests.mailman_env import MailmanEnv
from tests.test_remote import remote, rest  # noqa: F401 - the module's REST fixture
from tests.upstream import Upstream

THRESHOLD = 64 * 1024
LINES = [b"Line %d of a long post." % n for n in range(60_000)] + [b".starts with a dot", b"."]
BODY = b"\r\n".join(LINES) + b"\r\n"  # about 1.6 MB, dot lines included
POST = b"From: alice@example.org\r\nSubject: big\r\nMessage-ID: <big@example.org>\r\n\r\n" + BODY


def _spool_files(spool: Path) -> list[Path]:
    return list(spool.iterdir()) if spool.exists() else []


def test_process_message_gets_the_whole_message_as_smtpd_gave_it(tmp_path: Path):
    server = Recorder(
        ("127.0.0.1", 0),
        None,
        spool_threshold=THRESHOLD,
        spool_memory=0,
        spool_dir=tmp_path / "spool",
    )
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.sendmail("a@example.com", ["b@example.org"], POST)
    assert server.messages[0]["data"] == POST[:-2].replace(b"\r\n", b"\n")
    assert (tmp_path / "spool").is_dir() and _spool_files(tmp_path / "spool") == []


def test_a_spooled_message_is_relayed_from_its_file(tmp_path: Path):
    with Upstream() as up:
        server = PureProxy(
            ("127.0.0.1", 0),
            up.address,
            spool_threshold=THRESHOLD,
            spool_memory=0,
            spool_dir=tmp_path / "spool",
        )
        with serving(server) as address, smtplib.SMTP(*address) as client:
            client.sendmail("a@example.com", ["b@example.org"], POST)
    (envelope,) = up.handler.messages
    assert envelope.original_content.endswith(b"\r\n" + POST)
    assert envelope.original_content.startswith(b"Received: from ")
    assert (tmp_path / "spool").is_dir() and _spool_files(tmp_path / "spool") == []


def test_a_spooled_post_is_queued_for_mailman_as_a_small_one_is(mm: MailmanEnv, tmp_path: Path):
    server = MailmanProxy(
        ("127.0.0.1", 0),
        None,
        mailman=mm.mailman,
        spool_threshold=THRESHOLD,
        spool_memory=0,
        spool_dir=tmp_path / "spool",
    )
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.sendmail("alice@example.org", ["test@example.com"], POST)
    ((msg, msgdata),) = mm.drain("in")
    assert msgdata["listid"] == "test.example.com" and msgdata["to_list"] is True
    assert msg.get_payload(decode=True) == BODY
    assert msg["Message-ID"] == "<big@example.org>" and msg["X-MailFrom"] == "alice@example.org"
    assert msg.original_size > len(POST)  # with mmgate's Received: line
    assert (tmp_path / "spool").is_dir() and _spool_files(tmp_path / "spool") == []


def test_a_spooled_post_reaches_a_remote_mailman_over_lmtp(mm: MailmanEnv, rest: str, tmp_path):  # noqa: F811
    with mm.runner("lmtp:0:1", mm.lmtp_port):
        server = MailmanProxy(
            ("127.0.0.1", 0),
            None,
            mailman=remote(mm, rest),
            spool_threshold=THRESHOLD,
            spool_memory=0,
            spool_dir=tmp_path / "spool",
        )
        with serving(server) as address, smtplib.SMTP(*address) as client:
            client.sendmail("alice@example.org", ["test@example.com"], POST)
        mm.wait_for_queue(1)
    ((msg, _),) = mm.drain("in")
    assert msg.get_payload(decode=True) == BODY
    assert (tmp_path / "spool").is_dir() and _spool_files(tmp_path / "spool") == []


def test_data_beyond_the_memory_budget_is_452_4_3_1(tmp_path: Path):
    server = Recorder(
        ("127.0.0.1", 0),
        None,
        spool_threshold=THRESHOLD,
        spool_memory=0,
        memory_budget=THRESHOLD,
        spool_dir=tmp_path / "spool",
    )
    with serving(server) as address, RawClient(address) as one, RawClient(address) as two:
        for c in (one, two):
            c.reply()
            for line in ("EHLO a", "MAIL FROM:<a@example.com>", "RCPT TO:<b@example.org>"):
                assert c.cmd(line)[0] == 250
        assert one.cmd("DATA")[0] == 354
        assert two.cmd("DATA") == (452, "4.3.1 Insufficient system storage, try again later")
        assert one.cmd(b"hello\r\n.")[0] == 250  # the budget comes back
        assert two.cmd("DATA")[0] == 354
        assert two.cmd(b"hello\r\n.")[0] == 250
    assert len(server.messages) == 2


def test_a_spool_that_cannot_be_written_is_452_and_nothing_is_delivered(tmp_path: Path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("in the way")
    server = Recorder(
        ("127.0.0.1", 0), None, spool_threshold=THRESHOLD, spool_memory=0, spool_dir=not_a_dir
    )
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.org")
        assert client.data(POST) == (452, b"4.3.1 Insufficient system storage, try again later")
        assert client.noop()[0] == 250  # the session goes on
        assert (
            client.sendmail("a@example.com", ["b@example.org"], b"Subject: small\r\n\r\nx\r\n")
            == {}
        )
    assert [len(m["data"]) for m in server.messages] == [len(b"Subject: small\n\nx")]


def test_within_the_memory_pool_a_large_message_never_touches_the_disk(tmp_path: Path):
    spool = tmp_path / "spool"
    server = Recorder(
        ("127.0.0.1", 0),
        None,
        spool_threshold=THRESHOLD,
        spool_memory=8 * THRESHOLD * 64,
        spool_dir=spool,
    )
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.sendmail("a@example.com", ["b@example.org"], POST)
    assert server.messages[0]["data"] == POST[:-2].replace(b"\r\n", b"\n")
    assert not spool.exists()
    assert server.spool_memory.used == 0  # all given back


def test_beyond_the_memory_pool_a_message_spills_to_disk_whole(tmp_path: Path):
    spool = tmp_path / "spool"
    server = Recorder(
        ("127.0.0.1", 0),
        None,
        spool_threshold=THRESHOLD,
        spool_memory=3 * THRESHOLD,
        spool_dir=spool,
    )
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.sendmail("a@example.com", ["b@example.org"], POST)
    assert server.messages[0]["data"] == POST[:-2].replace(b"\r\n", b"\n")
    assert spool.is_dir() and _spool_files(spool) == []
    assert server.spool_memory.used == 0


def test_a_streamed_message_past_its_own_memory_share_goes_to_disk_whole(tmp_path: Path):
    spool = tmp_path / "spool"
    with Upstream() as up:
        server = PureProxy(("127.0.0.1", 0), up.address, spool_threshold=THRESHOLD, spool_dir=spool)
        # room for the whole message in the pool, but not within one message's share
        server.spool_memory = MemoryPool(len(POST) * 4, each=len(POST) // 2)
        with serving(server) as address, smtplib.SMTP(*address) as client:
            client.sendmail("a@example.com", ["b@example.org"], POST)
    (envelope,) = up.handler.messages
    assert envelope.original_content.endswith(b"\r\n" + POST)
    assert spool.is_dir() and _spool_files(spool) == []  # it was spilled, and removed
    assert server.spool_memory.used == 0


def test_a_message_read_whole_stays_whole_in_memory_past_its_share(tmp_path: Path):
    """process_message takes the message whole: kept so (while the pool has
    room) it is handed over as it was written, never spooled."""
    spool = tmp_path / "spool"
    server = Recorder(("127.0.0.1", 0), None, spool_threshold=THRESHOLD, spool_dir=spool)
    server.spool_memory = MemoryPool(len(POST) * 4, each=len(POST) // 2)
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.sendmail("a@example.com", ["b@example.org"], POST)
    assert server.messages[0]["data"] == POST[:-2].replace(b"\r\n", b"\n")
    assert not spool.exists()  # no spool file was ever made
    assert server.spool_memory.used == 0  # what it held is given back
