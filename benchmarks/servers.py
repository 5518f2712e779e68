"""SMTP servers to benchmark, each alone in its own process.

    python -m benchmarks.servers KIND PORT LOOP [UPSTREAM_PORT]

KIND is ``mmgate-sink`` (tuned: async, CRLF data), ``smtpd-sink`` and
``smtpd-thread-sink`` (written as an smtpd user writes it: a plain ``def
process_message``, default arguments; called inline, or on its own thread),
``ceiling-sink`` (a minimal verb-only asyncio sink: what Python allows),
``aiosmtpd-sink``, ``mmgate-proxy`` or ``aiosmtpd-proxy``; LOOP is
``asyncio`` or ``uvloop``. Prints ``READY`` once
listening; on SIGTERM prints ``COUNT n`` (messages a sink took) and exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import sys
from typing import Any

from mmgate import PureProxy, SMTPServer, runtime, tls
from mmgate.server import set_large_block_policy

HOSTNAME = "bench.example"


class MmgateSink(SMTPServer):
    """Accepts, counts and discards, as aiosmtpd's Sink handler does."""

    data_line_ending = "\r\n"  # no smtpd conversion, as aiosmtpd gives content
    count = 0

    async def process_message(
        self, peer: Any, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any
    ) -> None:
        self.count += 1


class SmtpdSink(SMTPServer):
    """The smtpd user's sink: a plain def, smtpd's data form, nothing tuned."""

    count = 0

    def process_message(self, peer, mailfrom, rcpttos, data):  # type: ignore[no-untyped-def]
        self.count += 1


class SmtpdThreadSink(SmtpdSink):
    sync_process_message = "thread"


class CeilingSink(asyncio.Protocol):
    """The least an SMTP sink can do in Python: verbs by their first four
    bytes, message text to CRLF.CRLF with bytes.find, one reply per command.
    No parsing, no limits, no checks: a ceiling, not a server. With a TLS
    context (benchmarks/tls.py) it also takes STARTTLS, as little as that
    can be done on the loop: 220, the handshake, nothing else."""

    count = 0
    context: ssl.SSLContext | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""
        self.data = False
        transport.write(b"220 bench.example ESMTP\r\n")

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.context is not None
        self.transport = await loop.start_tls(self.transport, self, self.context, server_side=True)

    def data_received(self, chunk: bytes) -> None:
        buf = self.buf + chunk
        out = []
        while True:
            if self.data:
                end = buf.find(b"\r\n.\r\n")
                if end < 0:
                    buf = buf[-4:] if len(buf) > 4 else buf
                    break
                buf = buf[end + 5 :]
                self.data = False
                CeilingSink.count += 1
                out.append(b"250 OK\r\n")
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                break
            verb = buf[:4].upper()
            buf = buf[end + 2 :]
            if verb == b"STAR" and self.context is not None:
                self.transport.write(b"".join(out) + b"220 go ahead\r\n")
                self.buf = b""
                _TASKS.add(task := asyncio.ensure_future(self._start_tls()))
                task.add_done_callback(_TASKS.discard)
                return
            if verb == b"EHLO":
                out.append(b"250-bench.example\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                self.data = True
                out.append(b"354 go\r\n")
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
            else:
                out.append(b"250 OK\r\n")
        self.buf = buf
        if out:
            self.transport.write(b"".join(out))


_TASKS: set[asyncio.Future[None]] = set()  # held until done: the loop keeps weak ones


class AiosmtpdCountingSink:
    count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"


def tls_context() -> ssl.SSLContext | None:
    """STARTTLS with the certificate in MMGATE_BENCH_TLS (``CERT:KEY``), for
    benchmarks/tls.py; none otherwise."""
    pair = os.environ.get("MMGATE_BENCH_TLS")
    if not pair:
        return None
    cert, key = pair.split(":")
    return tls.server_context(cert, key)


async def serve(kind: str, port: int, upstream: int | None) -> None:
    loop = asyncio.get_running_loop()
    counter: Any = None
    context = tls_context()
    if kind == "mmgate-sink":
        counter = MmgateSink(
            ("127.0.0.1", port), None, fqdn=HOSTNAME, max_connections=10000, tls_context=context
        )
        await counter.start()
    elif kind in ("smtpd-sink", "smtpd-thread-sink"):
        cls = SmtpdSink if kind == "smtpd-sink" else SmtpdThreadSink
        counter = cls(
            ("127.0.0.1", port), None, fqdn=HOSTNAME, max_connections=10000, tls_context=context
        )
        await counter.start()
    elif kind == "ceiling-sink":
        counter = CeilingSink
        CeilingSink.context = context
        await loop.create_server(CeilingSink, "127.0.0.1", port, backlog=1024)
    elif kind == "mmgate-proxy":
        assert upstream is not None
        proxy = PureProxy(("127.0.0.1", port), ("127.0.0.1", upstream), fqdn=HOSTNAME)
        await proxy.start()
    else:
        from aiosmtpd.handlers import Proxy
        from aiosmtpd.smtp import SMTP

        handler: Any
        if kind == "aiosmtpd-sink":
            handler = counter = AiosmtpdCountingSink()
        else:
            assert upstream is not None
            handler = Proxy("127.0.0.1", upstream)
        await loop.create_server(
            lambda: SMTP(handler, hostname=HOSTNAME, tls_context=context),
            "127.0.0.1",
            port,
            backlog=1024,
        )
    if kind.startswith(("mmgate", "smtpd")):
        # what mmgate's serving loop does (SMTPServer.serve_forever, mmgate.loop)
        set_large_block_policy([counter if counter is not None else proxy])
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    print(f"COUNT {counter.count if counter is not None else -1}", flush=True)


if __name__ == "__main__":
    kind, port, loop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    upstream = int(sys.argv[4]) if len(sys.argv) > 4 else None
    runtime.run(serve(kind, port, upstream), loop)
