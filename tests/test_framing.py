"""The sans-I/O framer alone: no sockets, no event loop."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mmgate.smtp import replies
from mmgate.smtp.framing import (
    BareLinePolicy,
    ChunkReceived,
    ChunkSkipped,
    CommandLine,
    Framer,
    LineTooLong,
    MessageChunk,
    MessageData,
    dot_stuff,
)
from mmgate.smtp.limits import Limits


def events(framer: Framer, *chunks: bytes) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        framer.receive_data(chunk)
        while (event := framer.next_event()) is not None:
            out.append(event)
    return out


def message(
    body: bytes,
    *,
    policy: BareLinePolicy = BareLinePolicy.NORMALISE,
    limits: Limits | None = None,
    split: int = 0,
) -> MessageData:
    framer = Framer(limits, policy)
    framer.start_data()
    chunks = [body] if not split else [body[i : i + split] for i in range(0, len(body), split)]
    got = events(framer, *chunks)
    assert len(got) == 1 and isinstance(got[0], MessageData), got
    return got[0]


def test_command_lines_are_split_at_crlf_and_stripped():
    assert events(Framer(), b"EHLO a\r\nNOOP\r", b"\nQUIT\r\n") == [
        CommandLine(b"EHLO a"),
        CommandLine(b"NOOP"),
        CommandLine(b"QUIT"),
    ]


def test_command_line_over_the_limit_is_dropped_and_reported_at_its_end():
    framer = Framer()
    got = events(framer, b"NOOP " + b"x" * 5000, b"y" * 5000, b"\r\nNOOP\r\n")
    assert isinstance(got[0], LineTooLong) and got[0].length > 10000
    assert got[1] == CommandLine(b"NOOP")


def test_command_buffer_stays_bounded_whatever_the_client_sends():
    framer = Framer()
    for _ in range(1000):
        events(framer, b"x" * 4096)
        assert framer.buffered <= Limits().frame_line + 4096


def test_message_ends_only_at_crlf_dot_crlf_not_at_bare_lf_dot():
    # The SMTP smuggling sequences: none of them ends the message.
    got = message(
        b"a\r\n\n.\nMAIL FROM:<x@y>\r\n\r.\r\r\n.\n\r\n.\r\n", policy=BareLinePolicy.LENIENT
    )
    # "\r\n.\n" is a line that starts with a dot: unstuffed, never an end.
    assert got.data == b"a\r\n\n.\nMAIL FROM:<x@y>\r\n\r.\r\r\n\n\r\n"
    assert got.bare_line_endings


def test_dot_stuffed_lines_are_unstuffed():
    assert message(b"..a\r\nb\r\n..\r\n...c\r\n.\r\n").data == b".a\r\nb\r\n.\r\n..c\r\n"


def test_empty_message_is_empty():
    assert message(b".\r\n").data == b""


def test_terminator_split_across_chunks_is_found():
    for split in range(1, 8):
        assert message(b"line one\r\nline two\r\n.\r\n", split=split).data == (
            b"line one\r\nline two\r\n"
        )


def test_bytes_after_the_terminator_stay_for_the_next_command():
    framer = Framer()
    framer.start_data()
    got = events(framer, b"x\r\n.\r\nQUIT\r\n")
    assert got == [MessageData(b"x\r\n", 3), CommandLine(b"QUIT")]


def test_bare_lf_is_normalised_to_crlf_by_default():
    got = message(b"a\nb\rc\r\n.\r\n")
    assert got.data == b"a\r\nb\r\nc\r\n" and got.bare_line_endings


def test_bare_lf_is_refused_under_strict():
    got = message(b"a\nb\r\n.\r\n", policy=BareLinePolicy.STRICT)
    assert got.error == replies.BARE_LINE_ENDING and got.data == b""


def test_bare_lf_is_kept_under_lenient():
    assert message(b"a\nb\r\n.\r\n", policy=BareLinePolicy.LENIENT).data == b"a\nb\r\n"


def test_text_line_over_1000_octets_is_refused_and_drained():
    framer = Framer()
    framer.start_data()
    got = events(framer, b"x" * 1001 + b"\r\n", b"y" * 100000, b"\r\n.\r\nNOOP\r\n")
    assert isinstance(got[0], MessageData) and got[0].error == replies.TEXT_LINE_TOO_LONG
    assert got[1] == CommandLine(b"NOOP")
    assert framer.buffered == 0


def test_text_line_of_exactly_1000_octets_is_accepted():
    got = message(b"x" * 998 + b"\r\n.\r\n")
    assert got.error is None and not got.long_lines


def test_long_text_line_is_accepted_and_flagged_when_lenient():
    got = message(b"x" * 5000 + b"\r\n.\r\n", limits=Limits(lenient_text_lines=True))
    assert got.error is None and got.long_lines and got.data == b"x" * 5000 + b"\r\n"


def test_message_over_the_size_limit_is_refused_with_bounded_memory():
    framer = Framer(Limits(message_size=10_000))
    framer.start_data()
    peak = 0
    for _ in range(100):
        framer.receive_data(b"y" * 998 + b"\r\n")
        assert framer.next_event() is None
        peak = max(peak, framer.buffered)
    assert peak < 12_000
    got = events(framer, b".\r\n")
    assert isinstance(got[0], MessageData) and got[0].error == replies.TOO_MUCH_DATA


def test_message_of_exactly_the_size_limit_is_accepted():
    assert message(b"a" * 8 + b"\r\n.\r\n", limits=Limits(message_size=10)).error is None


def test_dot_stuff_is_the_wire_form():
    assert dot_stuff(b".a\r\nb") == b"..a\r\nb\r\n.\r\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_any_byte_stream_yields_only_events(chunks: list[bytes]):
    framer = Framer(Limits(message_size=2000))
    for i, chunk in enumerate(chunks):
        framer.receive_data(chunk)
        while (event := framer.next_event()) is not None:
            assert isinstance(event, CommandLine | LineTooLong | MessageData)
            if isinstance(event, CommandLine) and i % 2:
                framer.start_data()
        assert framer.buffered <= 2000 + Limits().frame_line + 600


_lines = st.lists(
    st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(_lines, st.integers(min_value=1, max_value=64))
def test_dot_stuffing_round_trips(lines: list[bytes], split: int):
    text = b"".join(line + b"\r\n" for line in lines)
    got = message(dot_stuff(text), split=split)
    assert got.error is None and got.data == text


def _chunked(
    wire: bytes, *, chunk_size: int, split: int, policy: BareLinePolicy = BareLinePolicy.NORMALISE
) -> tuple[bytes, MessageData, int]:
    """What a framer with ``chunk_size`` hands out for ``wire``: the chunks'
    text joined with the final part, the final event, and the most it held."""
    framer = Framer(Limits(message_size=None, lenient_text_lines=True), policy, chunk_size)
    framer.start_data()
    text, most = b"", 0
    final = None
    for i in range(0, len(wire), split):
        framer.receive_data(wire[i : i + split])
        most = max(most, framer.buffered)
        while (event := framer.next_event()) is not None:
            if isinstance(event, MessageChunk):
                text += event.data
            else:
                assert isinstance(event, MessageData)
                final = event
    assert final is not None
    return text + final.data, final, most


_text_lines = st.lists(
    st.sampled_from([b"", b".", b"..", b".x", b"a line", b"x" * 90, b"bare\nlf", b"cr\ronly"]),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    _text_lines,
    st.integers(min_value=4, max_value=200),
    st.integers(min_value=1, max_value=97),
    st.sampled_from(list(BareLinePolicy)),
)
def test_a_chunked_message_is_the_message_whatever_the_cuts(
    lines: list[bytes], chunk_size: int, split: int, policy: BareLinePolicy
):
    wire = dot_stuff(b"".join(line + b"\r\n" for line in lines))
    whole = message(wire, policy=policy, limits=Limits(message_size=None, lenient_text_lines=True))
    text, final, most = _chunked(wire, chunk_size=chunk_size, split=split, policy=policy)
    assert final.error == whole.error
    if whole.error is None:
        assert text == whole.data
        assert final.size == whole.size
        assert final.bare_line_endings == whole.bare_line_endings
    # what it holds is bounded by the chunk size, a line and one read
    assert most <= chunk_size + 2 + 90 + 8 + split


def test_a_large_message_never_sits_whole_in_the_framer():
    line = b"y" * 78 + b"\r\n"
    wire = dot_stuff(line * 100_000)  # 8 MB
    text, final, most = _chunked(wire, chunk_size=256 * 1024, split=65536)
    assert final.chunked and final.size == len(line) * 100_000
    assert text == line * 100_000
    assert most < 256 * 1024 + 2 * 65536


def test_a_chunked_message_over_the_size_limit_is_refused_and_drained():
    framer = Framer(Limits(message_size=100_000), chunk_size=10_000)
    framer.start_data()
    wire = dot_stuff((b"z" * 70 + b"\r\n") * 3000)  # 216 kB
    got = events(framer, *(wire[i : i + 4096] for i in range(0, len(wire), 4096)))
    chunks = [e for e in got if isinstance(e, MessageChunk)]
    final = got[-1]
    assert chunks and sum(len(c.data) for c in chunks) <= 100_000
    assert isinstance(final, MessageData) and final.error == replies.TOO_MUCH_DATA
    assert final.chunked and framer.buffered == 0


def test_drained_framers_share_one_empty_buffer_that_nothing_writes_to():
    """An idle session holds no buffer of its own (benchmarks/smtpd_path.py
    counts its octets): a framer with nothing buffered points at one shared
    empty buffer. Whatever comes next (message text, a BDAT chunk of no
    octets, a refused one, STARTTLS's discard), that buffer stays empty."""
    from mmgate.smtp import framing

    for native in (True, False):
        first, second = Framer(native=native), Framer(native=native)
        assert events(first, b"EHLO a\r\n", b"MAIL FROM:<a@b>\r\n") == [
            CommandLine(b"EHLO a"),
            CommandLine(b"MAIL FROM:<a@b>"),
        ]
        assert events(second, b"NOOP\r\n") == [CommandLine(b"NOOP")]
        assert first._buf is second._buf is framing._DRAINED  # shared, not one each
        assert first.discard() == 0
        first.start_chunk(0, last=False)
        assert isinstance(first.next_event(), ChunkReceived)
        first.start_chunk(0, last=True, keep=False)
        assert isinstance(first.next_event(), ChunkSkipped)
        first.abort_chunks()
        first.start_data()
        assert events(first, b"text\r\n.\r\n") == [MessageData(b"text\r\n", 6)]
        assert events(first, b"QUIT\r\n") == [CommandLine(b"QUIT")]
        assert not framing._DRAINED  # never written


def test_bytes_are_framed_as_received_and_a_callers_bytearray_is_copied():
    """The framer keeps a received ``bytes`` object rather than copying it
    (it cannot change), and cuts it only where a line ends: what follows a
    line, and a partial line, come out whole with the next octets. A
    bytearray it is given may be changed by its owner afterwards, so that
    one is copied."""
    for native in (True, False):
        framer = Framer(native=native)
        assert events(framer, b"NOOP\r\nRSET\r\nQU", b"IT\r\nDATA\r\n") == [
            CommandLine(b"NOOP"),
            CommandLine(b"RSET"),
            CommandLine(b"QUIT"),
            CommandLine(b"DATA"),
        ]
        framer.start_data()
        assert events(framer, b"a\r\n.\r\nNOOP\r\n") == [
            MessageData(b"a\r\n", 3),
            CommandLine(b"NOOP"),
        ]
        given_ = bytearray(b"HELO a\r\nNO")
        framer.receive_data(given_)
        given_[:] = b"XXXXXXXXXXXXXXXX"
        assert framer.next_event() == CommandLine(b"HELO a")
        assert framer.next_event() is None
        assert events(framer, b"OP\r\n") == [CommandLine(b"NOOP")]
