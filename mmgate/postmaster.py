"""The postmaster's mailbox: a Maildir under the var directory.

RFC 5321 4.5.1: a server MUST accept mail for ``postmaster`` (bare, and at
every domain it serves). By default mmgate keeps that mail itself, in
``VAR/postmaster/`` (a Maildir any mail reader opens), so it can never loop
back into the gateway or depend on a relay; ``[smtp] postmaster`` sends it
to an address instead. Copies are written and fsynced into ``tmp/`` first
and renamed into ``new/`` only when the whole transaction can be
acknowledged, as the Mailman copies are.
"""

from __future__ import annotations

import os
import socket
import time
from itertools import count
from pathlib import Path

from mmgate.spoolfile import Spooled

_serial = count()


class Mailbox:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _ready(self) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)

    def stage(self, data: bytes | Spooled) -> Path:
        """Write a copy into tmp/, durably; :meth:`commit` delivers it."""
        self._ready()
        name = f"{time.time_ns()}.M{next(_serial)}P{os.getpid()}.{socket.gethostname()}"
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for block in [data] if isinstance(data, bytes) else data.blocks():
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def commit(self, staged: Path) -> Path:
        """Into new/ with one rename, and the directory synced."""
        final = self.path / "new" / staged.name
        os.rename(staged, final)
        fd = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return final

    @staticmethod
    def discard(staged: Path) -> None:
        staged.unlink(missing_ok=True)
