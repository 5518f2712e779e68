"""Instructions per message, counted by valgrind's callgrind.

    python -m benchmarks.instructions [KIND ...]   (default: mmgate-sink mmgate-proxy)

Wall-clock figures on a shared machine swing by tens of percent from run to
run; an instruction count does not. Each server kind of benchmarks/servers.py
runs under callgrind (asyncio's loop, so the count covers the Python
interpreter and the loop alike) and takes 1 KiB messages from smtp-source
over 4 connections, once 500 and once 2,500; the difference divided by
2,000 is what one message costs, start-up and warm-up cancelled out. Run it
in two checkouts to compare two versions. Needs valgrind (apt-get install
valgrind); traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.engine import free_port, running, smtp_source

_SUMMARY = re.compile(rb"^summary: (\d+)", re.M)


def count(kind: str, messages: int, upstream: int | None) -> int:
    """Instructions the server executed in a run that took ``messages``."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        args = [kind, str(port), "asyncio", *([str(upstream)] if upstream else [])]
        proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks.servers",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"READY":
            proc.kill()
            raise RuntimeError(f"{kind} did not start under valgrind")
        try:
            smtp_source(port, sessions=4, messages=messages, length=1024)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=300)
        m = _SUMMARY.search(out.read_bytes())
        if m is None:
            raise RuntimeError("callgrind wrote no summary")
        return int(m.group(1))


def per_message(kind: str) -> float:
    if kind.endswith("-proxy"):
        with running("mmgate-sink", "uvloop") as upstream:
            small, large = count(kind, 500, upstream.port), count(kind, 2500, upstream.port)
    else:
        small, large = count(kind, 500, None), count(kind, 2500, None)
    return (large - small) / 2000


def main() -> int:
    if shutil.which("valgrind") is None or shutil.which("smtp-source") is None:
        print("needs valgrind and smtp-source: apt-get install valgrind postfix", file=sys.stderr)
        return 2
    kinds = sys.argv[1:] or ["mmgate-sink", "mmgate-proxy"]
    print(f"python {sys.version.split()[0]}; callgrind, asyncio loop, 1 KiB messages")
    for kind in kinds:
        print(f"{kind:<20}{per_message(kind) / 1000:>10.1f}k instructions per message")
    return 0


if __name__ == "__main__":
    sys.exit(main())
