"""Real servers on real sockets for the tests: no mocks of the network.

``serving(server)`` runs a constructed server on its own event loop in a
thread and closes it gracefully afterwards; ``RawClient`` speaks SMTP byte by
byte where smtplib would hide what is on the wire.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sysconfig
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmgate import SMTPServer, runtime


def can_build_native() -> bool:
    """Are a C compiler and Python's headers here? Then the install must
    have built mmgate's native parts, and a test that finds one missing
    fails rather than letting the comparisons be skipped unseen."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return shutil.which(compiler) is not None and headers.exists()


class Recorder(SMTPServer):
    """Keeps every message it is given, with its options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[dict[str, Any]] = []

    async def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):  # type: ignore[no-untyped-def]
        self.messages.append(
            {"peer": peer, "mailfrom": mailfrom, "rcpttos": rcpttos, "data": data, **kwargs}
        )
        return None


@contextmanager
def serving(server: SMTPServer, close_timeout: float = 2.0) -> Iterator[tuple[str, int]]:
    loop = runtime.loop_factory()()  # the loop mmgate runs on (MMGATE_LOOP)
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5), "server did not start"
    if errors:
        raise errors[0]
    try:
        yield server.address
    finally:
        future = asyncio.run_coroutine_threadsafe(server.close(timeout=close_timeout), loop)
        future.result(close_timeout + 5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def wait_for_port(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 30.0) -> None:
    """Until ``proc`` listens on 127.0.0.1:``port``; fail with its output if it dies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out, err = proc.communicate()
                raise AssertionError(f"{what} did not start: {out!r} {err!r}") from None
            time.sleep(0.05)


class RawClient:
    """A byte-level SMTP client over a real TCP socket."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, str]:
        """Read one whole (possibly multi-line) reply: its code and its lines."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; had {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(x[4:] for x in lines)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        """True when the server has closed the connection (EOF)."""
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
