"""SMTP servers to benchmark, each alone in its own process.

    python -m benchmarks.servers KIND PORT LOOP [UPSTREAM_PORT]

KIND is ``mmgate-sink``, ``aiosmtpd-sink``, ``mmgate-proxy`` or
``aiosmtpd-proxy``; LOOP is ``asyncio`` or ``uvloop``. Prints ``READY`` once
listening; on SIGTERM prints ``COUNT n`` (messages a sink took) and exits.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from mmgate import PureProxy, SMTPServer, runtime

HOSTNAME = "bench.example"


class MmgateSink(SMTPServer):
    """Accepts, counts and discards, as aiosmtpd's Sink handler does."""

    data_line_ending = "\r\n"  # no smtpd conversion, as aiosmtpd gives content
    count = 0

    async def process_message(
        self, peer: Any, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any
    ) -> None:
        self.count += 1


class AiosmtpdCountingSink:
    count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        return "250 OK"


async def serve(kind: str, port: int, upstream: int | None) -> None:
    loop = asyncio.get_running_loop()
    counter: Any = None
    if kind == "mmgate-sink":
        counter = MmgateSink(("127.0.0.1", port), None, fqdn=HOSTNAME, max_connections=10000)
        await counter.start()
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
            lambda: SMTP(handler, hostname=HOSTNAME), "127.0.0.1", port, backlog=1024
        )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("READY", flush=True)
    await stop.wait()
    print(f"COUNT {counter.count if counter is not None else -1}", flush=True)


if __name__ == "__main__":
    kind, port, loop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    upstream = int(sys.argv[4]) if len(sys.argv) > 4 else None
    runtime.run(serve(kind, port, upstream), loop)
