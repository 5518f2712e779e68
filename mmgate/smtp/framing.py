"""Line framing for SMTP: command lines, message text after DATA, and
BDAT chunks (RFC 3030).

Why it looks the way it does:

* Every scan is a C-level ``bytes.find``/``rfind``/``count`` over bytes that
  arrived once; no Python loop runs per line (the long-line check advances
  almost a whole text-line limit per step). A 32 MiB message costs a few
  passes over its bytes, never a pass per line.
* Buffers are bounded whatever the client sends: a command line is dropped
  once it passes the frame limit, and a message is dropped (keeping only the
  last four bytes, to see the terminator) once it is refused. The session
  survives both and gets its error reply at the end of the line or message.
* With a ``chunk_size``, a message that grows past it leaves the buffer as
  :class:`MessageChunk` events of whole lines while it arrives, so a
  session holds at most about ``chunk_size`` of it whatever its size; the
  transport writes the chunks to a spool file. Chunks are cut after a LF
  and keep the two octets before the next line in the buffer, so neither
  the end marker nor dot-unstuffing ever depends on where a cut fell.
* The message ends only at CRLF.CRLF (RFC 5321 4.1.1.4). ``\\n.\\n`` or
  ``\\r.\\r`` never end it, so a message cannot smuggle a second one past a
  downstream server that frames differently (the 2023 "SMTP smuggling" class).
* Message text has two readers that give the same results: the Python code
  below (the reference, several C-level passes), and where it was built,
  ``mmgate/smtp/_text.c``, one native pass that can also write smtpd's
  form (LF line endings) at once. tests/test_text_native.py holds them to
  the same text, flags and sizes for any bytes cut anywhere.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from mmgate.smtp import replies
from mmgate.smtp.limits import Limits
from mmgate.smtp.replies import Reply

if TYPE_CHECKING:
    from mmgate.smtp._text import TextReader

_TextReader: type[TextReader] | None
try:
    from mmgate.smtp._text import TextReader as _TextReader
except ImportError:  # not built (no compiler at install): frame in Python
    _TextReader = None

#: The native reader of message text is there and not turned off
#: (``MMGATE_PURE_PYTHON=1`` frames in Python, to compare the two).
NATIVE = _TextReader is not None and not os.environ.get("MMGATE_PURE_PYTHON")

#: readers between messages, for the next one to begin (a reader gives
#: its text away as its message ends, so a free one holds nothing)
_READERS: list[TextReader] = []
_FREE_READERS = 256

_END_OF_DATA = b"\r\n.\r\n"
#: The buffer of every framer with nothing buffered: an idle session holds
#: no buffer of its own (benchmarks/smtpd_path.py counts its octets). Never
#: grown: ``receive_data`` and ``start_data`` put a new buffer in its place;
#: the rest only reads it, or deletes empty slices of it.
_DRAINED = bytearray()
_ANY_LINE_ENDING = re.compile(rb"\r\n|\r|\n")


class BareLinePolicy(Enum):
    """What to do with a bare CR or LF in message text (RFC 5321 2.3.8)."""

    # Members are singletons: hash them by identity, in C (Enum's own
    # __hash__ is a Python function; the native reader's code is looked up
    # by policy at every message).
    __hash__ = object.__hash__

    #: Turn every bare CR or LF into CRLF, as Postfix does; the default.
    NORMALISE = "normalise"
    #: Refuse the message with 550 5.6.0 after its end.
    STRICT = "strict"
    #: Keep the bytes as the client sent them.
    LENIENT = "lenient"


@functools.lru_cache(maxsize=64)
def _frame_limit(limits: Limits) -> int:
    """``limits.frame_line``, one int object for all the sessions with the
    same limits: an int past 256 is an object of its own, 32 octets a
    session (benchmarks/smtpd_path.py counts an idle session's octets)."""
    return limits.frame_line


@dataclass(slots=True, init=False)
class CommandLine:
    """One command line, without its line ending, exactly as received."""

    line: bytes

    def __init__(self, line: bytes) -> None:  # (compiled: see smtp/events.py)
        self.line = line


@dataclass(slots=True)
class LineTooLong:
    """A command line longer than the frame limit arrived and was dropped."""

    length: int


@dataclass(slots=True, init=False)
class MessageData:
    """The text of one message, complete at CRLF.CRLF.

    ``data`` is dot-unstuffed, ends with CRLF unless empty, and has its bare
    line endings handled by the policy. ``error`` is set when the message is
    refused (too big, a long line, a bare line ending under ``strict``); its
    text was then discarded as it arrived and ``data`` is empty.
    """

    data: bytes
    size: int
    error: Reply | None
    bare_line_endings: bool
    long_lines: bool
    #: the message's beginning came before, as MessageChunk events; ``data``
    #: is its last part and ``size`` the whole message's
    chunked: bool
    #: it came in BDAT chunks (RFC 3030): raw octets, line endings untouched
    raw: bool
    #: ``data`` (and the chunks before it) is in smtpd's form: LF line
    #: endings, the last one dropped; ``size`` is still the CRLF form's
    lf: bool

    def __init__(  # (compiled: see smtp/events.py)
        self,
        data: bytes,
        size: int,
        error: Reply | None = None,
        bare_line_endings: bool = False,
        long_lines: bool = False,
        chunked: bool = False,
        raw: bool = False,
        lf: bool = False,
    ) -> None:
        self.data = data
        self.size = size
        self.error = error
        self.bare_line_endings = bare_line_endings
        self.long_lines = long_lines
        self.chunked = chunked
        self.raw = raw
        self.lf = lf


@dataclass(slots=True)
class MessageChunk:
    """Part of a message still arriving: dot-unstuffed, line endings
    handled by the policy, to be appended to what came before."""

    data: bytes


@dataclass(slots=True)
class ChunkReceived:
    """A BDAT chunk that is not the LAST was read whole (RFC 3030 2)."""

    size: int


@dataclass(slots=True)
class ChunkSkipped:
    """The octets of a refused BDAT chunk were read and dropped."""

    size: int


#: (Not frozen, for the cost of building them per line; see smtp/events.py.)
Event = CommandLine | LineTooLong | MessageChunk | MessageData | ChunkReceived | ChunkSkipped


class _Mode(Enum):
    COMMAND = "command"  #: reading command lines
    DATA = "data"  #: reading message text up to CRLF.CRLF
    DRAIN = "drain"  #: the message is refused; dropping it up to CRLF.CRLF
    CHUNK = "chunk"  #: reading the octets of a BDAT chunk (RFC 3030)
    SKIP = "skip"  #: dropping the octets of a refused BDAT chunk


# The modes by module name: on Python 3.11 a member read off an Enum class
# costs about ten times a global (EnumType's ``__getattr__`` keeps the read
# off the interpreter's fast path), and the framer asks at every event.
_COMMAND, _DATA, _DRAIN, _CHUNK, _SKIP = (
    _Mode.COMMAND,
    _Mode.DATA,
    _Mode.DRAIN,
    _Mode.CHUNK,
    _Mode.SKIP,
)


class _Arriving:
    """What the framer knows of the message arriving, by DATA or BDAT: made
    as it begins and dropped as it ends, so that an idle session holds none
    of it (benchmarks/smtpd_path.py counts an idle session's octets)."""

    __slots__ = (
        "bare",
        "bdat",
        "bdat_error",
        "check",
        "consumed",
        "emitted",
        "error",
        "held",
        "last",
        "long",
        "size",
    )

    def __init__(self, check: int = 0, bdat: bytearray | None = None) -> None:
        self.held = 0  # octets of the message ``hold`` allowed
        self.consumed = 0  # message octets that left as chunks, as received
        self.emitted = 0  # the same, as handed out
        self.bare = False
        self.check = check  # start of the first line not yet length-checked
        self.long = False
        self.size = 0  # message octets dropped while draining
        self.error: Reply | None = None
        self.bdat = bdat  # a BDAT message being read (None: a DATA one)
        self.bdat_error: Reply | None = None  # it is refused; its octets are dropped
        self.last = False  # the current chunk is the LAST


class Framer:
    """Splits a byte stream into command lines and messages.

    Feed bytes with :meth:`receive_data`, then call :meth:`next_event` until
    it returns ``None``. After a DATA command has been answered with 354, the
    owner calls :meth:`start_data`; bytes already buffered behind the DATA
    line then count as message text, as they do on the wire.
    """

    __slots__ = (
        "_buf",
        "_chunk_size",
        "_frame_limit",
        "_limits",
        "_message",
        "_mode",
        "_native",
        "_overlong",
        "_policy",
        "_reader",
        "_remaining",
        "_scan",
        "_skipping",
        "hold",
        "lf_form",
    )

    def __init__(
        self,
        limits: Limits | None = None,
        policy: BareLinePolicy = BareLinePolicy.NORMALISE,
        chunk_size: int | None = None,
        *,
        native: bool = NATIVE,
    ) -> None:
        self._limits = limits or Limits()
        self._native = native and _TextReader is not None
        #: the native reader of the message arriving (from a free list:
        #: an idle session holds none), or None: the Python one reads it
        self._reader: TextReader | None = None
        #: hand the next message out in smtpd's form (the native reader
        #: writes it in its one pass; the Python one leaves it to the owner)
        self.lf_form = False
        #: asked, when a message passes ``chunk_size`` more, whether it may
        #: stay whole in memory for that much more (the owner's memory pool
        #: says); refused, the message leaves as chunks from then on
        self.hold: Callable[[int], bool] | None = None
        self._chunk_size = chunk_size
        self._policy = policy
        self._frame_limit = _frame_limit(self._limits)
        self._buf: bytes | bytearray = _DRAINED
        self._mode = _COMMAND
        self._scan = 0  # where the next terminator search starts
        self._overlong = 0  # bytes of a command line dropped so far
        #: the message arriving (None: none is)
        self._message: _Arriving | None = None
        self._remaining = 0  # octets of the current chunk still to come
        self._skipping = 0  # the size of the chunk being dropped

    @property
    def limits(self) -> Limits:
        return self._limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._limits = limits
        self._frame_limit = _frame_limit(limits)

    @property
    def buffered(self) -> int:
        """Bytes held now; bounded by the limits whatever the peer sends."""
        return len(self._buf)

    @property
    def waiting(self) -> bool:
        """Nothing to frame until more bytes come: no buffered octets, and
        not at a BDAT chunk's end (a chunk of size 0 needs none)."""
        if self._buf:
            return False
        mode = self._mode
        return (mode is not _CHUNK and mode is not _SKIP) or self._remaining > 0

    def receive_data(self, data: bytes | bytearray) -> None:
        buf = self._buf
        if buf is _DRAINED:
            assert not _DRAINED, "the shared empty buffer was written to"
            # Kept as received, not copied, until more comes or it must be
            # cut: a command line that fills its segment (a client waiting
            # for each reply sends nothing else) is framed straight from it.
            self._buf = data if type(data) is bytes else bytearray(data)
        else:
            buf = self._own()
            buf += data

    def _own(self) -> bytearray:
        """The buffer as a bytearray of the framer's own, to cut or extend
        in place: the bytes received become one now, if they were kept."""
        buf = self._buf
        if isinstance(buf, bytes):
            buf = self._buf = bytearray(buf)
        return buf

    def _drop(self, octets: int) -> None:
        """The first ``octets`` of the buffer are framed: let them go. Kept
        bytes are not copied whole to cut them (only what is left is), and a
        buffer taken to its end gives way to the shared empty one."""
        buf = self._buf
        if octets == len(buf):
            self._buf = _DRAINED  # (this buffer goes back to the allocator)
        elif isinstance(buf, bytes):
            self._buf = bytearray(memoryview(buf)[octets:])
        else:
            del buf[:octets]

    def discard(self) -> int:
        """Drop every byte received and not yet framed (RFC 3207 4.2: what
        came in plaintext behind STARTTLS); how many were dropped."""
        dropped = len(self._buf) + self._overlong
        self._buf = _DRAINED
        self._scan = self._overlong = 0
        return dropped

    def start_data(self) -> None:
        """Switch to message text. The virtual CRLF is the DATA line's own."""
        if self._native:
            assert _TextReader is not None
            reader = self._reader = _READERS.pop() if _READERS else _TextReader()
            limits = self._limits
            reader.start(
                limits.text_line,
                limits.message_size or 0,
                _POLICY_CODES[self._policy],
                limits.lenient_text_lines,
                self.lf_form,
            )
        elif self._buf is _DRAINED:
            self._buf = bytearray(b"\r\n")
        else:
            self._own()[0:0] = b"\r\n"
        self._mode = _DATA
        self._scan = 0
        self._message = _Arriving(check=2)

    def _holds(self, message: _Arriving, octets: int) -> bool:
        """May ``octets`` of message text (a chunk's worth past what was
        held) stay in memory rather than leave as a chunk?"""
        if message.held + self._chunk_size >= octets:  # type: ignore[operator]
            return True
        if self.hold is not None and message.consumed == 0 and self.hold(octets - message.held):
            message.held = octets
            return True
        return False

    def next_event(self) -> Event | None:
        if self._mode is _COMMAND:
            # a command line: the common case, framed here without a call
            buf = self._buf
            i = buf.find(b"\n", self._scan)
            if i < 0 or self._overlong or i + 1 > self._frame_limit:
                return self._odd_line(i)
            self._scan = 0
            end = i - 1 if i and buf[i - 1] == 13 else i
            # (bytes as received: the line is one slice of them)
            line = buf[:end] if isinstance(buf, bytes) else bytes(buf[:end])
            if i + 1 == len(buf):
                self._buf = _DRAINED  # (the common case, without a call)
            else:
                self._drop(i + 1)
            return CommandLine(line)
        if self._mode is _CHUNK or self._mode is _SKIP:
            return self._next_chunk()
        if self._reader is not None:
            return self._next_native()
        return self._next_message()

    # -- BDAT chunks (RFC 3030) ------------------------------------------
    def start_chunk(self, size: int, last: bool, *, keep: bool = True) -> None:
        """After a BDAT command line: its ``size`` octets come next, raw
        (no dot-stuffing, no end marker). ``keep=False``: the BDAT was
        refused; the octets are read and dropped all the same, so that none
        of them is ever taken for a command."""
        self._remaining = size
        if not keep:
            self._mode = _SKIP
            self._skipping = size
            return
        message = self._message
        if message is None or message.bdat is None:  # the message's first chunk
            message = self._message = _Arriving(bdat=bytearray())
        self._mode = _CHUNK
        message.last = last

    def abort_chunks(self) -> None:
        """Forget a BDAT message (RSET, or its transaction ended)."""
        if self.in_chunks:
            self._message = None

    @property
    def in_chunks(self) -> bool:
        """A BDAT message has begun and not ended."""
        return self._message is not None and self._message.bdat is not None

    def _next_chunk(self) -> Event | None:
        buf = self._own()
        take = min(len(buf), self._remaining)
        if self._mode is _SKIP:
            del buf[:take]
            self._remaining -= take
            if self._remaining:
                return None
            self._mode = _COMMAND
            return ChunkSkipped(self._skipping)
        state = self._message
        assert state is not None
        message = state.bdat
        assert message is not None
        if state.bdat_error is None:
            message += memoryview(buf)[:take]
            limit = self._limits.message_size
            if limit and state.consumed + len(message) > limit:
                state.bdat_error = replies.TOO_MUCH_DATA
        if state.bdat_error is not None:  # refused: counted, not kept
            state.consumed += len(message) if message else take
            message.clear()
        del buf[:take]
        self._remaining -= take
        if self._chunk_size and len(message) > self._chunk_size and state.bdat_error is None:
            data = bytes(message)
            message.clear()
            state.consumed += len(data)
            state.emitted += len(data)
            return MessageChunk(data)
        if self._remaining:
            return None
        self._mode = _COMMAND
        if not state.last:
            return ChunkReceived(state.consumed + len(message))
        data = bytes(message) if state.bdat_error is None else b""
        self._message = None
        return MessageData(
            data,
            state.consumed + len(data),
            state.bdat_error,
            chunked=state.emitted > 0,
            raw=True,
        )

    # -- command lines ---------------------------------------------------
    def _odd_line(self, i: int) -> Event | None:
        """A command line not yet complete (``i`` < 0: no LF buffered), or
        too long (RFC 5321 4.5.3.1.4): dropped as it comes, answered at its
        end."""
        buf = self._own()
        if i < 0:
            if len(buf) > self._frame_limit:
                self._overlong += len(buf)
                buf.clear()
                self._scan = 0
            else:
                self._scan = len(buf)
            return None
        self._scan = 0
        length = self._overlong + i + 1
        self._overlong = 0
        del buf[: i + 1]
        return LineTooLong(length)

    # -- message text, native ---------------------------------------------
    def _next_native(self) -> Event | None:
        """The native reader takes every buffered octet up to the end."""
        reader = self._reader
        assert reader is not None
        buf = self._buf
        message = self._message
        assert message is not None
        end = reader.feed(buf) if buf else -1
        if end < 0:
            self._buf = _DRAINED  # all of it taken (the text is the reader's now)
            if self._chunk_size and not self._holds(message, reader.pending):
                data = reader.take()
                message.held = 0
                message.consumed += len(data)
                return MessageChunk(data)
            return None
        self._drop(end)
        chunked = message.consumed > 0
        self._mode = _COMMAND
        self._message = None
        self._reader = None
        error = reader.error
        if error:  # (a refused message's text was dropped as it came)
            event = MessageData(
                b"", reader.raw - 2, _ERRORS[error], error == _BARE, chunked=chunked
            )
        else:
            event = MessageData(
                reader.take(), reader.size, None, reader.bare, reader.long, chunked, lf=self.lf_form
            )
        if len(_READERS) < _FREE_READERS:
            _READERS.append(reader)  # holds no text now
        return event

    # -- message text, in Python -----------------------------------------
    def _next_message(self) -> Event | None:
        buf = self._own()
        message = self._message
        assert message is not None
        end = buf.find(_END_OF_DATA, self._scan)
        if self._mode is _DRAIN:
            if end < 0:
                keep = min(len(buf), 4)
                message.size += len(buf) - keep
                del buf[: len(buf) - keep]
                self._scan = 0
                return None
            size = message.size + end
            del buf[: end + len(_END_OF_DATA)]
            chunked = message.consumed > 0
            bare = message.error is replies.BARE_LINE_ENDING
            return self._finish(MessageData(b"", size, message.error, bare, chunked=chunked))
        stop = end + 2 if end >= 0 else len(buf)
        limit = self._limits.message_size
        # Before the end, the last two octets may be the end's ".\r": the
        # text is surely too big only past them (refused whatever the cuts).
        if limit and message.consumed + stop - (2 if end >= 0 else 4) > limit:
            return self._refuse(message, replies.TOO_MUCH_DATA)
        if not message.long and self._has_long_line(message, stop):
            message.long = True
            if not self._limits.lenient_text_lines:
                return self._refuse(message, replies.TEXT_LINE_TOO_LONG)
        if end < 0:
            if self._chunk_size and not self._holds(message, len(buf) - 2):
                j = buf.rfind(b"\n", 2)
                if j > 2:
                    return self._chunk(message, j)
            self._scan = max(len(buf) - 4, 0)
            return None
        lead = buf[:2] == b"\r\n"
        data = bytes(memoryview(buf)[2:stop])
        del buf[: end + len(_END_OF_DATA)]
        return self._finish(self._whole(message, data, lead, message.consumed + end - 2))

    def _chunk(self, message: _Arriving, j: int) -> Event | None:
        """Hand out the whole lines in ``buf[2:j+1]``; keep from ``j - 1`` on."""
        buf = self._own()
        lead = buf[:2] == b"\r\n"
        raw = bytes(memoryview(buf)[2 : j + 1])
        del buf[: j - 1]
        message.held = 0
        self._scan = 0
        message.check = max(message.check - (j - 1), 2)
        message.consumed += len(raw)
        data, bare = self._text(raw, lead)
        if bare and self._policy is BareLinePolicy.STRICT:
            return self._refuse(message, replies.BARE_LINE_ENDING)
        message.bare |= bare
        message.emitted += len(data)
        return MessageChunk(data)

    def _refuse(self, message: _Arriving, error: Reply) -> Event | None:
        """Refuse the message being read: drop its text, look for its end."""
        message.error = error
        self._mode = _DRAIN
        message.size = message.consumed - 2  # the two octets kept are not the text's
        self._scan = 0
        return self._next_message()

    def _finish(self, event: MessageData) -> MessageData:
        self._mode = _COMMAND
        self._scan = 0
        self._message = None
        return event

    def _has_long_line(self, message: _Arriving, stop: int) -> bool:
        """Is a text line in ``buf[check:stop]`` over the limit?

        Each step looks for the *last* LF within one limit's width, so a step
        covers nearly a whole limit of bytes, not one line. One octet more
        than the limit is allowed for the dot RFC 5321 4.5.3.1.6 excludes.
        """
        buf = self._buf
        width = self._limits.text_line + 1
        pos = message.check
        while pos + width <= stop:
            j = buf.rfind(b"\n", pos, pos + width)
            if j < 0:
                message.check = pos
                return True
            pos = j + 1
        message.check = pos
        return False

    def _text(self, data: bytes, lead: bool) -> tuple[bytes, bool]:
        """Dot-unstuffed text with its line endings handled, and whether it
        had a bare CR or LF. ``lead``: a CRLF precedes ``data``'s first line."""
        # RFC 5321 4.5.2: drop the first dot of every line that starts with one.
        if lead and data[:1] == b".":
            data = data[1:]
        data = data.replace(b"\r\n.", b"\r\n")
        crlf = data.count(b"\r\n")
        bare = data.count(b"\n") != crlf or data.count(b"\r") != crlf
        if bare and self._policy is BareLinePolicy.NORMALISE:
            data = _ANY_LINE_ENDING.sub(b"\r\n", data)
        return data, bare

    def _whole(self, message: _Arriving, data: bytes, lead: bool, received: int) -> MessageData:
        """The message's last (or only) part. ``received``: the octets of
        text as sent, without the last CRLF (what a refused message reports
        as its size)."""
        chunked = message.consumed > 0
        data, bare = self._text(data, lead)
        bare |= message.bare
        if bare and self._policy is BareLinePolicy.STRICT:
            return MessageData(b"", received, replies.BARE_LINE_ENDING, True, chunked=chunked)
        size = message.emitted + len(data)
        return MessageData(data, size, None, bare, message.long, chunked)


_POLICY_CODES = {
    BareLinePolicy.NORMALISE: 0,
    BareLinePolicy.STRICT: 1,
    BareLinePolicy.LENIENT: 2,
}
_BARE = 3
#: the native reader's error codes
_ERRORS = {
    1: replies.TOO_MUCH_DATA,
    2: replies.TEXT_LINE_TOO_LONG,
    _BARE: replies.BARE_LINE_ENDING,
}


def dot_stuff(data: bytes) -> bytes:
    """The wire form of ``data`` (CRLF lines), terminator included.

    The inverse of what :class:`Framer` does; used by clients of the core
    and by the property tests that check the round trip.
    """
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed[:1] == b".":
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"
