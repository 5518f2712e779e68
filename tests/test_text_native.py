"""The native reader of message text (mmgate/smtp/_text.c) against the
Python one in mmgate/smtp/framing.py: the same text, flags, sizes and
refusals for any bytes, cut anywhere, under every policy and limit."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmgate.smtp import framing, replies
from mmgate.smtp.framing import (
    BareLinePolicy,
    CommandLine,
    Framer,
    LineTooLong,
    MessageChunk,
    MessageData,
)
from mmgate.smtp.limits import Limits
from tests.harness import can_build_native


def test_the_native_reader_is_built_wherever_it_can_be():
    """Where a C compiler and Python's headers are, the install built the
    native reader, so the tests below run and are not skipped unseen."""
    if not can_build_native():
        pytest.skip("no C compiler or no Python headers: the Python framer is the one")
    assert framing._TextReader is not None


native = pytest.mark.skipif(framing._TextReader is None, reason="the native reader was not built")

#: octets that make SMTP text interesting, and some that do not
_PIECES = [b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"..", b"a", b"bc", b"x" * 7, b"\r\n.\r\n"]
#: and runs that make text lines near the limit (RFC 5321 4.5.3.1.6: 1000)
_RUNS = [b"x" * 333, b"y" * 499, b"z" * 998]
_WIRE = st.lists(
    st.one_of(st.sampled_from(_PIECES), st.sampled_from(_RUNS), st.binary(max_size=12)),
    max_size=60,
).map(b"".join)


def _events(framer: Framer, wire: bytes, cuts: list[int]) -> list[object]:
    """What the framer hands out for ``wire`` after a 354, read in pieces
    cut at ``cuts``: chunks joined into the message they belong to."""
    framer.start_data()
    out: list[object] = []
    text = b""
    bounds = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    for a, b in itertools.pairwise(bounds):
        framer.receive_data(wire[a:b])
        while (event := framer.next_event()) is not None:
            if isinstance(event, MessageChunk):
                text += event.data
            elif isinstance(event, MessageData):
                out.append((text + event.data, event))
                text = b""
            else:
                out.append(event)
    return out


def _smtpd_form(data: bytes) -> bytes:
    """What the channel makes of the Python reader's text for smtpd."""
    return (data[:-2] if data.endswith(b"\r\n") else data).replace(b"\r\n", b"\n")


def _faults(body: bytes, limits: Limits, policy: BareLinePolicy) -> set[object]:
    """The refusals the text before the first CRLF.CRLF deserves: the
    reply of each fault it has (it gets the one its reader meets first)."""
    wire = b"\r\n" + body
    text = wire[2 : wire.find(b"\r\n.\r\n") + 2]
    faults: set[object] = set()
    if limits.message_size and len(text) > limits.message_size:
        faults.add(replies.TOO_MUCH_DATA)
    lines = text.split(b"\n")
    if not limits.lenient_text_lines and any(len(line) > limits.text_line for line in lines):
        faults.add(replies.TEXT_LINE_TOO_LONG)
    unstuffed = (text[1:] if text[:1] == b"." else text).replace(b"\r\n.", b"\r\n")
    crlf = unstuffed.count(b"\r\n")
    if policy is BareLinePolicy.STRICT and (
        unstuffed.count(b"\r") != crlf or unstuffed.count(b"\n") != crlf
    ):
        faults.add(replies.BARE_LINE_ENDING)
    return faults


@native
@settings(max_examples=600, deadline=None)
@given(
    body=_WIRE,
    tail=st.sampled_from([b"", b"QUIT\r\n", b"NOOP\r\nRSET"]),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    text_line=st.integers(1000, 1003),
    size=st.one_of(st.none(), st.integers(1, 3000)),
    lenient_long=st.booleans(),
    policy=st.sampled_from(list(BareLinePolicy)),
    chunk_size=st.one_of(st.none(), st.integers(1, 700)),
    lf=st.booleans(),
)
def test_native_and_python_readers_agree_on_any_text_cut_anywhere(
    body: bytes,
    tail: bytes,
    cuts: list[int],
    text_line: int,
    size: int | None,
    lenient_long: bool,
    policy: BareLinePolicy,
    chunk_size: int | None,
    lf: bool,
) -> None:
    wire = body + b"\r\n.\r\n" + tail
    limits = Limits(text_line=text_line, message_size=size, lenient_text_lines=lenient_long)
    native = Framer(limits, policy, chunk_size, native=True)
    native.lf_form = lf
    python = Framer(limits, policy, chunk_size, native=False)
    got, want = _events(native, wire, cuts), _events(python, wire, cuts)
    assert len(got) == len(want)
    (text, message), (ref_text, ref) = got[0], want[0]  # type: ignore[misc]
    assert isinstance(message, MessageData) and isinstance(ref, MessageData)
    faults = _faults(body + b"\r\n.\r\n", limits, policy)
    if faults:
        # refused by both, for a fault the text has, with the same size
        # (parts handed out before the fault showed are the owner's to drop)
        assert message.error in faults and ref.error in faults
        assert (message.data, message.size) == (b"", ref.size)
        assert message.bare_line_endings == (message.error is replies.BARE_LINE_ENDING)
        assert ref.bare_line_endings == (ref.error is replies.BARE_LINE_ENDING)
    else:
        assert message.error is None and ref.error is None
        assert text == (_smtpd_form(ref_text) if lf else ref_text)
        assert message.lf == lf and not ref.lf
        assert (message.size, message.bare_line_endings, message.long_lines) == (
            ref.size,
            ref.bare_line_endings,
            ref.long_lines,
        )
    # what follows the end is framed alike: the next commands
    assert got[1:] == want[1:]
    assert all(isinstance(e, CommandLine | LineTooLong) for e in got[1:])


@native
def test_native_reader_holds_no_more_than_a_chunk_and_a_read():
    framer = Framer(Limits(message_size=None), chunk_size=4096, native=True)
    framer.lf_form = True
    framer.start_data()
    line = b"y" * 70 + b"\r\n"
    handed = 0
    for _ in range(2000):
        framer.receive_data(line * 20)
        while (event := framer.next_event()) is not None:
            assert isinstance(event, MessageChunk)
            handed += len(event.data)
        assert framer._reader.pending <= 4096 + len(line) * 20
    framer.receive_data(b".\r\n")
    final = framer.next_event()
    assert isinstance(final, MessageData) and final.chunked and final.lf
    assert handed + len(final.data) == 2000 * 20 * 71 - 1  # LF form, last LF dropped
    assert final.size == 2000 * 20 * len(line)


@native
def test_native_reader_drops_a_refused_message_as_it_arrives():
    framer = Framer(Limits(message_size=1000), native=True)
    framer.start_data()
    for i in range(500):
        framer.receive_data(b"z" * 998 + b"\r\n")
        assert framer.next_event() is None
        # the first line is the limit exactly; from the second, nothing is kept
        assert framer._reader.pending == (1000 if i == 0 else 0) and framer.buffered == 0
    framer.receive_data(b".\r\nQUIT\r\n")
    refused = framer.next_event()
    assert isinstance(refused, MessageData) and refused.error is replies.TOO_MUCH_DATA
    assert refused.size == 500 * 1000 - 2
    assert framer.next_event() == CommandLine(b"QUIT")


@native
def test_a_session_gives_its_reader_back_when_its_message_ends():
    framer = Framer(native=True)
    framer.start_data()
    reader = framer._reader
    framer.receive_data(b"one\r\n.\r\n")
    assert isinstance(framer.next_event(), MessageData)
    assert framer._reader is None  # an idle session holds no reader
    framer.start_data()
    assert framer._reader is reader  # the next message takes it from the free list
    framer.receive_data(b".\r\n")
    assert framer.next_event() == MessageData(b"", 0)
