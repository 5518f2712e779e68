"""Mailman's own runners for the embedded home, supervised by ``mmgate serve``.

mmgate puts list mail into Mailman's queues; Mailman's runners (in,
pipeline, out, ...) turn it into members' copies. For the embedded default
nothing else would start them, so ``mmgate serve`` runs Mailman's master
(which starts the runners and restarts one that dies) as its child: started
after the gateway is ready, stopped with it (SIGTERM, waited for), and made
to die with it if it is killed (PR_SET_PDEATHSIG). If the master itself
exits, it is started again after a pause that doubles up to a minute.

Not started: the LMTP runner (mmgate injects; its port stays free), the
REST API and NNTP. A site that runs Mailman itself passes ``--no-runners``
(or ``[mailman] runners = false``); with a named ``mailman.cfg`` or a remote
Mailman they are never started.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
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
        """SIGTERM to the master (it passes it on to the runners), then wait;
        SIGKILL if it would not go."""
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("Mailman's master did not stop in %.0f s: killed", timeout)
            proc.kill()
            proc.wait()
        log.info("Mailman's runners stopped")
