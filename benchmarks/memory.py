"""Benchmark of memory under large list posts: mmgate against Mailman's LMTP runner.

    python -m benchmarks.memory [--quick]

One Mailman home with one list, as benchmarks/mailman.py makes it; each
server runs alone in a child process, as shipped (``mmgate serve``;
``runner --runner=lmtp``), and is measured from /proc:

* 12 clients each send a 24 MiB post to the list and hold it open before
  the final dot: how much the server's RSS rose (goal for mmgate: at most
  96 MiB). Then the 12 dots, and every post must be answered 250 and queued.
* one 24 MiB post on its own: the server's peak RSS over its baseline, as
  a multiple of the post's size (goal: at most 3x);
* afterwards: the RSS left over the baseline (memory comes back: goal,
  less than one post's size).

Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.engine import bench_args, read_reply, rss_kib
from benchmarks.mailman import bench_home, clear, queued, serve_command, stop, wait_listening

MIB = 1024 * 1024
LINE = b"A line of a very long post, repeated until the post is big enough..x\r\n"


def _post(size: int) -> bytes:
    head = b"From: alice@example.org\r\nTo: test@example.com\r\nSubject: big\r\n\r\n"
    return head + LINE * ((size - len(head)) // len(LINE))


class Client:
    """One sender, stopping before the final dot until told to finish."""

    def __init__(self, port: int, lmtp: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.lmtp = lmtp
        read_reply(self.sock)

    def cmd(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return read_reply(self.sock)

    def start(self, body: bytes) -> None:
        self.cmd(b"LHLO bench.example" if self.lmtp else b"EHLO bench.example")
        self.cmd(b"MAIL FROM:<alice@example.org>")
        self.cmd(b"RCPT TO:<test@example.com>")
        assert self.cmd(b"DATA").startswith(b"354")
        self.sock.sendall(body)  # everything but the final dot

    def finish(self) -> bytes:
        self.sock.sendall(b".\r\n")
        reply = read_reply(self.sock)
        self.sock.close()
        return reply


def _settle(pid: int) -> int:
    """RSS once it stops moving (the server has read what was sent)."""
    last = rss_kib(pid)
    for _ in range(60):
        time.sleep(0.5)
        now = rss_kib(pid)
        if abs(now - last) < 256:
            return now
        last = now
    return last


def measure(
    name: str, cmd: list[str], port: int, inq: Path, size: int, lmtp: bool
) -> dict[str, float]:
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_listening(port, proc)
        warm = Client(port, lmtp)
        warm.start(_post(64 * 1024))
        warm.finish()
        time.sleep(1)
        clear(inq)
        base = _settle(proc.pid)
        body = _post(size)
        clients = [Client(port, lmtp) for _ in range(12)]
        threads = [threading.Thread(target=c.start, args=(body,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        held = _settle(proc.pid)
        answers = [c.finish() for c in clients]
        deadline = time.monotonic() + 120
        while queued(inq) < 12 and time.monotonic() < deadline:
            time.sleep(0.2)
        taken = queued(inq)
        clear(inq)
        after = _settle(proc.pid)
        # one post alone: peak over the baseline (VmHWM reset with clear_refs 5)
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        one_base = rss_kib(proc.pid)
        one = Client(port, lmtp)
        one.start(body)
        one.finish()
        while queued(inq) < 1 and time.monotonic() < deadline + 60:
            time.sleep(0.2)
        peak = rss_kib(proc.pid, "VmHWM")
        clear(inq)
    finally:
        stop(proc)
    ok = sum(a.startswith(b"250") for a in answers)
    result = {
        "held": (held - base) / 1024,
        "peak_ratio": (peak - one_base) * 1024 / len(body),
        "after": (after - base) / 1024,
        "answered": ok,
        "queued": taken,
    }
    print(
        f"{name:<26}{result['held']:>12.1f}{result['peak_ratio']:>14.2f}x{result['after']:>12.1f}"
        f"{ok:>8}/12{taken:>8}/12"
    )
    return result


def main() -> int:
    args = bench_args("memory under 24 MiB list posts: mmgate vs Mailman's LMTP runner")
    if args is None:
        return 2
    size = (8 if args.quick else 24) * MIB
    var, cfg, lmtp_port, smtp_port, inq = bench_home()
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; posts of {size // MIB} MiB "
        f"to one list; Mailman home {var}"
    )
    print(
        f"{'server':<26}{'12 held, MiB':>12}{'1 post, peak':>15}{'after, MiB':>12}"
        f"{'250s':>11}{'queued':>11}"
    )
    runner = str(Path(sys.executable).with_name("runner"))
    peer = measure(
        "Mailman LMTP runner",
        [runner, "-C", str(cfg), "--runner=lmtp:0:1"],
        lmtp_port,
        inq,
        size,
        lmtp=True,
    )
    ours = measure("mmgate serve", serve_command(cfg, var, smtp_port), smtp_port, inq, size, False)
    print(
        f"mmgate: 12 held posts raise RSS by {ours['held']:.1f} MiB (goal <= 96; the LMTP "
        f"runner: {peer['held']:.1f}); one post peaks at {ours['peak_ratio']:.2f}x its size "
        f"(goal <= 3x; the LMTP runner: {peer['peak_ratio']:.2f}x); "
        f"{ours['after']:.1f} MiB left afterwards (goal < {size / MIB:.0f}; the LMTP runner: "
        f"{peer['after']:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
