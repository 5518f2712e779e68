"""A real Mailman core for the tests, in a temporary var directory.

Mailman's configuration is global to a process, so one Mailman is created
per test session (see conftest.py), with fast runner polling
(``FAST_RUNNERS``), and a capture SMTP server as its outgoing host so that what
Mailman sends to members can be read back. Queue entries are read with
Mailman's own Switchboard.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from mmgate.mailman.embedded import FAST_RUNNERS, ensure_home
from mmgate.mailman.local import LocalMailman
from tests.harness import wait_for_port
from tests.upstream import free_port

LISTS = (
    "test@example.com",
    "foo-bar@example.com",
    "x-owner@example.com",
    "x@example.com",
    "announce@lists.example.net",
)


class Capture:
    """Mailman's outgoing SMTP host: keeps every message Mailman sends."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[Envelope] = []
        self.arrived = threading.Condition()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        with self.arrived:
            self.messages.append(envelope)
            self.arrived.notify_all()
        return "250 2.0.0 captured"

    def wait_for(self, count: int, timeout: float = 20.0) -> list[Envelope]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)


@dataclass
class MailmanEnv:
    var: Path
    config: Path
    mailman: LocalMailman
    capture: Capture
    lmtp_port: int
    lists: tuple[str, ...] = field(default=LISTS)

    def call(self, fn: Any) -> Any:
        return self.mailman.call(fn)

    def setting(self, key: str) -> str:
        """One ``key: value`` of the generated mailman.cfg."""
        for line in self.config.read_text().splitlines():
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
        raise KeyError(key)

    @contextmanager
    def runner(self, name: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
        """One of Mailman's own runners, started as Mailman starts it."""
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("runner")),
                "-C",
                str(self.config),
                f"--runner={name}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_port(port, proc, f"Mailman's {name} runner")
            yield proc
        finally:
            proc.terminate()
            proc.wait(15)

    def wait_for_queue(self, count: int, timeout: float = 10.0) -> None:
        """Until ``count`` entries are in Mailman's queues (another process writes)."""
        from mailman.config import config

        deadline = time.monotonic() + timeout
        while sum(len(config.switchboards[q].files) for q in ("in", "command", "bounces")) < count:
            assert time.monotonic() < deadline, f"fewer than {count} queue entries"
            time.sleep(0.05)

    def drain(self, queue: str) -> list[tuple[Any, dict[str, Any]]]:
        """Every entry of a Mailman queue, removed: (message, msgdata)."""
        from mailman.config import config

        switchboard = config.switchboards[queue]
        entries = []
        for filebase in switchboard.files:
            msg, msgdata = switchboard.dequeue(filebase)
            switchboard.finish(filebase)
            entries.append((msg, msgdata))
        return entries

    def drain_all(self) -> dict[str, list[tuple[Any, dict[str, Any]]]]:
        return {queue: self.drain(queue) for queue in ("in", "command", "bounces")}

    def create_list(self, fqdn: str) -> None:
        def create() -> None:
            from mailman.app.lifecycle import create_list
            from mailman.config import config

            create_list(fqdn)
            config.db.commit()

        self.call(create)

    def delete_list(self, fqdn: str) -> None:
        def delete() -> None:
            from mailman.app.lifecycle import remove_list
            from mailman.config import config
            from mailman.interfaces.listmanager import IListManager
            from zope.component import getUtility

            remove_list(getUtility(IListManager).get(fqdn))
            config.db.commit()

        self.call(delete)


def make_env(var: Path) -> MailmanEnv:
    capture = Capture()
    capture.controller.start()
    lmtp_port = free_port()
    cfg = ensure_home(
        var, smtp_port=capture.port, lmtp_port=lmtp_port, rest_port=free_port(), extra=FAST_RUNNERS
    )
    mailman = LocalMailman(cfg)
    mailman.start()

    def populate() -> None:
        from mailman.app.lifecycle import create_list
        from mailman.app.membership import add_member
        from mailman.config import config
        from mailman.interfaces.domain import IDomainManager
        from mailman.interfaces.listmanager import IListManager
        from mailman.interfaces.member import DeliveryMode
        from mailman.interfaces.subscriptions import RequestRecord
        from zope.component import getUtility

        domains = getUtility(IDomainManager)
        domains.add("example.com", alias_domain="alias.example")
        domains.add("lists.example.net")
        for fqdn in LISTS:
            mlist = create_list(fqdn)
            mlist.send_welcome_message = False
        test = getUtility(IListManager).get("test@example.com")
        add_member(test, RequestRecord("alice@example.org", "Alice", DeliveryMode.regular, "en"))
        config.db.commit()

    mailman.call(populate)
    return MailmanEnv(var, cfg, mailman, capture, lmtp_port)
