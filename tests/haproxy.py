"""A real HAProxy for the tests: Debian's package, an instance of its own.

Started in the foreground (``-db``) with a configuration the test writes,
listening on a 127.0.0.1 port, and stopped by its PID.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.harness import wait_for_port


def available() -> bool:
    return shutil.which("haproxy") is not None


class HAProxy:
    """``frontend`` on ``bind``:``port`` to one ``server`` line per backend,
    after the ``backend`` lines given; ``prefix`` runs it inside a network
    namespace, where ``ready`` says when it listens."""

    def __init__(
        self,
        port: int,
        servers: list[str],
        *,
        bind: str = "127.0.0.1",
        backend: Sequence[str] = (),
        global_: Sequence[str] = (),
        prefix: Sequence[str] = (),
        ready: Callable[[subprocess.Popen[Any]], None] | None = None,
    ) -> None:
        self.port = port
        self.prefix = list(prefix)
        self.ready = ready
        self.dir = Path(tempfile.mkdtemp(prefix="mmgate-haproxy-"))
        self.config = self.dir / "haproxy.cfg"
        lines = [
            "global",
            "    maxconn 256",
            *(f"    {line}" for line in global_),
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 60s",
            "    timeout server 60s",
            "frontend smtp",
            f"    bind {bind}:{port}",
            "    default_backend gateways",
            "backend gateways",
            "    balance leastconn",
            *(f"    {line}" for line in backend),
            *(f"    server {line}" for line in servers),
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HAProxy:
        check = subprocess.run(
            ["haproxy", "-c", "-f", str(self.config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        self.proc = subprocess.Popen(
            [*self.prefix, "haproxy", "-db", "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if self.ready is not None:
            self.ready(self.proc)
        else:
            wait_for_port(self.port, self.proc, "HAProxy")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> HAProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
