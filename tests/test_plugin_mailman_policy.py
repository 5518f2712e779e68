"""mailman_policy against a real Mailman core: a corpus of posts goes
through Mailman's own posting chain for real, and the plugin refuses
exactly the posts Mailman rejects; never one Mailman would accept or hold."""

from __future__ import annotations

import email
import smtplib
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import pytest
from mmgate_plugins.mailman_policy import MailmanPolicy, walk_posting_chain

from mmgate.gateway import MailmanProxy
from tests.harness import serving
from tests.mailman_env import MailmanEnv

LIST = "policy@example.com"
LIST_ID = "policy.example.com"


def _post(sender: str, *, subject: str = "hello", size: int = 0, sender_header: str = "") -> bytes:
    head = f"From: {sender_header or sender}\r\nTo: {LIST}\r\n"
    if subject:
        head += f"Subject: {subject}\r\n"
    body = "A line of text for the list.\r\n" + ("x" * 70 + "\r\n") * (size // 72)
    return (
        head + f"Message-ID: <{abs(hash((sender, subject, size)))}@test>\r\n\r\n" + body
    ).encode()


#: (name, envelope sender, message, what Mailman does with it)
CORPUS = [
    ("member", "member@example.org", _post("member@example.org"), "accept"),
    ("nonmember", "stranger@example.net", _post("stranger@example.net"), "reject"),
    ("allowed nonmember", "friend@example.org", _post("friend@example.org"), "accept"),
    ("big member post", "member@example.org", _post("member@example.org", size=4000), "hold"),
    (
        "big nonmember post",
        "stranger@example.net",
        _post("stranger@example.net", size=4000),
        "reject",
    ),
    ("muted member", "muted@example.org", _post("muted@example.org"), "reject"),
    ("no subject", "member@example.org", _post("member@example.org", subject=""), "hold"),
    (
        "member in From:, stranger in the envelope",
        "stranger@example.net",
        _post("stranger@example.net", sender_header="member@example.org"),
        "accept",
    ),
]


@pytest.fixture
def policy_list(mm: MailmanEnv) -> Iterator[MailmanEnv]:
    def configure() -> None:
        from mailman.app.lifecycle import create_list
        from mailman.app.membership import add_member
        from mailman.config import config
        from mailman.interfaces.action import Action
        from mailman.interfaces.member import DeliveryMode
        from mailman.interfaces.subscriptions import RequestRecord

        mlist = create_list(LIST)
        mlist.send_welcome_message = False
        mlist.default_nonmember_action = Action.reject
        mlist.accept_these_nonmembers = ["friend@example.org"]
        mlist.max_message_size = 1  # KB
        for address in ("member@example.org", "muted@example.org"):
            member = add_member(mlist, RequestRecord(address, "", DeliveryMode.regular, "en"))
            if address.startswith("muted"):
                member.moderation_action = Action.reject
        config.db.commit()

    mm.call(configure)
    try:
        yield mm
    finally:
        mm.delete_list(LIST)
        mm.drain_all()
        for queue in ("virgin", "pipeline"):
            mm.drain(queue)


def _mailman_for_real(list_id: str, data: bytes, mail_from: str) -> str:
    """What Mailman's own chain does with the post: the event it announces."""
    from mailman.config import config
    from mailman.core.chains import process
    from mailman.email.message import Message
    from mailman.interfaces.address import ExistingAddressError
    from mailman.interfaces.chain import ChainEvent
    from mailman.interfaces.listmanager import IListManager
    from mailman.interfaces.usermanager import IUserManager
    from zope.component import getUtility
    from zope.event import subscribers

    seen: list[str] = []

    def capture(event: Any) -> None:
        if isinstance(event, ChainEvent):
            seen.append(type(event).__name__.removesuffix("Event").lower())

    subscribers.append(capture)
    try:
        mlist = getUtility(IListManager).get_by_list_id(list_id)
        msg = email.message_from_bytes(data, Message)
        msg.set_unixfrom(mail_from)
        msg.original_size = len(data)
        for sender in msg.senders:
            with suppress(ExistingAddressError):
                getUtility(IUserManager).create_address(sender)
        process(mlist, msg, {"listid": list_id, "to_list": True}, mlist.posting_chain)
    finally:
        subscribers.remove(capture)
        config.db.abort()
    return seen[-1]


def test_the_plugin_refuses_exactly_what_mailmans_chain_rejects(policy_list: MailmanEnv):
    outcomes = []
    for name, mail_from, data, expected in CORPUS:
        real = policy_list.call(lambda d=data, f=mail_from: _mailman_for_real(LIST_ID, d, f))
        walked, _reasons, _too_big = policy_list.call(
            lambda d=data, f=mail_from: walk_posting_chain(LIST_ID, d, f)
        )
        outcomes.append((name, real, walked))
        assert real == expected, name  # the corpus says what Mailman really does
    for name, real, walked in outcomes:
        assert walked == real, name
    # never a refusal where Mailman accepts or holds, and every rejection caught
    assert {n for n, real, _ in outcomes if real == "reject"} == {
        "nonmember",
        "big nonmember post",
        "muted member",
    }


def _send(address: tuple[str, int], mail_from: str, rcpts: list[str], data: bytes) -> Any:
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        client.mail(mail_from)
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        return client.data(data)


def test_over_smtp_a_post_mailman_would_reject_is_refused_with_its_text(policy_list: MailmanEnv):
    server = MailmanProxy(
        ("127.0.0.1", 0), None, mailman=policy_list.mailman, plugins=[MailmanPolicy()]
    )
    with serving(server) as address:
        code, text = _send(address, "stranger@example.net", [LIST], _post("stranger@example.net"))
        assert code == 550
        assert text.decode().splitlines() == [
            "5.7.1 Your message to the Policy mailing-list was rejected for the following reasons:",
            "5.7.1 The message is not from a list member",
        ]
        assert policy_list.drain("in") == []  # nothing queued: Mailman sends no notice
        assert _send(address, "member@example.org", [LIST], _post("member@example.org"))[0] == 250
        assert len(policy_list.drain("in")) == 1
        # one recipient Mailman would take (a hold, here): the whole message goes in
        mixed = [LIST, "test@example.com"]
        assert (
            _send(address, "stranger@example.net", mixed, _post("stranger@example.net"))[0] == 250
        )
        assert len(policy_list.drain("in")) == 2
