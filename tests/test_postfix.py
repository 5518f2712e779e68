"""mmgate behind a real Postfix, in the two set-ups docs/gateway.md gives.

* ``lmtp``: Postfix delivers list mail over LMTP to mmgate's LMTP listener
  (in the place of Mailman's LMTP runner); Mailman sends members' copies to
  Postfix.
* ``smtp``: Postfix delivers list mail over SMTP to mmgate's SMTP listener;
  Mailman sends members' copies to mmgate, which relays them to Postfix.

In both, Postfix's ``relay_domains``, ``relay_recipient_maps`` and
``transport_maps`` are mmgate's socketmap tables, so Postfix refuses an
unknown list-domain address itself, at RCPT, and never makes a bounce.
The test client connects from 127.0.0.2, outside Postfix's mynetworks, as
mail from the Internet does.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmgate.gateway import MailmanProxy
from mmgate.lmtp import LMTPGateway
from mmgate.postfix import main_cf
from mmgate.socketmap import SocketmapServer
from mmgate.store import Store
from tests.harness import serving
from tests.mailman_env import MailmanEnv
from tests.postfix import Postfix, available
from tests.upstream import free_port

pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(
        not available(), reason="needs Debian's postfix and root (tests/install_packages.sh)"
    ),
]

REFRESH = 0.5
POST = (
    b"From: alice@example.org\r\nTo: test@example.com\r\nSubject: through postfix\r\n"
    b"Message-ID: <pf-{}@example.org>\r\n\r\nHello, list.\r\n"
)


@dataclass
class Site:
    setup: str
    postfix: Postfix
    gateway: MailmanProxy
    #: where Mailman's outgoing copies go (smtp_port): Postfix, or mmgate
    mailman_smtp_port: int
    store: Store

    def client(self) -> smtplib.SMTP:
        """A client from the Internet: outside Postfix's mynetworks."""
        return smtplib.SMTP("127.0.0.1", self.postfix.port, source_address=("127.0.0.2", 0))


@pytest.fixture(params=["lmtp", "smtp"])
def site(request: pytest.FixtureRequest, mm: MailmanEnv, tmp_path: Path) -> Iterator[Site]:
    setup = request.param
    postfix_port = free_port()
    with ExitStack() as stack:
        upstream = ("127.0.0.1", postfix_port) if setup == "smtp" else None
        store = Store(f"sqlite:///{tmp_path / 'store.db'}")
        gateway = MailmanProxy(
            ("127.0.0.1", 0),
            upstream,
            mailman=mm.mailman,
            refresh_interval=REFRESH,
            var_dir=tmp_path / "var",
            store=store,
        )
        smtp_address = stack.enter_context(serving(gateway))
        if setup == "lmtp":
            lmtp = LMTPGateway(("127.0.0.1", 0), gateway)
            host, port = stack.enter_context(serving(lmtp))
            transport = f"lmtp:[{host}]:{port}"
        else:
            transport = f"smtp:[{smtp_address[0]}]:{smtp_address[1]}"
        socketmap = SocketmapServer(("127.0.0.1", 0), gateway.router, transport=transport)
        _, map_port = stack.enter_context(serving(socketmap))  # type: ignore[arg-type]
        # the lines ``mmgate postfix`` prints (and docs/gateway.md shows)
        recipe = main_cf(("127.0.0.1", map_port))
        postfix = Postfix(
            postfix_port,
            {
                **recipe,
                "relayhost": f"[127.0.0.1]:{mm.capture.port}",
            },
        )
        stack.callback(postfix.remove)
        postfix.start()
        yield Site(
            setup,
            postfix,
            gateway,
            postfix_port if setup == "lmtp" else smtp_address[1],
            store,
        )


def run_runners(mm: MailmanEnv, smtp_port: int) -> None:
    """Mailman's in, pipeline and out runners, with its outgoing host set as
    the site's set-up says."""

    def run() -> None:
        from mailman.config import config
        from mailman.runners.incoming import IncomingRunner
        from mailman.runners.outgoing import OutgoingRunner
        from mailman.runners.pipeline import PipelineRunner
        from mailman.testing.helpers import make_testable_runner

        config.push("postfix-site", f"[mta]\nsmtp_port: {smtp_port}\n")
        try:
            for cls, name in ((IncomingRunner, "in"), (PipelineRunner, "pipeline")):
                make_testable_runner(cls, name).run()
            make_testable_runner(OutgoingRunner, "out").run()
        finally:
            config.pop("postfix-site")

    mm.call(run)


def test_a_post_reaches_mailman_and_members_copies_leave_through_postfix(
    site: Site, mm: MailmanEnv
):
    before = len(mm.capture.messages)
    with site.client() as client:
        client.sendmail("alice@example.org", ["test@example.com"], POST.replace(b"{}", b"1"))
    mm.wait_for_queue(1, timeout=20)
    # Postfix said who the client was (XFORWARD): the Internet client, not Postfix
    deadline = time.monotonic() + 10
    while not (posted := [m for m in site.store.messages(limit=10, offset=0)[1]]):
        assert time.monotonic() < deadline, "nothing in the journal"  # written each second
        time.sleep(0.2)
    assert [m["client"] for m in posted] == ["127.0.0.2"]
    run_runners(mm, site.mailman_smtp_port)
    copies = mm.capture.wait_for(before + 1)[before:]
    assert [c.rcpt_tos for c in copies] == [["alice@example.org"]]
    content = copies[0].original_content
    assert b"Subject: [Test] through postfix" in content
    # the copy went through Postfix on its way out (its Received: line)
    assert b"by mx.postfix.test (Postfix)" in content.split(b"Subject: [Test]")[0]
    site.postfix.wait_until_empty()
    log = site.postfix.read_log()
    if site.setup == "lmtp":
        assert "postfix/lmtp" in log and "status=sent" in log
    assert "postfix/bounce" not in log  # no delivery status notification made


def test_an_unknown_list_domain_address_is_refused_by_postfix_at_rcpt_with_no_bounce(
    site: Site, mm: MailmanEnv
):
    with site.client() as client:
        client.ehlo()
        client.mail("forged@example.org")
        code, text = client.rcpt("nolist@example.com")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt("test@example.com")[0] == 250
        # a domain that is not Mailman's is not relayed for this client
        assert client.rcpt("someone@elsewhere.example")[0] in (454, 554)
        client.rset()
    log = site.postfix.wait_for_log("<nolist@example.com>: Recipient address rejected")
    assert "User unknown in relay recipient table" in log
    time.sleep(1)  # nothing may be queued: no bounce to the (forged) sender
    assert site.postfix.queued() == []
    assert "postfix/bounce" not in log


def test_a_list_created_while_running_is_accepted_within_the_refresh_interval(
    site: Site, mm: MailmanEnv
):
    with site.client() as client:
        client.ehlo()
        client.mail("alice@example.org")
        assert client.rcpt("fresh@example.com")[0] == 550
        client.rset()
    mm.create_list("fresh@example.com")
    try:
        created = time.monotonic()
        while True:
            with site.client() as client:
                client.ehlo()
                client.mail("alice@example.org")
                if client.rcpt("fresh@example.com")[0] == 250:
                    break
            assert time.monotonic() - created < REFRESH * 4 + 2, "not accepted in time"
            time.sleep(0.1)
    finally:
        mm.delete_list("fresh@example.com")


def test_a_stale_directory_gives_postfix_a_temporary_answer(site: Site):
    """Mailman unreadable for too long: Postfix says 4xx, never a wrong 550."""
    router = site.gateway.router
    saved = router.stale_after
    router.stale_after = 1e-9
    try:
        with site.client() as client:
            client.ehlo()
            client.mail("alice@example.org")
            code, _ = client.rcpt("test@example.com")
            assert 400 <= code < 500
            code, _ = client.rcpt("nolist@example.com")
            assert 400 <= code < 500
    finally:
        router.stale_after = saved
