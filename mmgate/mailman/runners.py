"""Mailman's own runners for the embedded home, supervised by ``mmgate serve``.

mmgate puts list mail into Mailman's queues; Mailman's runners (in,
pipeline, out, ...) turn it into members' copies. For the embedded default
nothing else would start them, so ``mmgate serve`` runs Mailman's master
(which starts the runners and restarts one that dies) as its child: started
after the gateway is ready, stopped with it (SIGTERM, waited for), and made
to die with it if it is killed (PR_SET_PDEATHSIG). If the master itself
exits, it is started again after a pause that doubles up to a minute.

The master and its runners have a process group of their own, ended whole
when the master stops: a master that takes SIGTERM while it starts its
runners exits without stopping them (seen in the tests of ``mmgate serve``),
and a runner left so would hold Mailman's queues and locks.

Not started: the LMTP runner (mmgate injects; its port stays free), the
REST API and NNTP. A site that runs Mailman itself passes ``--no-runners``
(or ``[mailman] runners = false``); with a named ``mailman.cfg`` or a remote
Mailman they are never started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("mmgate.mailman")

#: Every runner Mailman starts by default, but lmtp, rest and nntp.
RUNNERS = (
    "in",
    "command",
    "bounces",
    "pipeline",
    "out",
    "virgin",
    "archive",
    "digest",
    "retry",
    "task",
)
MAX_PAUSE = 60.0
#: how long runners left behind by their master get to stop on SIGTERM
GROUP_GRACE = 5.0


class MailmanRunners:
    """Mailman's master as a supervised child process."""

    def __init__(
        self,
        config_path: Path,
        *,
        preexec: Callable[[], None] | None = None,
        runners: tuple[str, ...] = RUNNERS,
    ) -> None:
        self.config_path = config_path
        self.preexec = preexec
        self.runners = runners
        self.log_path = config_path.parent / "mailman" / "logs" / "master-output.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def command(self) -> list[str]:
        """Mailman's master, given the runner names. Its ``-r`` option cannot
        be used: Mailman 3.3 hands master the parsed (name, slice, range)
        tuples where it expects names, and master dies; its function takes
        names (config, restartable, force, runners, verbose)."""
        master = (
            "import sys; from mailman.bin.master import main; "
            "main.callback(sys.argv[1], True, True, sys.argv[2:], False)"
        )
        return [sys.executable, "-P", "-c", master, str(self.config_path), *self.runners]

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="mailman-runners", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec,
                process_group=0,
            )
        log.info(
            "Mailman's runners started (master pid %d: %s)", self.proc.pid, " ".join(self.runners)
        )

    def _watch(self) -> None:
        pause = 1.0
        while True:
            proc = self.proc
            assert proc is not None
            code = proc.wait()
            end_group(proc.pid)
            if self._stopping.is_set():
                return
            log.error(
                "Mailman's runners (master) exited with status %s; see %s; starting them "
                "again in %.0f s",
                code,
                self.log_path,
                pause,
            )
            if self._stopping.wait(pause):
                return
            pause = min(pause * 2, MAX_PAUSE)
            self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to the master and its runners, again each second (a
        runner the master forks after the first signal would miss it), until
        the master exits; SIGKILL if it would not go. Then whatever is left
        of the group."""
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(max(min(1.0, deadline - time.monotonic()), 0.0))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    log.error("Mailman's master did not stop in %.0f s: killed", timeout)
                    proc.kill()
                    proc.wait()
                    break
        end_group(proc.pid)
        log.info("Mailman's runners stopped")


def end_group(pgid: int, grace: float = GROUP_GRACE) -> None:
    """End what is left of a process group whose leader has exited:
    SIGTERM, then SIGKILL after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(pgid):
            return
        log.warning("Mailman's runners outlived their master: %s to the rest", sig.name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """A process of the group still runs (a zombie waiting for whoever
    adopted it does not count)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
