"""Benchmark of the relay path: mmgate's PureProxy against aiosmtpd's Proxy.

    python -m benchmarks.relay [--quick]

16 client connections (smtp-source) send 1 KiB messages to the proxy, which
relays them to an upstream sink (mmgate's, on uvloop, the fastest here, so
the upstream is not what is measured). Each proxy runs alone in a child
process, on asyncio's loop and on uvloop, pinned to CPU 0; the sink and
the load (Postfix's smtp-source) are pinned to CPU 1, so that where the
scheduler puts three busy processes on two CPUs does not decide the
figure. The sink counts what really arrived, so a proxy that answers 250
and loses mail is seen to.
"""

from __future__ import annotations

import os
import sys

from benchmarks.engine import (
    CONFIGS,
    LOAD_CPU,
    PINNED,
    SERVER_CPU,
    SHIPPED,
    bench_args,
    pin,
    running,
)
from benchmarks.engine import loaded as smtp_source


def measure(kind: str, loop: str, messages: int, repeat: int) -> tuple[float, int, int]:
    """Best msgs/s, messages sent, messages the upstream received."""
    best, sent = 0.0, 0
    with running("mmgate-sink", "uvloop") as upstream:
        with running(f"{kind}-proxy", loop, upstream.port) as proxy:
            pin(proxy.pid, SERVER_CPU)
            pin(upstream.pid, LOAD_CPU)
            smtp_source(proxy.port, sessions=16, messages=500, length=1024)  # warm up
            sent += 500
            for _ in range(repeat):
                elapsed = smtp_source(proxy.port, sessions=16, messages=messages, length=1024)
                sent += messages
                best = max(best, messages / elapsed)
        received = upstream.stop()
    return best, sent, received


def main() -> int:
    args = bench_args("relay msgs/s: PureProxy vs aiosmtpd Proxy")
    if args is None:
        return 2
    messages, repeat = (3000, 1) if args.quick else (20000, 3)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; 16 connections of 1 KiB "
        f"messages via smtp-source, {messages} per round, best of {repeat}; upstream: "
        "mmgate sink on uvloop"
        + (f"; proxy on CPU {SERVER_CPU}, sink and load on CPU {LOAD_CPU}" if PINNED else "")
    )
    results = {c: measure(*c, messages, repeat) for c in CONFIGS}
    print(f"{'proxy/loop':<20}{'msgs/s':>10}{'sent':>10}{'received upstream':>20}")
    for (kind, loop), (rate, sent, received) in results.items():
        print(f"{kind + '/' + loop:<20}{rate:>10.0f}{sent:>10}{received:>20}")
    shipped = (
        results[("mmgate", SHIPPED["mmgate"])][0] / results[("aiosmtpd", SHIPPED["aiosmtpd"])][0]
    )
    same = [
        results[("mmgate", loop)][0] / results[("aiosmtpd", loop)][0]
        for loop in ("asyncio", "uvloop")
    ]
    print(
        f"mmgate vs aiosmtpd: {shipped:.2f}x as shipped, {same[0]:.2f}x both on asyncio, "
        f"{same[1]:.2f}x both on uvloop (goal >= 5x as shipped)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
