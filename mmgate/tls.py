"""TLS for the listeners (RFC 3207 STARTTLS, RFC 8314 implicit TLS).

One :class:`ssl.SSLContext` per server, TLS 1.2 and later only. The
certificate (PEM, with its chain) and key come from files; a reload (SIGHUP)
builds a context from the new files first, so a bad pair changes nothing,
then loads them into the live context: sessions already in TLS keep theirs,
new handshakes get the new certificate. With no certificate configured the
embedded default makes a self-signed one on first start, as Debian's
Postfix does with its snakeoil certificate, so STARTTLS is offered out of
the box (an MX peer encrypts with it even though it cannot verify it).
"""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

MIN_VERSION = ssl.TLSVersion.TLSv1_2


class TLSConfigError(ValueError):
    """A certificate or key that cannot be used; the text names the files."""


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM, leaf first, then its chain) and ``key``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MIN_VERSION
    # One TLS 1.3 session ticket after a full handshake, as Postfix's server
    # issues (OpenSSL's default is two): a client resuming sends back one,
    # and each ticket costs both sides a key derivation, a session's
    # encryption and a record of its own.
    context.num_tickets = 1
    load(context, cert, key)
    return context


def load(context: ssl.SSLContext, cert: str | Path, key: str | Path) -> None:
    for path in (cert, key):
        if not Path(path).is_file():
            raise TLSConfigError(f"{path}: no such file")
    try:
        context.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise TLSConfigError(f"{cert}, {key}: not a certificate and its key ({exc})") from None


def reload(context: ssl.SSLContext, cert: str | Path, key: str | Path) -> None:
    """New certificate and key into the live ``context``, checked first on a
    context of their own so that a bad pair leaves the live one as it was."""
    server_context(cert, key)
    load(context, cert, key)


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """Postfix's words for a session's TLS, for the Received: line:
    ``TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)``."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    if cipher is None:
        return None
    name, _, bits = cipher
    return f"{ssl_object.version()} with cipher {name} ({bits}/{bits} bits)"


def ensure_self_signed(directory: str | Path, hostname: str) -> tuple[Path, Path]:
    """``directory/cert.pem`` and ``key.pem``, made on first use: an ECDSA
    P-256 key (0600; certbot's default key type, and a handshake signature
    far cheaper than RSA's, see benchmarks/tls.py) and a certificate for
    ``hostname`` valid ten years."""
    directory = Path(directory)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem_key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
