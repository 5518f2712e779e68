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
