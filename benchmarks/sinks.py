"""Discarding SMTP servers to benchmark: mmgate's and aiosmtpd's Sink.

Run as ``python -m benchmarks.sinks KIND PORT LOOP`` (LOOP: asyncio or
uvloop); prints ``READY`` once listening. Each runs alone in its own process.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from mmgate import SMTPServer, runtime

HOSTNAME = "bench.example"


class MmgateSink(SMTPServer):
    """Accepts and discards, as aiosmtpd's Sink handler does."""

    data_line_ending = "\r\n"  # no smtpd conversion, as aiosmtpd gives content

    async def process_message(
        self, peer: Any, mailfrom: str, rcpttos: list[str], data: bytes | str, **kwargs: Any
    ) -> None:
        return None


def run_mmgate(port: int, loop: str) -> None:
    server = MmgateSink(("127.0.0.1", port), None, fqdn=HOSTNAME, max_connections=10000)

    async def main() -> None:
        await server.start()
        print("READY", flush=True)
        await asyncio.Event().wait()

    runtime.run(main(), loop)


def run_aiosmtpd(port: int, loop: str) -> None:
    from aiosmtpd.handlers import Sink
    from aiosmtpd.smtp import SMTP

    async def main() -> None:
        await asyncio.get_running_loop().create_server(
            lambda: SMTP(Sink(), hostname=HOSTNAME), "127.0.0.1", port, backlog=1024
        )
        print("READY", flush=True)
        await asyncio.Event().wait()

    runtime.run(main(), loop)


if __name__ == "__main__":
    kind, port, loop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    {"mmgate": run_mmgate, "aiosmtpd": run_aiosmtpd}[kind](port, loop)
