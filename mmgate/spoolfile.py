"""Large message text kept off the session's buffer, so memory stays bounded.

The framer hands a large message out in chunks of whole lines (see
:mod:`mmgate.smtp.framing`); the channel appends them to a
:class:`SpoolFile`, and delivery reads it back in blocks: into Mailman's
queue entry, upstream, over LMTP. The chunks stay in memory while all
spooled messages together fit in the server's :class:`MemoryPool` (so a
few large messages cost no disk I/O); beyond it a spool file spills to
disk, under the server's spool directory. What is spooled is the message
as the framer produced it (dot-unstuffed, line endings per the policy). It
is transient: nothing is acknowledged from it (the 250 comes only when the
copies are durably handed off), so it is never fsynced, and it is removed
when its transaction ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK = 256 * 1024
#: One message keeps at most this much of its spooled text in memory; a
#: larger one goes to disk whole (benchmarks/memory.py: a 24 MiB post held
#: in memory peaked at 4x its size while Mailman's copy was made, on disk
#: under 3x; benchmarks/smtpd_path.py showed no throughput lost to it).
SPOOL_MEMORY_EACH = 4 * 1024 * 1024


class MemoryPool:
    """How much spooled text all sessions of a server may keep in memory,
    and one message at most (``each``): a message past ``each`` goes to
    disk whole, since parsing a message for Mailman and pickling it costs
    about twice its size, and its text held in memory beside them would
    make that three times (benchmarks/memory.py)."""

    def __init__(self, limit: int, each: int = SPOOL_MEMORY_EACH) -> None:
        self.limit = limit
        self.each = each
        self.used = 0

    def take(self, octets: int, held: int = 0, *, whole: bool = False) -> bool:
        """Room for ``octets`` more of a message that keeps ``held`` already.
        ``whole``: it is read whole into memory anyway (process_message takes
        bytes), so the cap on one message does not apply."""
        if self.used + octets > self.limit or (held + octets > self.each and not whole):
            return False
        self.used += octets
        return True

    def give(self, octets: int) -> None:
        self.used -= octets


class SpoolFile:
    """One message's spooled text: in memory while the pool allows, then on
    disk (everything so far is written out at the spill)."""

    def __init__(self, directory: str | Path, pool: MemoryPool | None = None) -> None:
        self.directory = Path(directory)
        self.pool = pool
        self.path: str | None = None
        self.size = 0
        self._fd: int | None = None
        self._chunks: list[bytes] = []
        self._held = 0  # octets taken from the pool

    def write(self, data: bytes) -> None:
        if self.path is None:
            if self.pool is not None and self.pool.take(len(data), self._held):
                self._chunks.append(data)
                self._held += len(data)
                self.size += len(data)
                return
            self._spill()
        assert self._fd is not None, "written after finish()"
        _write_all(self._fd, data)
        self.size += len(data)

    def _spill(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, self.path = tempfile.mkstemp(prefix="msg-", suffix=".eml", dir=self.directory)
        self._fd = fd
        for chunk in self._chunks:
            _write_all(fd, chunk)
        self._release_memory()

    def _release_memory(self) -> None:
        if self.pool is not None and self._held:
            self.pool.give(self._held)
        self._held = 0
        self._chunks = []

    def finish(self) -> None:
        """The whole message is in: no more writes."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read(self) -> bytes:
        """The whole text, for code that wants it in memory (process_message)."""
        if self.path is None:
            return b"".join(self._chunks)
        return Path(self.path).read_bytes()

    def blocks(self, size: int = BLOCK, *, start: int = 0) -> Iterator[bytes]:
        if self.path is None:
            for chunk in self._chunks:
                if start >= len(chunk):
                    start -= len(chunk)
                    continue
                yield chunk[start:] if start else chunk
                start = 0
            return
        with open(self.path, "rb", buffering=0) as f:
            f.seek(start)
            while block := f.read(size):
                yield block

    def remove(self) -> None:
        self.finish()
        held = self._held
        self._release_memory()
        if held:
            give_back_memory()  # a large message's chunks: back to the system
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def libc_function(name: str, *, use_errno: bool = False) -> Callable[..., int] | None:
    """A C library function that Python's os module does not expose
    (glibc's malloc tuning, Linux's syncfs), or None where the C library has
    none; with ``use_errno``, ``ctypes.get_errno()`` tells why a call failed."""
    try:
        function: Callable[..., int] = getattr(ctypes.CDLL(None, use_errno=use_errno), name)
    except (OSError, AttributeError):
        return None
    return function


_MALLOC_TRIM = libc_function("malloc_trim")
_MALLOPT = libc_function("mallopt")
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
#: Blocks at least this big get a mapping of their own.
LARGE_BLOCK = 1024 * 1024


def map_large_blocks(threshold: int = LARGE_BLOCK) -> bool:
    """Give every block of at least ``threshold`` octets its own mapping,
    returned to the system the moment it is freed (glibc's mallopt).

    glibc starts at 128 KiB but, once a large block is freed, raises its
    threshold to that block's size (up to 32 MiB); a large message's text,
    parse and pickle then come from the heap of whichever thread prepared
    it, and a thread's heap is not shrunk by malloc_trim. Measured with
    benchmarks/memory.py: after twelve 24 MiB posts, 28 MiB stayed resident
    in one worker's heap; with a fixed threshold, memory comes back. The
    cost is a fresh mapping per large block, small beside the message's
    own I/O. For a process that serves (``SMTPServer.serve_forever``,
    ``loop``, ``mmgate serve``) where worker threads make large blocks
    (the gateway); elsewhere :func:`keep_large_blocks`. A no-op where
    glibc is absent.
    """
    return _MALLOPT is not None and bool(_MALLOPT(_M_MMAP_THRESHOLD, threshold))


_M_TRIM_THRESHOLD = -1
#: Under keep_large_blocks, blocks below this come from the heap.
KEPT_BLOCK = 64 * 1024 * 1024


def keep_large_blocks(threshold: int = KEPT_BLOCK) -> bool:
    """Let large blocks come from the heap and stay there for the next
    message, until :func:`give_back_memory` (the server calls it once large
    messages stop coming).

    A fresh mapping is filled page by page on first touch: on the machine
    benchmarks/smtpd_path.py ran on, 7 ms for a 10 MiB message, more than
    reading it off the socket takes, so a process that maps each large
    block anew moves large messages at half the speed it could. For a
    process whose large blocks are all made on the event loop's thread:
    the top of a worker thread's heap stays resident whatever malloc_trim
    is asked (see :func:`map_large_blocks`). A no-op where glibc is absent.
    """
    return (
        _MALLOPT is not None
        and bool(_MALLOPT(_M_MMAP_THRESHOLD, threshold))
        and bool(_MALLOPT(_M_TRIM_THRESHOLD, threshold))
    )


def give_back_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim).

    Freed large buffers otherwise stay in the process's heap: after a burst
    of large messages, memory would not come back.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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
