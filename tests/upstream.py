"""A real upstream SMTP server for relay tests: aiosmtpd, scripted by address.

aiosmtpd is an independent implementation, so these tests also show that
mmgate's relay interoperates with something it did not write. The handler
answers by the address it is given:

* sender ``mail-CODE@...``      -> MAIL gets CODE
* recipient ``rcpt-CODE@...``   -> RCPT gets CODE
* recipient ``multi@...``       -> RCPT gets a three-line 550
* recipient ``slow@...``        -> RCPT answers after ``slow_seconds``
* recipient ``slowdata@...``    -> DATA answers after ``slow_seconds``
* recipient ``drop@...``        -> the connection is closed at the end of DATA
* a message with ``X-Upstream-Reply: CODE`` -> DATA gets CODE
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mmgate.mailman.embedded import free_port as free_port

_CODE = re.compile(r"^(?:mail|rcpt)-(\d{3})@")
_TEXT = {
    421: "4.3.2 Closing",
    450: "4.2.1 Try later",
    451: "4.3.0 Local trouble",
    550: "5.1.1 No such user",
    553: "5.1.8 Sender refused",
    554: "5.7.1 Refused",
}


class ScriptedHandler:
    def __init__(self) -> None:
        self.messages: list[Envelope] = []
        self.sessions = 0
        self.mail_options: list[list[str]] = []
        self.slow_seconds = 2.0

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        self.mail_options.append(list(mail_options))
        m = _CODE.match(address)
        if m:
            code = int(m.group(1))
            return f"{code} {_TEXT[code]}"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        m = _CODE.match(address)
        if m:
            code = int(m.group(1))
            return f"{code} {_TEXT[code]}"
        if address.startswith("multi@"):
            return "550-5.1.1 line one\r\n550-5.1.1 line two\r\n550 5.1.1 line three"
        if address.startswith("slow@"):
            await asyncio.sleep(self.slow_seconds)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if any(r.startswith("drop@") for r in envelope.rcpt_tos):
            assert server.transport is not None
            server.transport.close()
            return "250 never seen"
        if any(r.startswith("slowdata@") for r in envelope.rcpt_tos):
            await asyncio.sleep(self.slow_seconds)
        content = envelope.original_content or b""
        m = re.search(rb"^X-Upstream-Reply: (\d{3})", content, re.M)
        if m:
            code = int(m.group(1))
            return f"{code} {_TEXT[code]}"
        self.messages.append(envelope)
        return "250 2.0.0 Queued as UP1"


class _CountingSMTP(SMTP):
    def connection_made(self, transport: Any) -> None:
        self.event_handler.sessions += 1
        super().connection_made(transport)


class Upstream:
    """aiosmtpd on 127.0.0.1:port in a thread; start/stop at will."""

    def __init__(self, port: int | None = None, **smtp_kwargs: Any) -> None:
        self.port = port or free_port()
        self.handler = ScriptedHandler()
        self.smtp_kwargs = smtp_kwargs
        self.controller: Controller | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def start(self) -> Upstream:
        kwargs = self.smtp_kwargs

        class _Controller(Controller):
            def factory(self) -> SMTP:
                return _CountingSMTP(self.handler, hostname="upstream.test", **kwargs)

        self.controller = _Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GreetingRefuser:
    """An upstream that answers every connection with a 421 greeting."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def __enter__(self) -> GreetingRefuser:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"421 4.3.2 Service not available\r\n")
            await writer.drain()
            writer.close()

        self._thread.start()
        asyncio.run_coroutine_threadsafe(
            asyncio.start_server(greet, "127.0.0.1", self.port), self._loop
        ).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class DroppingUpstream:
    """An upstream that closes the connection at one chosen point, once.

    ``at`` is ``"mail"``, ``"rcpt2"`` (the second RCPT; any ``rcptN``),
    ``"data"`` (the DATA command) or ``"body"`` (after 354, once some of the
    message has arrived). Later sessions behave, and every message they take
    is kept in ``delivered`` as (sender, recipients, data), so a test can see
    exactly who got what.
    """

    def __init__(self, at: str) -> None:
        self.at = at
        self.port = free_port()
        self.dropped = False
        self.delivered: list[tuple[str, list[str], bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def _drop_now(self, point: str) -> bool:
        if not self.dropped and point == self.at:
            self.dropped = True
            return True
        return False

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 dropper ESMTP\r\n")
        sender, rcpts = "", []
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-dropper\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    if self._drop_now("mail"):
                        break
                    sender, rcpts = line[10:].strip().decode().strip("<>"), []
                    writer.write(b"250 2.1.0 OK\r\n")
                elif verb == b"RCPT":
                    if self._drop_now(f"rcpt{len(rcpts) + 1}"):
                        break
                    rcpts.append(line[8:].strip().decode().strip("<>"))
                    writer.write(b"250 2.1.5 OK\r\n")
                elif verb == b"DATA":
                    if self._drop_now("data"):
                        break
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    data = b""
                    while not data.endswith(b"\r\n.\r\n"):
                        chunk = await reader.read(65536)
                        if not chunk:
                            return
                        data += chunk
                        if self._drop_now("body"):
                            writer.close()
                            return
                    self.delivered.append((sender, rcpts, data))
                    writer.write(b"250 2.0.0 taken\r\n")
                elif verb == b"RSET":
                    sender, rcpts = "", []
                    writer.write(b"250 2.0.0 OK\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    break
                else:
                    writer.write(b"250 2.0.0 OK\r\n")
                await writer.drain()
        finally:
            writer.close()

    def __enter__(self) -> DroppingUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", self.port), self._loop
        ).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class ScriptedServer:
    """An upstream whose conversation a test writes, for what aiosmtpd does
    not speak (DSN, CHUNKING): ``session(reader, writer)`` runs once per
    connection, on an event loop in a thread of its own, on 127.0.0.1.
    It keeps every command line in ``commands`` and offers ``extensions``
    in its EHLO reply."""

    #: the EHLO keywords it offers
    extensions: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    greeting = b"220 scripted.test ESMTP\r\n"

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Greet, then one command a line: ``on_command`` answers what it
        knows; EHLO names the extensions; QUIT ends the session; anything
        else is 250."""
        writer.write(self.greeting)
        while line := await reader.readline():
            text = line.decode().rstrip("\r\n")
            self.commands.append(text)
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            if await self.on_command(verb, arg, text, reader, writer):
                continue
            if verb == "EHLO":
                lines = ["scripted.test", *self.extensions]
                writer.write(
                    "".join(f"250-{x}\r\n" for x in lines[:-1]).encode()
                    + f"250 {lines[-1]}\r\n".encode()
                )
                continue
            if verb == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            writer.write(b"250 2.0.0 ok\r\n")
        writer.close()

    async def on_command(
        self,
        verb: str,
        arg: str,
        text: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one command and say True, or say False for the default."""
        return False

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self.session, "127.0.0.1", self.port)
        )
        self.ready.set()
        self.loop.run_forever()
        server.close()

    def __enter__(self) -> Any:
        self.thread.start()
        self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
