"""A real PostgreSQL for the tests: Debian's package, a cluster of its own.

``initdb`` makes a cluster in a temporary directory; ``postgres`` serves it
in the foreground on one address and port, with its socket in that
directory, and is stopped by its PID. PostgreSQL refuses to run as root, so
as root both run as the ``postgres`` user the package made. ``prefix`` puts
the server inside a network namespace (``ip netns exec NAME``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def _bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4])
    )
    return Path(found[-1]).parent if found else None


def available() -> bool:
    return _bindir() is not None


class PostgreSQL:
    """One cluster, one database ``mmgate`` owned by the role ``mmgate``,
    which connects without a password from ``host`` (a test's network only)."""

    def __init__(self, port: int, host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> None:
        bindir = _bindir()
        assert bindir is not None, "Debian's postgresql is not installed"
        self.bin = bindir
        self.port = port
        self.host = host
        self.prefix = list(prefix)
        self.dir = Path(tempfile.mkdtemp(prefix="mmgate-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "postgres.log"
        # as root: the package's postgres user owns the cluster
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://mmgate@{self.host}:{self.port}/mmgate"

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, user=self._user, capture_output=True, text=True, cwd=self.dir)
        assert done.returncode == 0, f"{argv[0]}: {done.stdout}{done.stderr}"

    def start(self) -> PostgreSQL:
        if not self.data.exists():
            self._run(
                [
                    str(self.bin / "initdb"),
                    "-D", str(self.data),
                    "-U", "mmgate",
                    "--auth=trust",
                    "--no-sync",
                    "--no-instructions",
                ]
            )  # fmt: skip
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 0.0.0.0/0 trust\n")
            created = True
        else:
            created = False
        argv = [
            *self.prefix,
            str(self.bin / "postgres"),
            "-D", str(self.data),
            "-h", self.host,
            "-p", str(self.port),
            "-k", str(self.dir),
        ]  # fmt: skip
        user = self._user
        if self.prefix and user is not None:  # ip netns exec needs root: drop after it
            argv[len(self.prefix) : len(self.prefix)] = [
                "setpriv", "--reuid", user, "--regid", user, "--clear-groups",
            ]  # fmt: skip
            user = None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, user=user, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._wait_ready()
        if created:
            self.database("mmgate")
        return self

    def database(self, name: str) -> str:
        """A new, empty database on this server, and its URL."""
        self._run(
            [str(self.bin / "createdb"), "-h", str(self.dir), "-p", str(self.port),
             "-U", "mmgate", name]
        )  # fmt: skip
        return self.url.rsplit("/", 1)[0] + "/" + name

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"postgres exited: {self.log.read_text()[-2000:]}")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-q", "-h", str(self.dir), "-p", str(self.port)],
                user=self._user,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"postgres not ready: {self.log.read_text()[-2000:]}")

    def stop(self, *, keep: bool = False) -> None:
        """Fast shutdown (SIGINT) of the postmaster; ``keep`` leaves the
        cluster on disk to be started again."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgreSQL:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
