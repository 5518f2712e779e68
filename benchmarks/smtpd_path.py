"""Benchmark of the path smtpd users take, against aiosmtpd and the ceiling.

    python -m benchmarks.smtpd_path [--quick]

The mmgate sink here is written as someone moving from smtpd writes it: a
plain ``def process_message(...)`` with the default arguments (smtpd's
``\\n`` data form). It runs both ways mmgate can call a plain function:
``inline`` (on the loop's thread, as smtpd did: the default) and
``thread`` (one dedicated worker thread). Beside it: aiosmtpd's sink, and
a minimal verb-only asyncio sink on uvloop, the most any Python SMTP server
can do on this machine. The servers run side by side, pinned to CPU 0, and
are loaded one at a time, in turn, round after round; the load (Postfix's
smtp-source) is pinned to CPU 1. Traffic stays on 127.0.0.1.

Beside each server's spread over its rounds, the spread of smtp-source's
own CPU time a message in the same rounds: the same program doing the
same work each round, so what moves it is the machine's speed, and a
server's spread reads against it.
"""

from __future__ import annotations

import os
import statistics
import sys
from contextlib import ExitStack
from typing import Any

from benchmarks.engine import (
    LOAD_CPU,
    SERVER_CPU,
    Server,
    bench_args,
    first_ehlo_ms,
    idle_connections,
    in_turn,
    load_cpu_seconds,
    pin,
    rss_kib,
    running,
    spread,
)
from benchmarks.engine import loaded as smtp_source

#: (label, server kind, loop)
SERVERS = (
    ("mmgate smtpd-style, inline", "smtpd-sink", "uvloop"),
    ("mmgate smtpd-style, thread", "smtpd-thread-sink", "uvloop"),
    ("aiosmtpd sink", "aiosmtpd-sink", "asyncio"),
    ("ceiling (minimal sink)", "ceiling-sink", "uvloop"),
)


def measure(servers: dict[str, Server], small: int, large: int, repeat: int) -> dict[str, Any]:
    """Every figure of every server. The rate rounds are taken in turn
    (engine.in_turn), so that a drift over the run falls on every server."""
    labels = list(servers)
    for server in servers.values():
        pin(server.pid, SERVER_CPU)
        smtp_source(server.port, sessions=16, messages=500, length=1024)  # warm up
    ehlo = {label: first_ehlo_ms(s.port, 200) for label, s in servers.items()}
    idle = {label: idle_connections(s.pid, s.port, 2000) for label, s in servers.items()}

    def small_round(label: str) -> tuple[float, float]:
        """msgs/s, and smtp-source's own CPU microseconds a message."""
        before = load_cpu_seconds()
        elapsed = smtp_source(servers[label].port, sessions=16, messages=small, length=1024)
        return small / elapsed, (load_cpu_seconds() - before) * 1e6 / small

    small_rounds = in_turn(labels, repeat, small_round)
    large_rates = in_turn(
        labels,
        repeat,
        lambda label: (
            large
            * 10
            * 2**20
            / 1e6
            / smtp_source(servers[label].port, sessions=4, messages=large, length=10 * 2**20)
        ),
    )
    results: dict[str, Any] = {}
    for label in labels:
        rates = [rate for rate, _ in small_rounds[label]]
        load = [cpu for _, cpu in small_rounds[label]]
        results[label] = {
            "small": max(rates),
            "small_rounds": rates,
            "small_spread": spread(rates),
            "load_us": min(load),
            "load_spread": spread(load),
            "large": max(large_rates[label]),
            "peak_rss": rss_kib(servers[label].pid, "VmHWM") / 1024,
            "idle": idle[label],
            "ehlo": statistics.median(ehlo[label]),
        }
    return results


def main() -> int:
    args = bench_args("the smtpd-style path: mmgate against aiosmtpd and the ceiling")
    if args is None:
        return 2
    small, large, repeat = (4000, 8, 2) if args.quick else (30000, 40, 3)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; servers on CPU {SERVER_CPU}, "
        f"smtp-source on CPU {LOAD_CPU}; 1 KiB: {small} msgs x16 conns, "
        f"10 MiB: {large} msgs x4 conns; best of {repeat} rounds, the servers in turn"
    )
    with ExitStack() as stack:
        servers = {label: stack.enter_context(running(kind, loop)) for label, kind, loop in SERVERS}
        results = measure(servers, small, large, repeat)
    rows = [
        ("1 KiB msgs/s", "small", "{:.0f}"),
        ("  spread over the rounds", "small_spread", "{:.0%}"),
        ("smtp-source CPU us a msg, least", "load_us", "{:.1f}"),
        ("  spread over the rounds", "load_spread", "{:.0%}"),
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
        paired = [
            ours / top for ours, top in zip(r["small_rounds"], ceiling["small_rounds"], strict=True)
        ]
        print(
            f"{label}: 1 KiB {r['small'] / ceiling['small']:.2f}x the ceiling "
            f"({r['small'] / aiosmtpd['small']:.2f}x aiosmtpd; round by round "
            f"{', '.join(f'{x:.2f}' for x in paired)}x the ceiling, spread {spread(paired):.0%}); "
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
            f"{ours['small'] / ceiling['small']:.2f}x, spread {ours['small_spread']:.0%} "
            f"(ceiling {ceiling['small_spread']:.0%}, load {ours['load_spread']:.0%})",
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
