"""The dnsbl plugin against a real DNS server on 127.0.0.1 (dnslib), never
the internet: listed, not listed, allow-listed, and a failing list."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSServer
from mmgate_plugins.dnsbl import Dnsbl, query_name

from tests.harness import RawClient, Recorder, serving


class Lists(BaseResolver):  # type: ignore[misc]
    """Zones as RFC 5782 lists: ``listed`` names answer 127.0.0.2."""

    def __init__(self, listed: set[str], failing: set[str], slow: set[str]) -> None:
        self.listed = listed
        self.failing = failing
        self.slow = slow
        self.asked: list[str] = []

    def resolve(self, request: Any, handler: Any) -> Any:
        name = str(request.q.qname).rstrip(".")
        self.asked.append(name)
        reply = request.reply()
        zone = name.split(".", 4)[-1]
        if zone in self.slow:
            time.sleep(2)
        if zone in self.failing:
            reply.header.rcode = RCODE.SERVFAIL
        elif name in self.listed and QTYPE[request.q.qtype] == "A":
            reply.add_answer(RR(name, QTYPE.A, rdata=A("127.0.0.2"), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def dns_server(
    listed: set[str],
    failing: set[str] = frozenset(),
    slow: set[str] = frozenset(),  # type: ignore[assignment]
) -> Iterator[tuple[int, Lists]]:
    resolver = Lists(listed, set(failing), set(slow))
    port = _free_udp_port()
    server = DNSServer(resolver, port=port, address="127.0.0.1")
    server.start_thread()
    try:
        yield port, resolver
    finally:
        server.stop()


def _greeting(plugin: Dnsbl) -> tuple[int, str]:
    server = Recorder(("127.0.0.1", 0), None, plugins=[plugin])
    with serving(server) as address, RawClient(address, timeout=10) as c:
        return c.reply()


def test_a_listed_client_is_refused_in_the_greeting():
    with dns_server({"1.0.0.127.bl.test"}) as (port, lists):
        plugin = Dnsbl(zones=["bl.test", "other.test"], nameservers=[f"127.0.0.1:{port}"])
        assert _greeting(plugin) == (
            554,
            "5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test",
        )
    assert set(lists.asked) == {"1.0.0.127.bl.test", "1.0.0.127.other.test"}


def test_an_unlisted_client_is_greeted():
    with dns_server({"2.0.0.127.bl.test"}) as (port, _):
        plugin = Dnsbl(zones=["bl.test"], nameservers=[f"127.0.0.1:{port}"])
        assert _greeting(plugin)[0] == 220


def test_an_allow_list_wins_over_a_block_list():
    with dns_server({"1.0.0.127.bl.test", "1.0.0.127.wl.test"}) as (port, _):
        plugin = Dnsbl(
            zones=["bl.test"], allow_zones=["wl.test"], nameservers=[f"127.0.0.1:{port}"]
        )
        assert _greeting(plugin)[0] == 220


@pytest.mark.parametrize("how", ["servfail", "timeout", "no server"])
def test_a_lookup_failure_never_refuses(how: str):
    listed = {"1.0.0.127.bl.test"}
    with dns_server(
        listed,
        failing={"bl.test"} if how == "servfail" else set(),
        slow={"bl.test"} if how == "timeout" else set(),
    ) as (port, _):
        if how == "no server":
            port = _free_udp_port()
        plugin = Dnsbl(zones=["bl.test"], nameservers=[f"127.0.0.1:{port}"], timeout=0.5)
        assert _greeting(plugin)[0] == 220


def test_query_names_follow_rfc_5782():
    assert query_name("192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    assert query_name("::ffff:192.0.2.99", "bl.test") == "99.2.0.192.bl.test"
    v6 = query_name("2001:db8::1", "bl.test")
    assert v6 is not None and v6.startswith("1.0.0.0.") and v6.endswith(".8.b.d.0.1.0.0.2.bl.test")
    assert query_name("not-an-ip", "bl.test") is None


def test_options_are_checked_when_built():
    with pytest.raises(ValueError, match="give zones"):
        Dnsbl()
    with pytest.raises(ValueError, match="not ADDRESS"):
        Dnsbl(zones=["bl.test"], nameservers=["dns.example:53"])
