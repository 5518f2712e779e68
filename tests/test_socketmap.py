"""The socketmap tables Postfix asks (socketmap_table(5)), over a real socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from mmgate.gateway import MailmanProxy
from mmgate.socketmap import SocketmapServer, netstring, parse_netstrings
from tests.harness import serving
from tests.mailman_env import MailmanEnv

TRANSPORT = "lmtp:[127.0.0.1]:8024"


@pytest.fixture
def tables(mm: MailmanEnv) -> Iterator[tuple[MailmanProxy, tuple[str, int]]]:
    gateway = MailmanProxy(("127.0.0.1", 0), None, mailman=mm.mailman)
    socketmap = SocketmapServer(("127.0.0.1", 0), gateway.router, transport=TRANSPORT)
    with serving(gateway), serving(socketmap) as address:  # type: ignore[arg-type]
        yield gateway, address


def ask(address: tuple[str, int], *requests: str) -> list[str]:
    """Several requests on one connection, as Postfix reuses it."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"".join(netstring(r) for r in requests))
        buffer, answers = bytearray(), []
        while len(answers) < len(requests):
            chunk = sock.recv(4096)
            assert chunk, "closed before every answer came"
            buffer += chunk
            answers += [a.decode() for a in parse_netstrings(buffer)]
        return answers


def test_lists_domains_and_transport_are_answered_from_the_routing_snapshot(tables):
    _, address = tables
    assert ask(
        address,
        "domains example.com",
        "domains alias.example",
        "domains elsewhere.example",
        "recipients test@example.com",
        "recipients TEST-request@example.com",
        "recipients test-bounces+first.middle.last.name=department.example.edu@example.com",
        "recipients test@alias.example",
        "recipients nolist@example.com",
        "recipients @example.com",
        "recipients someone@elsewhere.example",
        "transport test-join@example.com",
        "transport example.com",
        "transport nolist@example.com",
    ) == [
        "OK example.com",
        "OK alias.example",
        "NOTFOUND ",
        "OK test.example.com",
        "OK test.example.com",
        "OK test.example.com",
        "OK test.example.com",
        "NOTFOUND ",
        "NOTFOUND ",
        "NOTFOUND ",
        f"OK {TRANSPORT}",
        "NOTFOUND ",
        "NOTFOUND ",
    ]


def test_a_stale_directory_is_a_temporary_answer_never_a_wrong_one(tables):
    gateway, address = tables
    gateway.router.stale_after = 1e-9
    answers = ask(address, "recipients test@example.com", "recipients nolist@example.com")
    assert [a.split()[0] for a in answers] == ["TEMP", "TEMP"]


def test_an_unknown_table_is_a_permanent_error_naming_the_tables(tables):
    _, address = tables
    (answer,) = ask(address, "aliases test@example.com")
    assert answer.startswith("PERM ") and "domains, recipients, transport" in answer


def test_a_request_split_across_reads_is_answered_once_whole(tables):
    _, address = tables
    request = netstring("recipients test@example.com")
    with socket.create_connection(address, timeout=5) as sock:
        for i in range(len(request)):
            sock.sendall(request[i : i + 1])
        assert sock.recv(4096) == netstring("OK test.example.com")


@pytest.mark.parametrize("garbage", [b"hello\r\n", b"5:abcdefg", b"99999999:x,", b"3:abc;"])
def test_what_is_not_a_netstring_closes_the_connection(tables, garbage):
    _, address = tables
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(garbage)
        assert sock.recv(4096) == b""  # closed, no answer that could be misread
