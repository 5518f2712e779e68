"""STARTTLS (RFC 3207) and implicit TLS (RFC 8314) on the server side.

Certificates come from a CA the test makes (trustme); clients are Python's
smtplib, a raw TLS socket, and Postfix's posttls-finger.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mmgate import tls
from mmgate.networks import LOOPBACK
from tests.harness import RawClient, Recorder, serving

POST = b"From: a@example.org\r\nSubject: tls\r\n\r\nover TLS\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The server's certificate (with its chain) and key, as PEM files."""
    leaf = ca.issue_cert("mx.test.example", "127.0.0.1")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(str(cert), append=True)
    return cert, key


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def server(cert_files: tuple[Path, Path]) -> Iterator[Recorder]:
    yield Recorder(
        ("127.0.0.1", 0),
        None,
        tls_context=tls.server_context(*cert_files),
        data_size_limit=0,
        fqdn="mx.test.example",
    )


def test_starttls_is_offered_and_the_session_starts_anew_over_tls(server, client_context):
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert client.starttls(context=client_context)[0] == 220
        # RFC 3207 4.2: nothing from before TLS holds: EHLO again, first
        assert client.docmd("MAIL", "FROM:<a@example.org>")[0] == 503
        code, features = client.ehlo()
        assert code == 250 and b"STARTTLS" not in features  # not twice
        assert client.docmd("STARTTLS")[0] == 500
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        client.sendmail("a@example.org", ["b@example.org"], POST)
    assert server.messages[0]["data"] == POST[:-2].replace(b"\r\n", b"\n")


def test_the_received_line_says_esmtps_with_the_tls_version_and_cipher(cert_files, client_context):
    from mmgate import PureProxy
    from tests.upstream import Upstream

    with Upstream() as upstream:
        proxy = PureProxy(
            ("127.0.0.1", 0), upstream.address, tls_context=tls.server_context(*cert_files)
        )
        with serving(proxy) as address, smtplib.SMTP(*address) as client:
            client.starttls(context=client_context)
            client.sendmail("a@example.org", ["b@example.org"], POST)
        content = upstream.handler.messages[0].original_content or b""
    received = content.split(b"\r\n\r\n")[0].decode()
    assert "with ESMTPS id" in received
    assert "(using TLSv1.3 with cipher TLS_" in received or "(using TLSv1.2 with cipher" in received


def test_plaintext_pipelined_after_starttls_is_discarded(server, client_context):
    """The CVE-2011-0411 class: commands sent in plaintext behind STARTTLS
    must not run inside the TLS session."""
    with serving(server) as address, RawClient(address) as raw:
        raw.reply()
        raw.cmd("EHLO attacker.example")
        raw.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\nRCPT TO:<x@example.org>\r\n")
        assert raw.reply()[0] == 220
        assert raw.buf == b""  # no reply to the injected commands came in plaintext
        tls_sock = client_context.wrap_socket(raw.sock, server_hostname="mx.test.example")
        raw.sock = tls_sock
        assert raw.cmd("EHLO victim.example")[0] == 250
        # the injected MAIL never ran: there is no transaction to add to
        assert raw.cmd("RCPT TO:<x@example.org>")[0] == 503
        assert raw.cmd("MAIL FROM:<real@example.org>")[0] == 250


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_before_1_2_is_refused(server, ca):
    with serving(server) as address, RawClient(address) as raw:
        raw.reply()
        raw.cmd("EHLO old.example")
        assert raw.cmd("STARTTLS")[0] == 220
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(old)
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            old.wrap_socket(raw.sock, server_hostname="mx.test.example")


def test_starttls_refusals(server, client_context):
    with serving(server) as address, RawClient(address) as raw:
        raw.reply()
        assert raw.cmd("STARTTLS")[0] == 503  # EHLO first
        raw.cmd("EHLO me.example")
        assert raw.cmd("STARTTLS now")[0] == 501
        raw.cmd("MAIL FROM:<a@example.org>")
        assert raw.cmd("STARTTLS")[0] == 503  # not inside a transaction


def test_a_server_without_a_certificate_does_not_know_starttls():
    plain = Recorder(("127.0.0.1", 0), None)
    with serving(plain) as address, RawClient(address) as raw:
        raw.reply()
        assert "STARTTLS" not in raw.cmd("EHLO me.example")[1]
        assert raw.cmd("STARTTLS")[0] == 500


def test_clients_of_the_required_networks_must_start_tls_before_mail(cert_files, client_context):
    server = Recorder(
        ("127.0.0.1", 0),
        None,
        tls_context=tls.server_context(*cert_files),
        tls_required_networks=LOOPBACK,
    )
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.ehlo()
        code, text = client.docmd("MAIL", "FROM:<a@example.org>")
        assert (code, text[:5]) == (530, b"5.7.0")
        client.starttls(context=client_context)
        client.sendmail("a@example.org", ["b@example.org"], POST)
    assert len(server.messages) == 1


def test_implicit_tls_on_a_second_listener(server, client_context):
    implicit = server.add_listener(("127.0.0.1", 0), implicit_tls=True)
    with serving(server), smtplib.SMTP_SSL(*implicit, context=client_context) as client:
        code, features = client.ehlo()
        assert code == 250 and b"STARTTLS" not in features
        client.sendmail("a@example.org", ["b@example.org"], POST)
    assert len(server.messages) == 1


def test_a_new_certificate_is_used_by_new_sessions_and_old_sessions_go_on(
    server, client_context, ca, tmp_path
):
    other = trustme.CA()
    leaf = other.issue_cert("mx.test.example", "127.0.0.1")
    cert, key = tmp_path / "new-cert.pem", tmp_path / "new-key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    context = server.tls_context
    with serving(server) as address, smtplib.SMTP(*address) as before:
        before.starttls(context=client_context)
        before.ehlo()
        # a bad pair changes nothing
        with pytest.raises(tls.TLSConfigError, match="no such file"):
            tls.reload(context, tmp_path / "missing.pem", key)
        tls.reload(context, cert, key)
        assert before.noop()[0] == 250  # the session in TLS goes on
        with smtplib.SMTP(*address) as after, pytest.raises(ssl.SSLCertVerificationError):
            after.starttls(context=client_context)  # signed by the other CA now
        trusting = ssl.create_default_context()
        other.configure_trust(trusting)
        with smtplib.SMTP(*address) as after:
            assert after.starttls(context=trusting)[0] == 220


def test_the_self_signed_default_is_made_once_with_a_private_key(tmp_path):
    cert, key = tls.ensure_self_signed(tmp_path / "tls", "mx.example.org")
    assert (key.stat().st_mode & 0o777) == 0o600
    first = cert.read_bytes()
    assert tls.ensure_self_signed(tmp_path / "tls", "mx.example.org") == (cert, key)
    assert cert.read_bytes() == first
    tls.server_context(cert, key)  # a usable pair


@pytest.mark.skipif(shutil.which("posttls-finger") is None, reason="needs Postfix's tools")
def test_posttls_finger_sees_a_verified_tls_session(server, ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # Its own (empty) main.cf: a Postfix installed with no configuration, as
    # tests/install_packages.sh leaves it, has none in /etc/postfix.
    config = tmp_path / "postfix"
    config.mkdir()
    (config / "main.cf").write_text("")
    with serving(server) as (host, port):
        done = subprocess.run(
            [
                "posttls-finger",
                "-c",
                "-l",
                "secure",
                "-P",
                str(tmp_path),
                "-C",
                "-F",
                str(ca_file),
                f"[{host}]:{port}",
                "mx.test.example",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "MAIL_CONFIG": str(config)},
        )
    out = done.stdout + done.stderr
    assert "Verified TLS connection established" in out, out


def test_one_tls13_ticket_is_issued_and_it_resumes_the_session(server, client_context):
    """As Postfix's server does: one ticket after a full handshake (OpenSSL
    would send two), and a client that brings it back is resumed."""
    tickets: list[object] = []

    def seen(conn, direction, version, content_type, msg_type, data):  # type: ignore[no-untyped-def]
        if direction == "read" and msg_type == ssl._TLSMessageType.NEWSESSION_TICKET:  # type: ignore[attr-defined]
            tickets.append(data)

    client_context._msg_callback = seen  # type: ignore[attr-defined]
    client_context.maximum_version = ssl.TLSVersion.TLSv1_3
    with serving(server) as address:
        with smtplib.SMTP(*address) as first:
            first.starttls(context=client_context)
            first.ehlo()  # the ticket comes after the handshake: read past it
            assert isinstance(first.sock, ssl.SSLSocket) and first.sock.version() == "TLSv1.3"
            session = first.sock.session
        assert len(tickets) == 1
        with smtplib.SMTP(*address) as second:
            second.ehlo()
            assert second.docmd("STARTTLS")[0] == 220
            second.sock = client_context.wrap_socket(
                second.sock, server_hostname="mx.test.example", session=session
            )
            second.file = None
            assert second.ehlo()[0] == 250
            assert second.sock.session_reused
