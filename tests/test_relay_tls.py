"""TLS from the relay to its upstream: Postfix's may, encrypt and verify.

The upstream is aiosmtpd with a certificate from a CA the test makes
(trustme); what it records says whether each message came over TLS.
"""

from __future__ import annotations

import smtplib
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mmgate import PureProxy
from mmgate.relay.upstream import UpstreamTLS
from tests.harness import serving
from tests.upstream import free_port

POST = b"From: a@example.org\r\nSubject: up\r\n\r\nhello\r\n"


class TLSRecorder:
    def __init__(self) -> None:
        self.arrived: list[bool] = []  # one per message: over TLS?

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.arrived.append(session.ssl is not None)
        return "250 2.0.0 OK"


class TLSUpstream:
    """aiosmtpd on 127.0.0.1, offering STARTTLS with ``context`` (if any)."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        self.handler = TLSRecorder()
        self.port = free_port()
        tls_context = context

        class _Controller(Controller):
            def factory(self) -> SMTP:
                return SMTP(self.handler, hostname="upstream.test", tls_context=tls_context)

        self.controller = _Controller(self.handler, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> TLSUpstream:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def upstream_context(ca: trustme.CA, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("upstream.test", "127.0.0.1").configure_cert(context)
    if maximum is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            context.maximum_version = maximum
    return context


def relay(upstream_port: int, tls: UpstreamTLS) -> tuple[int, Any]:
    """One message through a PureProxy with ``tls`` (PureProxy opens the
    upstream at MAIL): MAIL's reply code and text if it was refused, else
    250 and the reply to the message."""
    proxy = PureProxy(("127.0.0.1", 0), ("127.0.0.1", upstream_port), upstream_tls=tls)
    with serving(proxy) as address, smtplib.SMTP(*address) as client:
        client.ehlo()
        code, text = client.mail("a@example.org")
        if code != 250:
            return code, text
        assert client.rcpt("b@example.org")[0] == 250
        return code, client.data(POST)


def test_may_encrypts_when_the_upstream_offers_starttls(ca):
    with TLSUpstream(upstream_context(ca)) as upstream:
        code, (data_code, _) = relay(upstream.port, UpstreamTLS("may"))
    assert (code, data_code) == (250, 250)
    assert upstream.handler.arrived == [True]


def test_may_goes_on_in_plaintext_when_nothing_is_offered():
    with TLSUpstream(None) as upstream:
        code, (data_code, _) = relay(upstream.port, UpstreamTLS("may"))
    assert (code, data_code) == (250, 250)
    assert upstream.handler.arrived == [False]


def test_may_falls_back_to_plaintext_when_the_handshake_fails(ca):
    # an upstream that speaks nothing newer than TLS 1.1: no handshake with us
    with TLSUpstream(upstream_context(ca, maximum=ssl.TLSVersion.TLSv1_1)) as upstream:
        code, (data_code, _) = relay(upstream.port, UpstreamTLS("may"))
    assert (code, data_code) == (250, 250)
    assert upstream.handler.arrived == [False]


def test_encrypt_without_starttls_is_a_temporary_refusal():
    with TLSUpstream(None) as upstream:
        code, text = relay(upstream.port, UpstreamTLS("encrypt"))
    assert (code, text[:5]) == (451, b"4.7.5")
    assert upstream.handler.arrived == []


def test_encrypt_takes_a_certificate_it_cannot_verify(ca):
    with TLSUpstream(upstream_context(trustme.CA())) as upstream:
        code, (data_code, _) = relay(upstream.port, UpstreamTLS("encrypt"))
    assert (code, data_code) == (250, 250)
    assert upstream.handler.arrived == [True]


def test_verify_needs_a_certificate_the_ca_vouches_for_with_the_right_name(ca, tmp_path: Path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with TLSUpstream(upstream_context(ca)) as upstream:
        good = relay(upstream.port, UpstreamTLS("verify", str(ca_file), "upstream.test"))
        wrong_name = relay(upstream.port, UpstreamTLS("verify", str(ca_file), "other.test"))
        system_store = relay(upstream.port, UpstreamTLS("verify"))  # trustme's CA is not in it
    assert good[0] == 250 and good[1][0] == 250
    assert wrong_name[0] == 451 and wrong_name[1][:5] == b"4.7.5"
    assert system_store[0] == 451 and system_store[1][:5] == b"4.7.5"
    assert upstream.handler.arrived == [True]
