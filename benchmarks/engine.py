"""Benchmark of the SMTP engine: mmgate against aiosmtpd, in the same run.

    python -m benchmarks.engine [--quick]

Each server runs alone in a child process; the load comes from Postfix's
``smtp-source`` (C, apt package ``postfix``), so the client is not the
bottleneck, and from a Python client for the idle and latency figures.
Prints each figure for both servers and the ratio against the engine's
goals. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from mmgate.mailman.embedded import free_port as free_port

#: (server, event loop). aiosmtpd as shipped runs on asyncio's loop; mmgate
#: as shipped on uvloop. Both run on both, so each ratio can be read like
#: for like as well.
CONFIGS = (
    ("aiosmtpd", "asyncio"),
    ("aiosmtpd", "uvloop"),
    ("mmgate", "asyncio"),
    ("mmgate", "uvloop"),
)
SHIPPED = {"aiosmtpd": "asyncio", "mmgate": "uvloop"}

K = TypeVar("K")
T = TypeVar("T")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for {pid}")


class Server:
    """One benchmarked server in a child process (benchmarks/servers.py)."""

    def __init__(self, kind: str, loop: str, upstream: int | None = None) -> None:
        self.port = free_port()
        args = [kind, str(self.port), loop, *([str(upstream)] if upstream else [])]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.servers", *args], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "READY":
            self.proc.kill()
            raise RuntimeError(f"{kind} did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        """Stop it; the number of messages it took (sinks), else -1."""
        if self.proc.poll() is not None:
            return -1
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return int(out.split()[-1]) if out.strip() else -1


@contextmanager
def running(kind: str, loop: str, upstream: int | None = None) -> Iterator[Server]:
    server = Server(kind, loop, upstream)
    try:
        yield server
    finally:
        server.stop()


#: Where the measured server and its load run, when there are two CPUs:
#: apart, so that neither takes the other's time, and where the scheduler
#: puts busy processes does not decide a figure.
SERVER_CPU, LOAD_CPU = 0, 1
PINNED = (os.cpu_count() or 1) > 1


def pin(pid: int, cpu: int) -> None:
    """Keep process ``pid`` (0: this one) on ``cpu``; nothing on one CPU."""
    if PINNED:
        os.sched_setaffinity(pid, {cpu})


def in_turn(keys: Sequence[K], rounds: int, take: Callable[[K], T]) -> dict[K, list[T]]:
    """``take(key)`` for every key, ``rounds`` times, the keys in turn: round
    one of each, then round two of each. This machine's speed drifts (by a
    third within a minute, for every process alike: the load's own CPU time
    per message moves with it), so rounds taken one server after the other
    would judge each server by when it ran; in turn, a drift falls on all."""
    out: dict[K, list[T]] = {key: [] for key in keys}
    for _ in range(rounds):
        for key in keys:
            out[key].append(take(key))
    return out


def spread(values: Sequence[float]) -> float:
    """(highest - lowest) / highest: how far apart the rounds were."""
    return (max(values) - min(values)) / max(values)


def load_cpu_seconds() -> float:
    """CPU time this process's finished children (the load) have used so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def loaded(port: int, **kwargs: int) -> float:
    """:func:`smtp_source` on the load's CPU."""
    return smtp_source(port, cpu=LOAD_CPU if PINNED else None, **kwargs)


def smtp_source(
    port: int,
    *,
    sessions: int,
    messages: int,
    length: int,
    lmtp: bool = False,
    sender: str = "sender@example.com",
    recipient: str = "rcpt@example.com",
    cpu: int | None = None,
) -> float:
    """Seconds for smtp-source to deliver ``messages`` over persistent sessions
    (pinned to ``cpu`` when given, so it does not share the server's core)."""
    cmd = [
        "smtp-source",
        *(["-L"] if lmtp else []),
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(messages),
        "-l",
        str(length),
        "-f",
        sender,
        "-t",
        recipient,
        f"127.0.0.1:{port}",
    ]
    started = time.perf_counter()
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=900,
        preexec_fn=None if cpu is None else lambda: os.sched_setaffinity(0, {cpu}),
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or done.stderr.strip():
        raise RuntimeError(f"smtp-source failed: {done.stderr.strip()}")
    return elapsed


def bench_args(description: str) -> argparse.Namespace | None:
    """The benchmarks' common options; None (after saying why) if they cannot run."""
    return bench_parse(bench_parser(description))


def bench_parser(description: str) -> argparse.ArgumentParser:
    """The common options' parser, for a benchmark to add its own to."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer messages, for a smoke run")
    return parser


def bench_parse(parser: argparse.ArgumentParser) -> argparse.Namespace | None:
    """Parse; None (after saying why) if the benchmark cannot run here."""
    args = parser.parse_args()
    if shutil.which("smtp-source") is None:
        print("smtp-source not found: apt-get install postfix", file=sys.stderr)
        return None
    print(build())
    return args


def build() -> str:
    """What the servers measured here run (they inherit this environment):
    the figures are the build's, compiled or interpreted (setup.py)."""
    from mmgate.smtp import framing, session

    core = "interpreted" if session.__file__.endswith(".py") else "compiled by mypyc"
    text = "natively" if framing.NATIVE else "in Python"
    return f"mmgate's protocol core {core}; message text read {text}"


def read_reply(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
        last = data.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
        if data.endswith(b"\r\n") and last[3:4] == b" ":
            return data


def idle_connections(pid: int, port: int, count: int) -> float:
    """Server RSS growth per connection that has sent EHLO and waits, in KiB.

    Measured over a second batch of ``count`` connections, after a first
    batch as large: the first takes up what the heap had free from earlier
    work (how much varies from run to run, even with where the checkout
    is), so that the figure is what each further connection costs."""
    socks: list[socket.socket] = []

    def connect() -> None:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port))
            read_reply(s)
            s.sendall(b"EHLO client.example\r\n")
            read_reply(s)
            socks.append(s)
        time.sleep(0.5)

    try:
        connect()
        before = rss_kib(pid)
        connect()
        after = rss_kib(pid)
    finally:
        for s in socks:
            s.close()
    return (after - before) / count


def first_ehlo_ms(port: int, samples: int) -> list[float]:
    """Time from sending EHLO on a new connection to its whole reply, in ms."""
    out = []
    for _ in range(samples):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            read_reply(s)
            started = time.perf_counter()
            s.sendall(b"EHLO client.example\r\n")
            read_reply(s)
            out.append((time.perf_counter() - started) * 1000)
            s.sendall(b"QUIT\r\n")
    return out


@dataclass
class Figures:
    small_msgs_s: list[float] = field(default_factory=list)
    large_mb_s: list[float] = field(default_factory=list)
    large_peak_rss_mib: float = 0.0
    idle_kib_per_conn: float = 0.0
    ehlo_ms: list[float] = field(default_factory=list)


def measure(kind: str, loop: str, args: argparse.Namespace) -> Figures:
    fig = Figures()
    with running(f"{kind}-sink", loop) as server:
        proc, port = server.proc, server.port
        smtp_source(port, sessions=16, messages=500, length=1024)  # warm up
        fig.ehlo_ms = first_ehlo_ms(port, args.ehlo_samples)
        fig.idle_kib_per_conn = idle_connections(proc.pid, port, args.idle)
        for _ in range(args.repeat):
            elapsed = smtp_source(port, sessions=16, messages=args.small, length=1024)
            fig.small_msgs_s.append(args.small / elapsed)
        for _ in range(args.repeat):
            elapsed = smtp_source(port, sessions=4, messages=args.large, length=10 * 2**20)
            fig.large_mb_s.append(args.large * 10 * 2**20 / 1e6 / elapsed)
        fig.large_peak_rss_mib = rss_kib(proc.pid, "VmHWM") / 1024
    return fig


def main() -> int:
    args = bench_args("SMTP engine: mmgate against aiosmtpd")
    if args is None:
        return 2
    args.small, args.large, args.repeat = (4000, 8, 1) if args.quick else (30000, 40, 3)
    args.idle = 1000
    args.ehlo_samples = 50 if args.quick else 300
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; load: smtp-source "
        f"(1 KiB: {args.small} msgs, 10 MiB: {args.large} msgs); best of {args.repeat}"
    )
    results = {config: measure(*config, args) for config in CONFIGS}
    metrics = [
        ("1 KiB msgs/s, 16 persistent conns", lambda f: max(f.small_msgs_s), "higher", ">= 2.5x"),
        ("10 MiB MB/s, 4 conns", lambda f: max(f.large_mb_s), "higher", ">= 5x"),
        ("peak server RSS, MiB", lambda f: f.large_peak_rss_mib, "lower", "bounded"),
        (
            f"KiB per idle conn ({args.idle}, after EHLO)",
            lambda f: f.idle_kib_per_conn,
            "lower",
            "<= 0.5x",
        ),
        ("first EHLO reply, median ms", lambda f: statistics.median(f.ehlo_ms), "lower", "< 1 ms"),
        (
            "first EHLO reply, p99 ms",
            lambda f: statistics.quantiles(f.ehlo_ms, n=100)[98],
            "lower",
            "< 1 ms",
        ),
    ]
    heads = [f"{k}/{loop}" for k, loop in CONFIGS]
    print(f"{'':<40}" + "".join(f"{h:>18}" for h in heads))
    for name, get, _, _ in metrics:
        print(f"{name:<40}" + "".join(f"{get(results[c]):>18.2f}" for c in CONFIGS))
    print()
    shipped_a = results[("aiosmtpd", SHIPPED["aiosmtpd"])]
    shipped_m = results[("mmgate", SHIPPED["mmgate"])]
    print(
        f"{'mmgate vs aiosmtpd':<40}{'as shipped':>18}{'both asyncio':>18}{'both uvloop':>18}"
        f"   goal"
    )
    for name, get, _, goal in metrics:
        ratios = [get(shipped_m) / get(shipped_a)] + [
            get(results[("mmgate", loop)]) / get(results[("aiosmtpd", loop)])
            for loop in ("asyncio", "uvloop")
        ]
        print(f"{name:<40}" + "".join(f"{r:>17.2f}x" for r in ratios) + f"   {goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
