"""CHUNKING and BINARYMIME (RFC 3030): BDAT framed in the core, relayed as BDAT."""

from __future__ import annotations

import asyncio
import smtplib

from mmgate import PureProxy
from tests.harness import RawClient, Recorder, serving
from tests.upstream import ScriptedServer, Upstream


def _replies(client: RawClient, count: int) -> list[int]:
    return [client.reply()[0] for _ in range(count)]


def in_transaction(client: RawClient) -> None:
    """Greeting, EHLO, MAIL and RCPT, each accepted."""
    client.reply()
    client.cmd("EHLO me.example")
    assert client.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert client.cmd("RCPT TO:<b@example.org>")[0] == 250


def bdat(client: RawClient, data: bytes, *, last: bool = False) -> tuple[int, str]:
    """One BDAT command and its chunk; the reply."""
    client.send(b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data)
    return client.reply()


def test_chunks_make_one_message_and_each_is_acknowledged():
    server = Recorder(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as client:
        client.reply()
        assert "CHUNKING" in client.cmd("EHLO me.example")[1].split("\n")
        client.cmd("MAIL FROM:<a@example.org>")
        client.cmd("RCPT TO:<b@example.org>")
        assert bdat(client, b"Subject: x\r\n") == (250, "2.0.0 12 octets received")
        assert bdat(client, b"\r\n.hello\r\n", last=True)[0] == 250  # a dot is text
    assert server.messages[0]["data"] == b"Subject: x\n\n.hello"


def test_pipelined_chunks_and_commands_are_answered_in_order():
    server = Recorder(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as client:
        client.reply()
        client.cmd("EHLO me.example")
        # octets that look like commands inside a chunk are message text
        client.send(
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
            b"BDAT 12\r\nRSET\r\nQUIT\r\n"
            b"BDAT 0 LAST\r\nNOOP\r\n"
        )
        assert _replies(client, 5) == [250, 250, 250, 250, 250]
    assert server.messages[0]["data"] == b"RSET\nQUIT"


def test_a_refused_chunk_is_still_read_and_never_run_as_commands():
    server = Recorder(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as client:
        client.reply()
        client.cmd("EHLO me.example")
        client.send(b"MAIL FROM:<a@example.org>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
        assert _replies(client, 3) == [250, 503, 250]  # no RCPT yet; QUIT was data
        assert client.cmd("RCPT TO:<b@example.org>")[0] == 250
    assert server.messages == []


def test_a_message_over_the_size_limit_is_refused_and_the_session_goes_on():
    server = Recorder(("127.0.0.1", 0), None, data_size_limit=10)
    with serving(server) as address, RawClient(address) as client:
        in_transaction(client)
        assert bdat(client, b"12345678")[0] == 250
        code, text = bdat(client, b"12345678", last=True)
        assert (code, text[:5]) == (552, "5.3.4")
        assert client.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert server.messages == []


def test_rset_abandons_the_chunks_and_data_or_mail_cannot_interleave():
    server = Recorder(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as client:
        in_transaction(client)
        assert bdat(client, b"old")[0] == 250
        assert client.cmd("DATA")[0] == 503
        assert client.cmd("MAIL FROM:<c@example.org>")[0] == 503
        assert client.cmd("RSET")[0] == 250
        client.cmd("MAIL FROM:<a@example.org>")
        client.cmd("RCPT TO:<b@example.org>")
        assert bdat(client, b"new\r\n", last=True)[0] == 250
    assert [m["data"] for m in server.messages] == [b"new"]


def test_a_bdat_size_that_cannot_be_read_ends_the_session():
    server = Recorder(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as client:
        in_transaction(client)
        assert client.cmd("BDAT many LAST")[0] == 501
        assert client.reply()[0] == 421
        assert client.closed()


def test_binarymime_needs_bdat():
    server = Recorder(("127.0.0.1", 0), None)
    with serving(server) as address, RawClient(address) as client:
        client.reply()
        assert "BINARYMIME" in client.cmd("EHLO me.example")[1].split("\n")
        assert client.cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME")[0] == 250
        client.cmd("RCPT TO:<b@example.org>")
        assert client.cmd("DATA")[0] == 503
        assert bdat(client, b"\x00\x01\r\n", last=True)[0] == 250


def test_a_large_chunked_message_is_spooled_and_arrives_whole(tmp_path):
    server = Recorder(
        ("127.0.0.1", 0), None, spool_threshold=1024, spool_memory=0, spool_dir=tmp_path
    )
    body = b"".join(b"line %05d of a chunked message\r\n" % n for n in range(4000))
    with serving(server) as address, RawClient(address) as client:
        in_transaction(client)
        half = len(body) // 2
        assert bdat(client, body[:half])[0] == 250
        assert bdat(client, body[half:], last=True)[0] == 250
    assert server.messages[0]["data"] == body[:-2].replace(b"\r\n", b"\n")
    assert list(tmp_path.iterdir()) == []  # the spool file is gone


class ChunkingUpstream(ScriptedServer):
    """Offers CHUNKING and BINARYMIME; keeps every BDAT chunk."""

    extensions = ("CHUNKING", "BINARYMIME", "8BITMIME")

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    async def on_command(
        self,
        verb: str,
        arg: str,
        text: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if verb != "BDAT":
            return False
        self.chunks.append(await reader.readexactly(int(arg.split()[0])))
        writer.write(b"250 2.0.0 ok\r\n")
        return True


def test_the_relay_sends_bdat_to_an_upstream_with_chunking():
    message = b"Subject: up\r\n\r\n.a line with a dot\r\n"
    with ChunkingUpstream() as upstream:
        proxy = PureProxy(("127.0.0.1", 0), ("127.0.0.1", upstream.port))
        with serving(proxy) as address, smtplib.SMTP(*address) as client:
            client.sendmail("a@example.org", ["b@example.org"], message)
    assert "DATA" not in upstream.commands
    (chunk,) = upstream.chunks
    assert chunk.endswith(b"\r\n\r\n.a line with a dot\r\n")  # raw: not dot-stuffed
    assert chunk.startswith(b"Received: ")


def test_a_binarymime_message_goes_to_an_upstream_that_takes_it():
    with ChunkingUpstream() as upstream:
        proxy = PureProxy(("127.0.0.1", 0), ("127.0.0.1", upstream.port))
        with serving(proxy) as address, RawClient(address) as client:
            client.reply()
            client.cmd("EHLO me.example")
            assert client.cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME")[0] == 250
            client.cmd("RCPT TO:<b@example.org>")
            assert bdat(client, b"\x00\xff\r\n\x01\r\n", last=True)[0] == 250
    assert any(c.endswith("BODY=BINARYMIME") for c in upstream.commands if c.startswith("MAIL"))
    assert upstream.chunks[0].endswith(b"\x00\xff\r\n\x01\r\n")


def test_a_binarymime_message_to_an_upstream_without_it_is_refused_at_mail():
    with Upstream() as upstream:  # aiosmtpd: no CHUNKING, no BINARYMIME
        proxy = PureProxy(("127.0.0.1", 0), upstream.address)
        with serving(proxy) as address, RawClient(address) as client:
            client.reply()
            client.cmd("EHLO me.example")
            code, text = client.cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME")
            assert (code, text[:5]) == (554, "5.6.3")
            # and a chunked message without it goes there with DATA, dot-stuffed
            client.cmd("MAIL FROM:<a@example.org>")
            client.cmd("RCPT TO:<b@example.org>")
            assert bdat(client, b"\r\n.dotted line\r\n", last=True)[0] == 250
    content = upstream.handler.messages[0].original_content or b""
    assert content.endswith(b"\r\n\r\n.dotted line\r\n")
