"""Benchmark of the path smtpd users take, against aiosmtpd and the ceiling.

    python -m benchmarks.smtpd_path [--quick]

The mmgate sink here is written as someone moving from smtpd writes it: a
plain ``def process_message(...)`` with the default arguments (smtpd's
``\\n`` data form). It runs both ways mmgate can call a plain function:
``inline`` (on the loop's thread, as smtpd did: the default) and
``thread`` (one dedicated worker thread). Beside it: aiosmtpd's sink, and
a minimal verb-only asyncio sink on uvloop, the most any Python SMTP server
can do on this machine. Each server runs alone, pinned to CPU 0; the load
(Postfix's smtp-source) is pinned to CPU 1. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import statistics
import sys

from benchmarks.engine import (
    LOAD_CPU,
    SERVER_CPU,
    bench_args,
    first_ehlo_ms,
    idle_connections,
    pin,
    rss_kib,
    running,
)
from benchmarks.engine import loaded as smtp_source

#: (label, server kind, loop)
SERVERS = (
    ("mmgate smtpd-style, inline", "smtpd-sink", "uvloop"),
    ("mmgate smtpd-style, thread", "smtpd-thread-sink", "uvloop"),
    ("aiosmtpd sink", "aiosmtpd-sink", "asyncio"),
    ("ceiling (minimal sink)", "ceiling-sink", "uvloop"),
)


def measure(kind: str, loop: str, small: int, large: int, repeat: int) -> dict[str, float]:
    with running(kind, loop) as server:
        pin(server.pid, SERVER_CPU)
        smtp_source(server.port, sessions=16, messages=500, length=1024)  # warm up
        ehlo = first_ehlo_ms(server.port, 200)
        idle = idle_connections(server.pid, server.port, 2000)
        small_rates = [
            small / smtp_source(server.port, sessions=16, messages=small, length=1024)
            for _ in range(repeat)
        ]
        large_rates = [
            large
            * 10
            * 2**20
            / 1e6
            / smtp_source(server.port, sessions=4, messages=large, length=10 * 2**20)
            for _ in range(repeat)
        ]
        peak = rss_kib(server.pid, "VmHWM") / 1024
    return {
        "small": max(small_rates),
        "small_spread": (max(small_rates) - min(small_rates)) / max(small_rates),
        "large": max(large_rates),
        "peak_rss": peak,
        "idle": idle,
        "ehlo": statistics.median(ehlo),
    }


def main() -> int:
    args = bench_args("the smtpd-style path: mmgate against aiosmtpd and the ceiling")
    if args is None:
        return 2
    small, large, repeat = (4000, 8, 2) if args.quick else (30000, 40, 3)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; server on CPU {SERVER_CPU}, "
        f"smtp-source on CPU {LOAD_CPU}; 1 KiB: {small} msgs x16 conns, "
        f"10 MiB: {large} msgs x4 conns; best of {repeat}"
    )
    results = {label: measure(kind, loop, small, large, repeat) for label, kind, loop in SERVERS}
    rows = [
        ("1 KiB msgs/s", "small", "{:.0f}"),
        ("  spread over the runs", "small_spread", "{:.0%}"),
        ("10 MiB MB/s", "large", "{:.1f}"),
        ("peak RSS, MiB", "peak_rss", "{:.1f}"),
        ("KiB per idle conn after EHLO", "idle", "{:.2f}"),
        ("first EHLO reply, median ms", "ehlo", "{:.3f}"),
    ]
    print(f"{'':<32}" + "".join(f"{label:>30}" for label, _, _ in SERVERS))
    for name, key, fmt in rows:
        print(f"{name:<32}" + "".join(f"{fmt.format(results[s][key]):>30}" for s, _, _ in SERVERS))
    ceiling, aiosmtpd = results["ceiling (minimal sink)"], results["aiosmtpd sink"]
    print()
    for label in ("mmgate smtpd-style, inline", "mmgate smtpd-style, thread"):
        r = results[label]
        print(
            f"{label}: 1 KiB {r['small'] / ceiling['small']:.2f}x the ceiling "
            f"({r['small'] / aiosmtpd['small']:.2f}x aiosmtpd); "
            f"10 MiB {r['large'] / ceiling['large']:.2f}x the ceiling "
            f"({r['large'] / aiosmtpd['large']:.2f}x aiosmtpd)"
        )
    print()
    for line in goals(results["mmgate smtpd-style, inline"], ceiling):
        print(line)
    return 0


def goals(ours: dict[str, float], ceiling: dict[str, float]) -> list[str]:
    """The smtpd-style sink as shipped (inline) against its goals, each
    said met or not."""
    rss_bound = 2 * ceiling["peak_rss"] + 4 * 10  # plus one 10 MiB message per connection
    checks = [
        (
            "1 KiB: >= 0.5x the ceiling, spread < 15%",
            f"{ours['small'] / ceiling['small']:.2f}x, spread {ours['small_spread']:.0%}",
            ours["small"] >= 0.5 * ceiling["small"] and ours["small_spread"] < 0.15,
        ),
        (
            "10 MiB: >= 0.7x the ceiling's MB/s",
            f"{ours['large'] / ceiling['large']:.2f}x",
            ours["large"] >= 0.7 * ceiling["large"],
        ),
        (
            f"peak RSS <= 2x the ceiling's + 4 x 10 MiB ({rss_bound:.1f} MiB)",
            f"{ours['peak_rss']:.1f} MiB",
            ours["peak_rss"] <= rss_bound,
        ),
        ("<= 2 KiB per idle connection", f"{ours['idle']:.2f} KiB", ours["idle"] <= 2.0),
        ("first EHLO reply < 1 ms", f"{ours['ehlo']:.3f} ms", ours["ehlo"] < 1.0),
    ]
    return [f"goal {goal:<58} {got:>18}   {'met' if ok else 'NOT met'}" for goal, got, ok in checks]


if __name__ == "__main__":
    sys.exit(main())
