"""A real Postfix for the tests: Debian's package, an instance of its own.

``postfix -c DIR start`` with a configuration directory, queue and log made
here, listening only on a 127.0.0.1 port given by the test (never port 25,
never the system's instance), and stopped by the PID of its master. Its
log goes to a file (``maillog_file``) that the tests read.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

#: Postfix's internal services, none chrooted, and no other listener.
MASTER_CF = """\
{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available() -> bool:
    return shutil.which("postfix") is not None and os.geteuid() == 0


class Postfix:
    """One Postfix instance in a directory of its own (config, queue, data,
    log), listening on 127.0.0.1:``port``."""

    def __init__(self, port: int, settings: dict[str, str]) -> None:
        # Postfix's daemons run as the postfix user: its directories must be
        # reachable by it, which pytest's own and Mailman's temporary
        # directories (root's, 0700) are not; hence /tmp itself.
        self.root = root = Path(tempfile.mkdtemp(prefix="mmgate-postfix-", dir="/tmp"))
        root.chmod(0o755)
        self.port = port
        self.config = root / "etc"
        self.queue = root / "queue"
        self.log = root / "postfix.log"
        # explicit modes: Mailman, initialized in the test process, sets a
        # umask (007) that would keep the postfix user out
        for d in (self.config, self.queue, root / "data"):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        shutil.chown(root / "data", "postfix")
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mx.postfix.test",
            "mydomain": "postfix.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.1/32",
            "maillog_file": str(self.log),
            "maillog_file_prefixes": str(root),
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "biff": "no",
            "alias_maps": "",
            "local_recipient_maps": "",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            **settings,
        }
        (self.config / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.config / "master.cf").write_text(MASTER_CF.format(port=f"127.0.0.1:{port}"))
        for cf in ("main.cf", "master.cf"):
            (self.config / cf).chmod(0o644)

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self) -> None:
        done = self.postfix("start")
        assert done.returncode == 0, done.stderr + done.stdout
        deadline = time.monotonic() + 20
        while self.master_pid() is None:
            assert time.monotonic() < deadline, "Postfix did not start: " + self.read_log()
            time.sleep(0.1)

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """By the master's PID (it stops its children), then wait for it."""
        pid = self.master_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        """Stop it, and remove everything it had (its queue, its log)."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def read_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def queued(self) -> list[str]:
        """Every message file in Postfix's queues (bounces included)."""
        found = []
        for name in ("maildrop", "incoming", "active", "deferred", "hold", "corrupt"):
            for _, _, files in os.walk(self.queue / name):
                found += files
        return found

    def wait_until_empty(self, timeout: float = 20.0) -> None:
        """Until Postfix's queues hold nothing (a delivered message's file goes
        a moment after the receiving server's 250)."""
        deadline = time.monotonic() + timeout
        while self.queued():
            assert time.monotonic() < deadline, f"still queued: {self.queued()}\n{self.read_log()}"
            time.sleep(0.1)

    def wait_for_log(self, text: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in (log := self.read_log()):
            assert time.monotonic() < deadline, f"not in Postfix's log: {text!r}\n{log}"
            time.sleep(0.1)
        return log
