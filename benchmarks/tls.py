"""Benchmark over TLS: mmgate against aiosmtpd, both with STARTTLS, in the same run.

    python -m benchmarks.tls [--quick]

Each server runs in a child process of its own (benchmarks/servers.py),
with the same certificate (the self-signed default, ECDSA P-256, made for
the run), as shipped: mmgate's smtpd-style sink (a plain ``def
process_message``, smtpd's data form) and its tuned sink on uvloop,
aiosmtpd's sink on asyncio, and the verb-only ceiling sink of
benchmarks/servers.py taking STARTTLS on uvloop (what any Python server can
do here: the handshake, the kernel and the loop cost it as much as anyone).
They run side by side on one CPU and are loaded one at a time, in turn,
round after round (engine.in_turn). The load is a C client
(benchmarks/tlsload.c, built for the run with the system's compiler and
OpenSSL; where it cannot be built, a Python client on uvloop does the
same), in its own process, pinned to the other CPU:

* messages/s: 1 KiB messages, 16 connections at once, each connection a
  new TLS session (connect, EHLO, STARTTLS, EHLO, one message, QUIT), as
  MX traffic mostly is;
* MB/s: 10 MiB messages, 4 connections, one TLS session each.

Goal: mmgate at least 2x aiosmtpd on both. Traffic stays on 127.0.0.1.

Beside each rate it prints the server's CPU time per message and how busy
the load's CPU was. The Python client spends more CPU per session than the
servers it measures (about 2.3 ms here), so with one CPU for the load a
fast server outran it; hence the C client. A load CPU near 100 % still
means the rate is the client's, and the CPU time per message is then the
fair comparison of the servers.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarks.engine import (
    LOAD_CPU,
    PINNED,
    SERVER_CPU,
    build,
    cpu_seconds,
    in_turn,
    load_cpu_seconds,
    pin,
    running,
)
from mmgate import tls

SMALL = b"From: a@example.org\r\nSubject: bench\r\n\r\n" + (b"x" * 62 + b"\r\n") * 16


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def _session(port: int, context: ssl.SSLContext, messages: int, body: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader)
    writer.write(b"EHLO client.example\r\n")
    await _reply(reader)
    writer.write(b"STARTTLS\r\n")
    assert (await _reply(reader)).startswith(b"220")
    await writer.start_tls(context, server_hostname="bench.example")
    writer.write(b"EHLO client.example\r\n")
    await _reply(reader)
    for _ in range(messages):
        writer.write(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        for _ in range(3):
            await _reply(reader)
        writer.write(body + b".\r\n")
        answer = await _reply(reader)
        assert answer.startswith(b"250"), answer
    writer.write(b"QUIT\r\n")
    await _reply(reader)
    writer.close()


async def _load(port: int, mode: str, total: int) -> float:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    started = time.perf_counter()
    if mode == "small":  # 16 at once, a new TLS session per message
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(total):
            queue.put_nowait(n)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                await _session(port, context, 1, SMALL)

        await asyncio.gather(*(worker() for _ in range(16)))
    else:  # 4 sessions of 10 MiB messages
        line = b"y" * 998 + b"\r\n"  # RFC 5321's longest text line
        body = b"Subject: big\r\n\r\n" + line * (10 * 2**20 // len(line))
        await asyncio.gather(*(_session(port, context, total // 4, body) for _ in range(4)))
    return time.perf_counter() - started


def client_main() -> None:
    """The load, in its own process: prints the seconds it took."""
    port, mode, total = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    import uvloop

    print(json.dumps(uvloop.run(_load(port, mode, total))))


def build_client(directory: Path) -> list[str] | None:
    """benchmarks/tlsload.c built into ``directory``; None where there is no
    C compiler or no OpenSSL headers (the Python client is used then)."""
    source = Path(__file__).with_name("tlsload.c")
    exe = directory / "tlsload"
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None
    built = subprocess.run(
        [compiler, "-O2", "-o", str(exe), str(source), "-lssl", "-lcrypto", "-lpthread"],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        print(f"(the C client did not build: {built.stderr.strip().splitlines()[-1:]})")
        return None
    return [str(exe)]


PYTHON_CLIENT = [sys.executable, "-m", "benchmarks.tls", "--client"]


def measure(
    client: list[str], server: int, port: int, mode: str, total: int
) -> tuple[float, float, float]:
    """Messages per second (or MB per second), the server's CPU
    milliseconds per message, and the share of its CPU the load used."""
    server_cpu = cpu_seconds(server)
    before = load_cpu_seconds()
    started = time.perf_counter()
    out = subprocess.run(
        [*client, str(port), mode, str(total)],
        capture_output=True,
        text=True,
        preexec_fn=(lambda: pin(0, LOAD_CPU)) if PINNED else None,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the client failed: {out.stderr.strip().splitlines()[-1:]}")
    wall = time.perf_counter() - started
    load = (load_cpu_seconds() - before) / wall
    per_message = (cpu_seconds(server) - server_cpu) * 1000 / total
    seconds = float(out.stdout.strip())
    if mode == "small":
        return total / seconds, per_message, load
    return total * 10 * 2**20 / 1e6 / seconds, per_message, load


def main() -> int:
    quick = "--quick" in sys.argv
    small, large, repeat = (400, 8, 2) if quick else (3000, 40, 3)
    directory = Path(tempfile.mkdtemp(prefix="mmgate-tls-bench-"))
    atexit.register(shutil.rmtree, directory, True)
    cert, key = tls.ensure_self_signed(directory, "bench.example")
    os.environ["MMGATE_BENCH_TLS"] = f"{cert}:{key}"
    client = build_client(directory)
    print(build())
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; server on CPU {SERVER_CPU}, "
        f"client ({'C' if client else 'Python'}) on CPU {LOAD_CPU}; ECDSA P-256; 1 KiB: "
        f"{small} messages, 16 at once, a TLS session each; 10 MiB: {large} messages over 4 "
        f"sessions; best of {repeat} rounds, the servers in turn"
    )
    client = client or PYTHON_CLIENT
    kinds = {
        "mmgate smtpd-style sink": ("smtpd-sink", "uvloop"),
        "mmgate tuned sink": ("mmgate-sink", "uvloop"),
        "aiosmtpd sink": ("aiosmtpd-sink", "asyncio"),
        "ceiling (verbs only)": ("ceiling-sink", "uvloop"),
    }
    with ExitStack() as stack:
        servers = {label: stack.enter_context(running(*kind)) for label, kind in kinds.items()}
        for server in servers.values():
            pin(server.pid, SERVER_CPU)
            measure(client, server.pid, server.port, "small", 64)  # warm up

        def rounds(mode: str, total: int) -> dict[str, list[tuple[float, float, float]]]:
            return in_turn(
                list(servers),
                repeat,
                lambda label: measure(client, servers[label].pid, servers[label].port, mode, total),
            )

        runs = {"small": rounds("small", small), "large": rounds("large", large)}
    results: dict[str, dict[str, float]] = {}
    for label in servers:
        small_runs, large_runs = runs["small"][label], runs["large"][label]
        best_small, best_large = max(small_runs), max(large_runs)
        results[label] = {
            "small": best_small[0],
            "small_cpu": min(r[1] for r in small_runs),
            "small_load": best_small[2],
            "large": best_large[0],
            "large_cpu": min(r[1] for r in large_runs),
            "large_load": best_large[2],
        }
    peer = results["aiosmtpd sink"]
    print(
        f"{'':<26}{'msgs/s':>8}{'CPU ms/msg':>12}{'load CPU':>10}"
        f"{'MB/s':>9}{'CPU ms/msg':>12}{'load CPU':>10}"
    )
    print(f"{'':<26}{'1 KiB, a TLS session per message':^30}{'10 MiB messages':^31}")
    for label, r in results.items():
        print(
            f"{label:<26}{r['small']:>8.0f}{r['small_cpu']:>12.2f}{r['small_load']:>9.0%}"
            f"{r['large']:>9.1f}{r['large_cpu']:>12.1f}{r['large_load']:>9.0%}"
        )
    for label in ("mmgate smtpd-style sink", "mmgate tuned sink"):
        ours = results[label]
        paired = [
            mine[0] / theirs[0]
            for mine, theirs in zip(
                runs["small"][label], runs["small"]["aiosmtpd sink"], strict=True
            )
        ]
        print(
            f"{label}/aiosmtpd, messages/s round by round: "
            + ", ".join(f"{x:.2f}x" for x in paired)
        )
        print(
            f"{label}/aiosmtpd: {ours['small'] / peer['small']:.2f}x messages/s "
            f"({peer['small_cpu'] / ours['small_cpu']:.2f}x less server CPU per message), "
            f"{ours['large'] / peer['large']:.2f}x MB/s "
            f"({peer['large_cpu'] / ours['large_cpu']:.2f}x less) (goal: 2x on both)"
        )
        if ours["small_load"] > 0.9:
            print(
                f"  its messages/s is the load's limit (load CPU {ours['small_load']:.0%}); "
                "the CPU per message compares the servers"
            )
    ceiling = results["ceiling (verbs only)"]
    print(
        f"ceiling/aiosmtpd: {ceiling['small'] / peer['small']:.2f}x messages/s "
        f"({peer['small_cpu'] / ceiling['small_cpu']:.2f}x less server CPU per message): "
        "the most a Python server could show here"
    )
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client"]:
        client_main()
    else:
        sys.exit(main())
