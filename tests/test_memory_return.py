"""Memory a large message used goes back to the system when it is freed."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Frees a 30 MiB block (glibc then raises its mapping threshold to 30 MiB),
# then fills and frees 24 MiB, and prints how much of it is still resident.
PROGRAM = """
import sys
from mmgate.spoolfile import map_large_blocks
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
if sys.argv[1] == "mapped":
    assert map_large_blocks()
first = bytearray(30 << 20)
del first
base = rss()
second = bytearray(24 << 20)
del second
print((rss() - base) // 1024)
"""


def _left_mib(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_a_freed_large_block_goes_back_to_the_system_once_large_blocks_are_mapped():
    assert _left_mib("mapped") < 4
    # and the fault it fixes is there without it: the block stays resident
    assert _left_mib("default") >= 20


SERVER = """
import sys
from mmgate import SMTPServer

class Sink(SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data):
        return None

Sink(("127.0.0.1", int(sys.argv[1])), None).serve_forever()
"""


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_memory_kept_for_large_messages_goes_back_once_they_stop():
    """An smtpd-style server keeps large blocks while large messages come
    (no fresh mapping to fault in for each) and gives them back after."""
    import smtplib
    import time

    from tests.harness import wait_for_port
    from tests.upstream import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    try:
        wait_for_port(port, proc, "the sink", timeout=30)
        time.sleep(0.5)
        idle = _rss_mib(proc.pid)
        body = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * (8 * 2**20 // 80)
        with smtplib.SMTP("127.0.0.1", port) as client:
            for _ in range(6):
                client.sendmail("a@example.org", ["b@example.org"], body)
            busy = _rss_mib(proc.pid)
        deadline = time.monotonic() + 10
        while _rss_mib(proc.pid) > idle + 3:
            assert time.monotonic() < deadline, (idle, busy, _rss_mib(proc.pid))
            time.sleep(0.2)
        assert busy > idle + 6  # it was kept while they came
    finally:
        proc.terminate()
        proc.wait(10)
