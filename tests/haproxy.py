"""A real HAProxy for the tests: Debian's package, an instance of its own.

Started in the foreground (``-db``) with a configuration the test writes,
listening on a 127.0.0.1 port, and stopped by its PID.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.harness import wait_for_port


def available() -> bool:
    return shutil.which("haproxy") is not None


class HAProxy:
    """``frontend`` on 127.0.0.1:``port`` to one ``server`` line per backend."""

    def __init__(self, port: int, servers: list[str]) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="mmgate-haproxy-"))
        self.config = self.dir / "haproxy.cfg"
        lines = [
            "global",
            "    maxconn 256",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 60s",
            "    timeout server 60s",
            "frontend smtp",
            f"    bind 127.0.0.1:{port}",
            "    default_backend gateways",
            "backend gateways",
            "    balance leastconn",
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
            ["haproxy", "-db", "-f", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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
