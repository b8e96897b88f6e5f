"""`release_free_heap` gives back the free pages in the middle of glibc's heaps, which freeing alone does not: blocks
freed between blocks still in use stay resident until then. Run in a fresh interpreter, so the heap is its own."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not hasattr(ctypes.CDLL(None), "malloc_trim"), reason="Linux with glibc"
)

PROBE = """
from phonevault.store.residency import release_free_heap

def anon():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) << 10

blocks = [b"\x01" * (64 << 10) for _ in range(400)]  # 25 MiB written, from the heap (below its mmap threshold)
del blocks[::2]  # every other freed: holes between blocks in use, none at the heap's top
before = anon()
release_free_heap()
after = anon()
print(before - after)
"""


def test_free_pages_between_used_blocks_are_given_back():
    freed = int(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout)
    assert freed >= 8 << 20  # of the 12.5 MiB freed in 64 KiB holes
