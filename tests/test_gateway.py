"""MailmanProxy against a real Mailman core: verdicts at RCPT time, queue
entries as Mailman's LMTP runner writes them, and nothing half-acknowledged."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mmgate.gateway import MailmanProxy
from mmgate.mailman.local import queue_directory
from mmgate.relay.policy import RelayPolicy
from tests.harness import RawClient, serving
from tests.mailman_env import MailmanEnv
from tests.upstream import Upstream, free_port

POST = (
    b"From: alice@example.org\r\nTo: test@example.com\r\nSubject: hello list\r\n"
    b"Message-ID: <post-1@example.org>\r\n\r\nA post.\r\n"
)


@contextmanager
def gateway(
    mm: MailmanEnv, upstream: tuple[str, int] | None = None, **kwargs: Any
) -> Iterator[tuple[MailmanProxy, RawClient]]:
    kwargs.setdefault("refresh_interval", 0.2)
    server = MailmanProxy(("127.0.0.1", 0), upstream, mailman=mm.mailman, **kwargs)
    with serving(server) as address, RawClient(address) as client:
        assert client.reply()[0] == 220
        assert client.cmd("EHLO client.example")[0] == 250
        yield server, client


def transaction(
    c: RawClient, rcpts: list[str], body: bytes = POST, sender: str = "alice@example.org"
) -> list[tuple[int, str]]:
    out = [c.cmd(f"MAIL FROM:<{sender}>")]
    out += [c.cmd(f"RCPT TO:<{r}>") for r in rcpts]
    if any(code == 250 for code, _ in out[1:]):
        out.append(c.cmd("DATA"))
        out.append(c.cmd(body + b"."))
    else:
        c.cmd("RSET")
    return out


def test_list_post_is_queued_as_mailmans_lmtp_runner_would(mm):
    with gateway(mm) as (_, c):
        replies = transaction(c, ["test@example.com"])
        assert [r[0] for r in replies] == [250, 250, 354, 250]
    ((msg, msgdata),) = mm.drain("in")
    assert msgdata["listid"] == "test.example.com" and msgdata["to_list"] is True
    assert {"original_size", "received_time", "version"} <= set(msgdata)
    assert "subaddress" not in msgdata
    assert msg["X-MailFrom"] == "alice@example.org"
    assert msg["Message-ID"] == "<post-1@example.org>"
    assert msg["Message-ID-Hash"] and msg["Archived-At"] is None
    assert msg["Received"].startswith("from client.example ([127.0.0.1])")
    assert msg.get_unixfrom() == "alice@example.org"
    # the size as received: the post plus mmgate's Received: header (~150 octets)
    assert len(POST) + 100 < msgdata["original_size"] < len(POST) + 300


@pytest.mark.parametrize(
    "address,queue,expected",
    [
        ("test-request@example.com", "command", {"subaddress": "request", "to_request": True}),
        ("test-join@example.com", "command", {"subaddress": "join"}),
        ("test-subscribe@example.com", "command", {"subaddress": "join"}),
        ("test-leave@example.com", "command", {"subaddress": "leave"}),
        ("test-unsubscribe@example.com", "command", {"subaddress": "leave"}),
        ("test-confirm+abc123def@example.com", "command", {"subaddress": "confirm"}),
        ("test-bounces+alice=example.org@example.com", "bounces", {"subaddress": "bounces"}),
        (
            "test-owner@example.com",
            "in",
            {"subaddress": "owner", "to_owner": True, "envsender": "postmaster@localhost"},
        ),
        ("TEST@EXAMPLE.COM", "in", {"to_list": True}),
        ("test+verp@example.com", "in", {"to_list": True}),
    ],
)
def test_every_subaddress_goes_to_mailmans_queue_with_its_msgdata(mm, address, queue, expected):
    with gateway(mm) as (_, c):
        assert transaction(c, [address])[-1][0] == 250
    entries = mm.drain_all()
    assert [q for q, e in entries.items() if e] == [queue]
    ((_, msgdata),) = entries[queue]
    assert msgdata["listid"] == "test.example.com"
    assert {k: msgdata.get(k) for k in expected} == expected


@pytest.mark.parametrize(
    "address,list_id,subaddress",
    [
        ("foo-bar@example.com", "foo-bar.example.com", None),
        ("foo-bar-owner@example.com", "foo-bar.example.com", "owner"),
        ("x-owner@example.com", "x-owner.example.com", None),  # the list wins over the split
        ("x-join@example.com", "x.example.com", "join"),
        ("test@alias.example", "test.example.com", None),  # alias domain -> mail host
        ("announce@lists.example.net", "announce.lists.example.net", None),
    ],
)
def test_hyphens_list_names_like_subaddresses_and_alias_domains(mm, address, list_id, subaddress):
    with gateway(mm) as (_, c):
        assert transaction(c, [address])[-1][0] == 250
    ((_, msgdata),) = [e for entries in mm.drain_all().values() for e in entries]
    assert msgdata["listid"] == list_id and msgdata.get("subaddress") == subaddress


@pytest.mark.parametrize(
    "address",
    [
        "nolist@example.com",
        "test-bogus@example.com",
        "nolist@alias.example",
        "nolist-request@lists.example.net",
    ],
)
def test_unknown_address_in_a_mailman_domain_is_550_5_1_1_at_rcpt(mm, address):
    with gateway(mm) as (_, c):
        replies = transaction(c, [address])
        assert replies[1] == (550, f"5.1.1 No such list or address here: {address}")
    assert not any(mm.drain_all().values())


def test_other_domain_without_upstream_is_451_for_trusted_and_550_for_others(mm, caplog):
    with caplog.at_level("WARNING", "mmgate.relay"), gateway(mm) as (_, c):
        # Mailman's own copies to members come from here: they must wait, not bounce
        assert transaction(c, ["bob@elsewhere.example"])[1] == (
            451,
            "4.3.5 Relaying is not configured here yet (mmgate serve --relay HOST:PORT)",
        )
    assert any("set --relay HOST:PORT" in r.getMessage() for r in caplog.records)
    with gateway(mm, relay_policy=RelayPolicy(networks=())) as (_, c):
        assert transaction(c, ["bob@elsewhere.example"])[1] == (
            550,
            "5.7.1 Relaying is not configured here",
        )


def test_other_domain_from_a_client_that_may_not_relay_is_554_5_7_1(mm):
    with Upstream() as up, gateway(mm, up.address, relay_policy=RelayPolicy(networks=())) as (_, c):
        assert transaction(c, ["bob@elsewhere.example"])[1] == (554, "5.7.1 Relay access denied")


def test_list_only_transaction_never_touches_the_upstream(mm):
    with Upstream() as up, gateway(mm, up.address) as (server, c):
        assert transaction(c, ["test@example.com"])[-1][0] == 250
        assert server.pool is not None and server.pool.connects == 0


def test_mixed_transaction_relays_and_queues_then_answers_250(mm):
    with Upstream() as up, gateway(mm, up.address) as (_, c):
        replies = transaction(
            c, ["test@example.com", "bob@elsewhere.example", "test-owner@example.com"]
        )
        assert [r[0] for r in replies] == [250, 250, 250, 250, 354, 250]
    assert up.handler.messages[0].rcpt_tos == ["bob@elsewhere.example"]
    assert len(mm.drain("in")) == 2


def test_mixed_transaction_upstream_refusing_data_queues_nothing(mm):
    body = POST.replace(b"\r\n\r\n", b"\r\nX-Upstream-Reply: 554\r\n\r\n")
    with Upstream() as up, gateway(mm, up.address) as (_, c):
        replies = transaction(c, ["test@example.com", "bob@elsewhere.example"], body)
        assert replies[-1][0] == 554
    assert not any(mm.drain_all().values())  # the staged list copy was discarded
    assert up.handler.messages == []


def test_mixed_transaction_upstream_down_refuses_only_the_relayed_recipient(mm):
    with gateway(mm, ("127.0.0.1", free_port())) as (_, c):
        replies = transaction(c, ["test@example.com", "bob@elsewhere.example"])
        assert replies[2] == (451, "4.4.1 Upstream unreachable, try again later")
        assert replies[-1][0] == 250
    assert len(mm.drain("in")) == 1


def test_message_without_message_id_gets_one(mm):
    with gateway(mm) as (_, c):
        assert transaction(c, ["test@example.com"], b"Subject: no id\r\n\r\nx\r\n")[-1][0] == 250
    ((msg, _),) = mm.drain("in")
    assert msg["Message-ID"].startswith("<") and msg["Message-ID-Hash"]


def test_bogus_bracketed_message_id_is_repaired_as_mailman_does(mm):
    with gateway(mm) as (_, c):
        body = b"Subject: x\r\nMessage-ID: [abc@example.org]\r\n\r\nx\r\n"
        assert transaction(c, ["test@example.com"], body)[-1][0] == 250
    ((msg, _),) = mm.drain("in")
    assert msg["Message-ID"] == "<abc@example.org>"


def test_message_with_header_defects_is_refused_as_mailman_does(mm):
    with gateway(mm) as (_, c):
        body = b"Subject: x\r\nthis line is not a header\r\n\r\nx\r\n"
        assert transaction(c, ["test@example.com"], body)[-1] == (
            550,
            "5.6.0 Message has defects (refused as Mailman does)",
        )
    assert not any(mm.drain_all().values())


@contextmanager
def broken_directory(path: Path) -> Iterator[None]:
    """``path`` replaced by a file: writing into it fails, even for root."""
    os.rename(path, path.with_name(path.name + ".away"))
    path.write_text("not a directory")
    try:
        yield
    finally:
        path.unlink()
        os.rename(path.with_name(path.name + ".away"), path)


def test_unwritable_queue_is_451_then_service_resumes(mm):
    with gateway(mm) as (_, c):
        with broken_directory(queue_directory("in")):
            assert transaction(c, ["test@example.com"])[-1] == (
                451,
                "4.3.0 Mailman's queue is not available, try again later",
            )
        assert transaction(c, ["test@example.com"])[-1][0] == 250
    assert len(mm.drain("in")) == 1


def test_unwritable_staging_in_a_mixed_transaction_is_451_and_relays_nothing(mm):
    with Upstream() as up, gateway(mm, up.address) as (server, c):
        assert server.mailman.staging_dir is not None
        with broken_directory(server.mailman.staging_dir / "in"):
            assert transaction(c, ["test@example.com", "bob@elsewhere.example"])[-1][0] == 451
        assert up.handler.messages == []
        assert transaction(c, ["test@example.com", "bob@elsewhere.example"])[-1][0] == 250
    assert len(up.handler.messages) == 1 and len(mm.drain("in")) == 1


def test_list_created_and_deleted_while_running_is_routed_within_seconds(mm):
    with gateway(mm) as (_, c):
        assert transaction(c, ["fresh@example.com"])[1][0] == 550
        mm.create_list("fresh@example.com")
        deadline = time.monotonic() + 5
        while transaction(c, ["fresh@example.com"])[1][0] != 250:
            assert time.monotonic() < deadline, "new list not routed within 5 s"
            time.sleep(0.1)
        mm.delete_list("fresh@example.com")
        deadline = time.monotonic() + 5
        while transaction(c, ["fresh@example.com"])[1][0] != 550:
            assert time.monotonic() < deadline, "deleted list still routed after 5 s"
            time.sleep(0.1)


def test_duplicate_recipients_make_one_copy_after_mailmans_normalisation(mm):
    rcpts = ["test@example.com"] * 50 + ["TEST@example.com", "test+x@alias.example"]
    with gateway(mm) as (_, c):
        replies = transaction(c, rcpts)
        assert [code for code, _ in replies[1:-2]] == [250] * len(rcpts)
        assert replies[-1][0] == 250
    assert len(mm.drain("in")) == 1


def test_a_relayed_recipient_given_twice_is_sent_upstream_once(mm):
    with Upstream() as up, gateway(mm, up.address) as (_, c):
        replies = transaction(c, ["b@example.org", "b@EXAMPLE.org", "test@example.com"])
        assert replies[-1][0] == 250
    (envelope,) = up.handler.messages
    assert envelope.rcpt_tos == ["b@example.org"]
    assert len(mm.drain("in")) == 1


@pytest.mark.parametrize(
    "address", ["postmaster", "Postmaster", "postmaster@example.com", "POSTMASTER@localhost"]
)
def test_postmaster_is_accepted_from_anyone_and_kept_in_the_postmaster_mailbox(
    mm, tmp_path: Path, address: str
):
    untrusted = RelayPolicy(networks=())
    with gateway(mm, relay_policy=untrusted, var_dir=tmp_path) as (_, c):
        replies = transaction(c, [address, "test@example.com"])
        assert [code for code, _ in replies] == [250, 250, 250, 354, 250]
        # postmaster in a domain nobody here serves is just another address
        assert transaction(c, ["postmaster@elsewhere.example"])[1][0] == 550
    (copy,) = (tmp_path / "postmaster" / "new").iterdir()
    text = copy.read_bytes()
    assert text.startswith(b"Return-Path: <alice@example.org>\r\nReceived: from client.example")
    assert text.endswith(POST)
    assert len(mm.drain("in")) == 1  # the list copy went in too
    assert not list((tmp_path / "postmaster" / "tmp").iterdir())


def test_postmaster_mail_goes_to_the_configured_address(mm, tmp_path: Path):
    with (
        Upstream() as up,
        gateway(
            mm,
            up.address,
            relay_policy=RelayPolicy(networks=()),
            postmaster="admin@elsewhere.example",
        ) as (_, c),
    ):
        assert transaction(c, ["postmaster"])[-1][0] == 250
    (envelope,) = up.handler.messages
    assert envelope.rcpt_tos == ["admin@elsewhere.example"]


def test_the_embedded_site_owner_is_an_address_the_gateway_delivers(mm, tmp_path: Path):
    assert mm.setting("site_owner") == "postmaster@localhost"
    with gateway(mm, var_dir=tmp_path) as (server, c):
        assert server.router.is_postmaster(mm.setting("site_owner"))
        assert transaction(c, [mm.setting("site_owner")])[-1][0] == 250
    assert len(list((tmp_path / "postmaster" / "new").iterdir())) == 1
