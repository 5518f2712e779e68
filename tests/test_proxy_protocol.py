"""The PROXY protocol (HAProxy v1 and v2): the real client behind a balancer."""

from __future__ import annotations

import ipaddress
import smtplib
import socket

import pytest
from proxyprotocol.result import ProxyResultIPv4, ProxyResultIPv6, ProxyResultLocal
from proxyprotocol.v2 import ProxyProtocolV2

from mmgate import PureProxy
from mmgate.proxyheader import HeaderError, Proxied, parse
from mmgate.relay.policy import RelayPolicy, parse_networks
from tests.haproxy import HAProxy, available
from tests.harness import Recorder, serving
from tests.upstream import Upstream, free_port

POST = b"From: a@example.org\r\nSubject: proxied\r\n\r\nhi\r\n"


def v2(source: str, port: int) -> bytes:
    address = ipaddress.ip_address(source)
    result_class = ProxyResultIPv4 if address.version == 4 else ProxyResultIPv6
    destination = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
    return ProxyProtocolV2().pack(result_class((address, port), (destination, 25)))  # type: ignore[arg-type]


def test_headers_of_both_versions_are_framed_and_parsed():
    line = b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 25\r\n"
    assert parse(line[:10]) is None  # more is needed
    assert parse(line + b"EHLO x\r\n") == Proxied(("198.51.100.7", 5555), len(line))
    header = v2("2001:db8::7", 4444)
    assert parse(header[:20]) is None
    assert parse(header + b"EHLO") == Proxied(("2001:db8::7", 4444), len(header))
    local = ProxyProtocolV2().pack(ProxyResultLocal())
    assert parse(local) == Proxied(None, len(local))  # the balancer's own check
    for garbage in (b"EHLO me\r\n", b"PROXY TCP4 nonsense\r\n", b"X" * 200, b"PROXY " + b"1" * 200):
        with pytest.raises(HeaderError):
            parse(garbage)


def _closed_unanswered(sock: socket.socket) -> bool:
    """Closed (or reset) without one octet of SMTP."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def _connect(address: tuple[str, int], first: bytes) -> socket.socket:
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(first)
    return sock


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_real_client_is_the_one_the_header_names(version):
    server = Recorder(("127.0.0.1", 0), None, proxy_protocol=True)
    header = (
        b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 25\r\n"
        if version == "v1"
        else v2("198.51.100.7", 5555)
    )
    with serving(server) as address:
        # the header and the client's first command in one segment, as it happens
        sock = _connect(address, header + b"EHLO client.example\r\n")
        with sock, sock.makefile("rb") as replies:
            assert replies.readline().startswith(b"220 ")
            assert replies.readline().startswith(b"250-")
            sock.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
            sock.sendall(b"Subject: x\r\n\r\nhi\r\n.\r\nQUIT\r\n")
            tail = replies.read()
        assert b"250 " in tail
    assert server.messages[0]["peer"][0] == "198.51.100.7"


@pytest.mark.parametrize("first", [b"EHLO no-header.example\r\n", b"PROXY GARBAGE\r\n"])
def test_a_missing_or_malformed_header_closes_without_a_greeting(first):
    server = Recorder(("127.0.0.1", 0), None, proxy_protocol=True)
    with serving(server) as address, _connect(address, first) as sock:
        assert _closed_unanswered(sock)


def test_a_header_from_an_untrusted_address_is_never_read():
    server = Recorder(
        ("127.0.0.1", 0),
        None,
        proxy_protocol=True,
        proxy_networks=parse_networks(["10.0.0.0/8"], source="test"),
    )
    line = b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 25\r\n"
    with serving(server) as address, _connect(address, line) as sock:
        assert _closed_unanswered(sock)


def test_the_per_client_cap_counts_real_clients():
    server = Recorder(
        ("127.0.0.1", 0),
        None,
        proxy_protocol=True,
        max_connections_per_client=1,
        per_client_exempt=(),
    )
    with serving(server) as address:
        first = _connect(address, v2("198.51.100.7", 1))
        other = _connect(address, v2("198.51.100.8", 2))
        again = _connect(address, v2("198.51.100.7", 3))
        with first, other, again:
            assert first.recv(1024).startswith(b"220 ")
            assert other.recv(1024).startswith(b"220 ")
            assert again.recv(1024).startswith(b"421 ")


@pytest.mark.servers
@pytest.mark.skipif(not available(), reason="needs Debian's haproxy (tests/install_packages.sh)")
def test_through_a_real_haproxy_the_real_client_drives_relay_control():
    """HAProxy (send-proxy-v2, health checks) in front of a PureProxy that
    trusts only 127.0.0.1: HAProxy's own address would be trusted; the
    client's (127.0.0.2) is not, and the upstream sees it in Received:."""
    policy = RelayPolicy(parse_networks(["127.0.0.1/32"], source="test"))
    with Upstream() as upstream:
        proxy = PureProxy(
            ("127.0.0.1", 0),
            upstream.address,
            relay_policy=policy,
            proxy_protocol=True,
            per_client_exempt=(),
        )
        with serving(proxy) as (host, port):
            front = free_port()
            line = f"gw {host}:{port} send-proxy-v2 check check-send-proxy inter 500ms"
            with HAProxy(front, [line]):
                with smtplib.SMTP("127.0.0.1", front, source_address=("127.0.0.2", 0)) as c:
                    c.ehlo()
                    c.mail("a@example.org")
                    code, text = c.rcpt("b@example.org")
                    assert (code, text[:5]) == (554, b"5.7.1")  # 127.0.0.2 may not relay
                with smtplib.SMTP("127.0.0.1", front, source_address=("127.0.0.1", 0)) as c:
                    c.sendmail("a@example.org", ["b@example.org"], POST)
    content = upstream.handler.messages[0].original_content or b""
    assert b"([127.0.0.1])" in content.split(b"\r\n\r\n")[0]
