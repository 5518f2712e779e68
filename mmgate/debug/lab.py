"""The lab: a whole Mailman list round trip on one machine.

The lab writes a Mailman home (a temporary directory unless ``--var-dir``)
whose outgoing SMTP host is the debug server itself, creates the lists and
members asked for, and starts Mailman's own runners (``mailman start``, with
a 0.1 s runner polling, see ``FAST_RUNNERS``). Posts to the lists are injected for real;
what Mailman sends back (copies to members, moderation notices, command
replies, welcome messages) arrives at the debug server and is shown. On exit
the runners are stopped (``mailman stop``) and waited for, so nothing is
left running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mmgate.mailman.embedded import FAST_RUNNERS, ensure_home, free_port
from mmgate.mailman.local import LocalMailman

#: The lab needs no REST API (its gunicorn would also leave a control socket
#: in $HOME) and no NNTP gateway.
LAB_RUNNERS = "\n[runner.rest]\nstart: no\n\n[runner.nntp]\nstart: no\n"


class LabError(Exception):
    """The lab could not be set up; the text says what failed, in one line."""


class Lab:
    def __init__(
        self, var_dir: str | Path | None, lists: list[str], members: list[str], owner: str
    ) -> None:
        self.temporary = var_dir is None
        self.var = Path(var_dir) if var_dir else Path(tempfile.mkdtemp(prefix="mmgate-lab-"))
        self.lists = [name.lower() for name in lists]
        self.members = members
        self.owner = owner
        self.lmtp_port = free_port()
        self.config: Path | None = None
        for name in self.lists:
            if name.count("@") != 1 or not all(name.split("@")):
                raise LabError(f"--list: {name!r} is not NAME@DOMAIN")

    def home(self, smtp_port: int) -> Path:
        """(Re)write the lab's mailman.cfg: its ports follow this run's."""
        (self.var / "mailman.cfg").unlink(missing_ok=True)
        self.config = ensure_home(
            self.var,
            smtp_port=smtp_port,
            lmtp_port=self.lmtp_port,
            rest_port=free_port(),
            extra=FAST_RUNNERS + LAB_RUNNERS,
        )
        return self.config

    def populate(self, mailman: LocalMailman) -> None:
        lists, members, owner = self.lists, self.members, self.owner

        def create() -> None:
            from mailman.app.lifecycle import create_list
            from mailman.app.membership import add_member
            from mailman.config import config
            from mailman.interfaces.domain import IDomainManager
            from mailman.interfaces.listmanager import IListManager
            from mailman.interfaces.member import AlreadySubscribedError, DeliveryMode
            from mailman.interfaces.subscriptions import RequestRecord
            from zope.component import getUtility

            domains = getUtility(IDomainManager)
            manager = getUtility(IListManager)
            for fqdn in lists:
                if domains.get(fqdn.split("@")[1]) is None:
                    domains.add(fqdn.split("@")[1])
                mlist = manager.get(fqdn) or create_list(fqdn, owners=[owner])
                for address in members:
                    with contextlib.suppress(AlreadySubscribedError):
                        add_member(mlist, RequestRecord(address, "", DeliveryMode.regular, "en"))
            config.db.commit()

        mailman.call(create)

    def _mailman(self, *args: str) -> tuple[int, str]:
        """Run a ``mailman`` command; its exit status and the tail of its output.

        Output goes to a file, not a pipe: ``mailman start`` leaves a daemon
        holding the caller's pipes open, and reading them would never end.
        """
        assert self.config is not None
        command = [str(Path(sys.executable).with_name("mailman"))]
        if os.geteuid() == 0:
            command.append("--run-as-root")
        log = self.var / "mailman-command.log"
        with open(log, "w") as out:
            try:
                code = subprocess.run(
                    [*command, "-C", str(self.config), *args],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=120,
                ).returncode
            except subprocess.TimeoutExpired:
                code = -1
        lines = log.read_text(errors="replace").strip().splitlines()
        return code, lines[-1] if lines else ""

    def start_runners(self, timeout: float = 60.0) -> None:
        code, last = self._mailman("start", "--force")
        if code != 0:
            self.stop_runners()
            raise LabError(f"mailman start failed: {last}")
        deadline = time.monotonic() + timeout
        while True:  # the LMTP runner listening means the runners are up
            try:
                socket.create_connection(("127.0.0.1", self.lmtp_port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop_runners()
                    raise LabError(
                        f"Mailman's runners did not start within {timeout:.0f} s; "
                        f"see {self.var / 'mailman' / 'logs'}"
                    ) from None
                time.sleep(0.2)

    def stop_runners(self, timeout: float = 30.0) -> None:
        pid_file = self.var / "mailman" / "master.pid"
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        self._mailman("stop")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)  # the master would not stop: do not leave it

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.var, ignore_errors=True)
