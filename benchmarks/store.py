"""Benchmark of the store's cost: the SMTP side with the store on and off.

    python -m benchmarks.store [--quick]

The same load as benchmarks/mailman.py (16 connections, 1 KiB posts to one
list) into ``mmgate serve`` with its store (counters, journal, pauses in
SQLite beside Mailman) and with ``--no-store``, in pairs of rounds run back
to back; the figure is the median of the pairs' ratios, because this
machine's disk speed drifts by tens of percent between minutes and a
best-of over all rounds would measure the drift. Goal: at most 10 % slower.
"""

from __future__ import annotations

import os
import statistics
import sys

from benchmarks.engine import bench_args
from benchmarks.mailman import bench_home, measure, serve_command


def main() -> int:
    args = bench_args("posts/s with the store on and off")
    if args is None:
        return 2
    messages, pairs = (1000, 1) if args.quick else (5000, 5)
    var, cfg, _, port, inq = bench_home()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; 16 connections, 1 KiB "
        f"posts to one list, {messages} per round; {pairs} pairs of rounds, store on then off"
    )
    costs = []
    for _ in range(pairs):
        rates = {}
        for name, flag in (("on", []), ("off", ["--no-store"])):
            rates[name], _ = measure(
                f"mmgate serve, store {name}",
                serve_command(cfg, var, port, *flag),
                port,
                inq,
                messages,
                1,
                lmtp=False,
            )
        costs.append(1 - rates["on"] / rates["off"])
    print("the store's cost in each pair: " + ", ".join(f"{c * 100:+.1f}%" for c in costs))
    print(
        f"median: {statistics.median(costs) * 100:+.1f}% (goal <= 10%); each pair ran "
        "back to back, so the disk's drift over the run cancels within a pair"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
