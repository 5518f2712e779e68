"""Message text kept in a file while it arrives, so memory stays bounded.

The framer hands a large message out in chunks of whole lines (see
:mod:`mmgate.smtp.framing`); the channel appends them here, under the
server's spool directory, and delivery reads the file back in blocks: into
Mailman's queue entry, upstream, over LMTP. The file holds the message as
the framer produced it (dot-unstuffed, line endings per the policy). It is
transient: nothing is acknowledged from it (the 250 comes only when the
copies are durably handed off), so it is never fsynced, and it is removed
when its transaction ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK = 256 * 1024


class SpoolFile:
    def __init__(self, directory: str | Path) -> None:
        Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="msg-", suffix=".eml", dir=directory)
        self.path = path
        self.size = 0
        self._fd: int | None = fd

    def write(self, data: bytes) -> None:
        assert self._fd is not None, "written after finish()"
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self.size += len(data)

    def finish(self) -> None:
        """The whole message is in: no more writes."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self) -> bytes:
        """The whole text, for code that wants it in memory (process_message)."""
        return Path(self.path).read_bytes()

    def blocks(self, size: int = BLOCK, *, start: int = 0) -> Iterator[bytes]:
        with open(self.path, "rb", buffering=0) as f:
            f.seek(start)
            while block := f.read(size):
                yield block

    def remove(self) -> None:
        self.finish()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass
class Spooled:
    """A message whose text is in a spool file: ``head`` (in memory: trace
    headers, or a header block plugins edited) then the file from
    ``offset``. What process_message gets as ``data`` on servers that
    stream (``SMTPServer.takes_spooled``)."""

    head: bytes
    spool: SpoolFile
    offset: int = 0

    @property
    def size(self) -> int:
        return len(self.head) + self.spool.size - self.offset

    def with_head(self, head: bytes) -> Spooled:
        """The same message with ``head`` put before it (a Received: line)."""
        return Spooled(head + self.head, self.spool, self.offset)

    def blocks(self, size: int = BLOCK) -> Iterator[bytes]:
        if self.head:
            yield self.head
        yield from self.spool.blocks(size, start=self.offset)

    def read(self) -> bytes:
        """All of it in memory: for code that wants bytes (smtpd's API)."""
        return b"".join(self.blocks())

    def is_ascii(self) -> bool:
        return all(block.isascii() for block in self.blocks())

    def header_block(self, limit: int = 1024 * 1024) -> bytes:
        """Up to and including the CRLF that ends the header (at most ``limit``)."""
        seen = b""
        for block in self.blocks():
            seen += block
            end = seen.find(b"\r\n\r\n")
            if end >= 0:
                return seen[: end + 2]
            if len(seen) >= limit:
                break
        return seen[:limit]

    def stuffed(self, size: int = BLOCK) -> Iterator[bytes]:
        """The wire form for DATA, a block at a time (RFC 5321 4.5.2: a line
        starting with a dot gets another), the end marker last. A dot at a
        block's start is stuffed when the block before ended a line."""
        at_line_start = True
        for block in self.blocks(size):
            stuffed = block.replace(b"\n.", b"\n..")
            if at_line_start and stuffed[:1] == b".":
                stuffed = b"." + stuffed
            at_line_start = block.endswith(b"\n")
            yield stuffed
        yield b".\r\n" if at_line_start else b"\r\n.\r\n"
