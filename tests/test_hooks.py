"""The hook chain against real SMTP traffic: order, sync and async hooks,
accept / reject / defer, broken plugins, and the server's own final steps."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mmgate import PureProxy
from mmgate.hooks import Message, accept, defer, reject
from mmgate.relay.policy import RelayPolicy
from mmgate.smtp.events import Hello, MailFrom, RcptTo
from tests.harness import RawClient, Recorder, serving
from tests.upstream import Upstream

MESSAGE = b"Subject: hooks\r\nX-Drop: me\r\n\r\nHello.\r\n"


class Trace:
    """Notes every hook it sees, in order, into a shared list."""

    def __init__(self, seen: list[str], tag: str) -> None:
        self.seen = seen
        self.tag = tag

    def hook_connect(self, ctx: Any) -> None:
        self.seen.append(f"{self.tag}:connect:{ctx.client_ip}")

    def hook_helo(self, ctx: Any, hello: Hello) -> None:
        self.seen.append(f"{self.tag}:helo:{hello.name}")

    async def hook_mail(self, ctx: Any, mail: MailFrom) -> None:
        await asyncio.sleep(0)
        self.seen.append(f"{self.tag}:mail:{mail.address}")

    def hook_rcpt(self, ctx: Any, rcpt: RcptTo) -> None:
        self.seen.append(f"{self.tag}:rcpt:{rcpt.address}")

    def hook_data(self, ctx: Any, headers: Any) -> None:
        self.seen.append(f"{self.tag}:data:{headers['Subject']}")

    async def hook_data_post(self, ctx: Any, message: Message) -> None:
        self.seen.append(f"{self.tag}:data_post:{len(message.rcpt_tos)}")

    def hook_disconnect(self, ctx: Any) -> None:
        self.seen.append(f"{self.tag}:disconnect")


def _send(address: tuple[str, int], rcpts: list[str], body: bytes = MESSAGE) -> Any:
    with smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        return client.sendmail("a@example.com", rcpts, body)


def test_hooks_run_in_plugin_order_at_each_step_sync_and_async():
    seen: list[str] = []
    server = Recorder(("127.0.0.1", 0), None, plugins=[Trace(seen, "one"), Trace(seen, "two")])
    with serving(server) as address:
        assert _send(address, ["b@example.org"]) == {}
    assert seen[:12] == [
        "one:connect:127.0.0.1",
        "two:connect:127.0.0.1",
        "one:helo:client.example",
        "two:helo:client.example",
        "one:mail:a@example.com",
        "two:mail:a@example.com",
        "one:rcpt:b@example.org",
        "two:rcpt:b@example.org",
        "one:data:hooks",
        "two:data:hooks",
        "one:data_post:1",
        "two:data_post:1",
    ]
    assert len(server.messages) == 1


class Policy:
    async def hook_rcpt(self, ctx: Any, rcpt: RcptTo) -> Any:
        if rcpt.address.startswith("no@"):
            return reject("553 5.7.1 Not this one")
        if rcpt.address.startswith("later@"):
            await asyncio.sleep(0.05)
            return defer()
        if rcpt.address.startswith("vip@"):
            return accept()
        return None


class Never:
    def hook_rcpt(self, ctx: Any, rcpt: RcptTo) -> Any:
        return reject()


def test_accept_reject_and_defer_are_the_replies_and_accept_skips_later_plugins():
    server = Recorder(("127.0.0.1", 0), None, plugins=[Policy(), Never()])
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        c.cmd("EHLO client.example")
        c.cmd("MAIL FROM:<a@example.com>")
        # pipelined: the async verdict of the second keeps the replies in order
        c.send(b"RCPT TO:<no@example.org>\r\nRCPT TO:<later@example.org>\r\n")
        c.send(b"RCPT TO:<vip@example.org>\r\nRCPT TO:<other@example.org>\r\n")
        assert [c.reply() for _ in range(4)] == [
            (553, "5.7.1 Not this one"),
            (450, "4.7.1 Deferred by policy, try again later"),
            (250, "2.1.5 OK"),
            (550, "5.7.1 Rejected by policy"),
        ]


class Broken:
    def hook_mail(self, ctx: Any, mail: MailFrom) -> Any:
        raise RuntimeError("plugin bug")


def test_a_broken_plugin_gives_451_and_a_log_line_never_a_crash(caplog: Any):
    server = Recorder(("127.0.0.1", 0), None, plugins=[Broken()])
    with (
        caplog.at_level(logging.ERROR, "mmgate.hooks"),
        serving(server) as address,
        RawClient(address) as c,
    ):
        c.reply()
        c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<a@example.com>") == (
            451,
            "4.3.0 Error: local error in processing",
        )
        assert c.cmd("NOOP")[0] == 250  # the session goes on
    messages = [r.getMessage() for r in caplog.records]
    assert any("plugin Broken: hook_mail failed" in m for m in messages)


class WrongThing:
    def hook_rcpt(self, ctx: Any, rcpt: RcptTo) -> Any:
        return "250 OK" if rcpt.address.startswith("wrong@") else None  # not an Outcome

    async def hook_data_post(self, ctx: Any, message: Message) -> Any:
        return reject("450 4.0.0 a temporary code in a rejection")


def test_a_hook_returning_the_wrong_thing_is_451():
    server = Recorder(("127.0.0.1", 0), None, plugins=[WrongThing()])
    with serving(server) as address, RawClient(address) as c:
        c.reply()
        c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<wrong@example.org>")[0] == 451
        assert c.cmd("RCPT TO:<right@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        assert c.cmd(MESSAGE + b".")[0] == 451
    assert server.messages == []


class Gate:
    async def hook_connect(self, ctx: Any) -> Any:
        await asyncio.sleep(0.05)
        return reject("554 5.7.1 Not from you")


def test_connect_refusal_is_the_greeting_and_early_talk_is_not_read():
    server = Recorder(("127.0.0.1", 0), None, plugins=[Gate()])
    with serving(server) as address, RawClient(address) as c:
        c.send(b"EHLO early.example\r\n")  # before the greeting: never answered
        assert c.reply() == (554, "5.7.1 Not from you")
        assert c.closed()


class Edit:
    def hook_data_post(self, ctx: Any, message: Message) -> None:
        message.remove_header("X-Drop")
        message.add_header("X-Seen-By", "edit")


class TakeIt:
    def __init__(self) -> None:
        self.taken: list[bytes] = []

    async def hook_queue(self, ctx: Any, message: Message) -> Any:
        self.taken.append(message.data)
        return accept("250 2.0.0 taken by the plugin")


def test_data_post_edits_reach_delivery_and_a_queue_hook_can_take_the_message():
    server = Recorder(("127.0.0.1", 0), None, plugins=[Edit()])
    with serving(server) as address:
        _send(address, ["b@example.org"])
    assert server.messages[0]["data"] == b"X-Seen-By: edit\nSubject: hooks\n\nHello."
    taker = TakeIt()
    server = Recorder(("127.0.0.1", 0), None, plugins=[Edit(), taker])
    with serving(server) as address, smtplib.SMTP(*address) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.org")
        assert client.data(MESSAGE) == (250, b"2.0.0 taken by the plugin")
    assert server.messages == []
    assert taker.taken == [b"X-Seen-By: edit\r\nSubject: hooks\r\n\r\nHello.\r\n"]


class OpenDoor:
    def hook_rcpt(self, ctx: Any, rcpt: RcptTo) -> Any:
        return accept()


def test_a_plugins_accept_never_skips_relay_control():
    with Upstream() as up:
        probes = up.handler.sessions  # aiosmtpd's own readiness probe counts one
        server = PureProxy(
            ("127.0.0.1", 0),
            up.address,
            relay_policy=RelayPolicy(networks=()),
            plugins=[OpenDoor()],
        )
        with serving(server) as address, smtplib.SMTP(*address) as client:
            client.ehlo("client.example")
            client.mail("a@example.com")
            assert client.rcpt("b@example.org") == (554, b"5.7.1 Relay access denied")
    assert up.handler.sessions == probes  # nothing went upstream


def _mmgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmgate", *args], capture_output=True, text=True, timeout=60
    )


def test_plugins_are_loaded_by_entry_point_and_dotted_path_and_listed_in_order(tmp_path: Path):
    config = tmp_path / "mmgate.toml"
    config.write_text(
        '[[plugins]]\nname = "access"\nsenders = [["spam.example", "REJECT"]]\n'
        '[[plugins]]\nname = "tests.test_hooks:Edit"\n'
        '[[plugins]]\nname = "headers"\nremove = ["X-Drop"]\n'
    )
    done = _mmgate("plugins", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "1. access: connect helo mail rcpt",
        "2. tests.test_hooks:Edit: data_post",
        "3. headers: data_post",
    ]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('name = "nosuch"', "plugins[0]: no plugin named 'nosuch' (installed: "),
        ('name = "access"\nclients = [["300.1.2.3", "OK"]]', "plugins[0] (access): clients:"),
        ('name = "access"\nbogus = 1', "plugins[0] (access):"),
        ('name = "nosuchmodule:Thing"', "plugins[0]: plugin 'nosuchmodule:Thing' cannot be loaded"),
    ],
)
def test_a_bad_plugin_table_is_one_line_naming_file_and_table(
    tmp_path: Path, table: str, message: str
):
    config = tmp_path / "mmgate.toml"
    config.write_text(f"[[plugins]]\n{table}\n")
    done = _mmgate("plugins", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr.startswith(f"mmgate: error: {config}: {message}")
    assert done.stderr.count("\n") == 1
