"""benchmarks/measure.py: a step's peak RSS counts every process of the command at once, not only the largest one
(phonevault's import reads small files in a child process)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import measure  # noqa: E402

MIB = 1 << 20

# Parent and child each touch 96 MiB of their own after the fork, hold it until both have, then keep it 2 s (40
# sampling periods) so the sampler sees the two together.
TWO_PROCESSES = f"""
import os, time
r, w = os.pipe()
pid = os.fork()
mine = bytearray({96 * MIB})
for i in range(0, len(mine), 4096):
    mine[i] = 1
if pid == 0:
    os.write(w, b"x")
    time.sleep(2)
    os._exit(0)
os.read(r, 1)
time.sleep(2)
os.waitpid(pid, 0)
"""

SYSCALLS = f"""
b = bytearray({4 * MIB})
with open("/dev/zero", "rb", buffering=0) as f:
    for _ in range(800):
        f.readinto(b)  # the kernel zero-fills 4 MiB: system time
"""


def test_peak_rss_sums_a_parent_and_its_child() -> None:
    m = measure.timed("two", [sys.executable, "-c", TWO_PROCESSES], cold=False)
    largest = m.extra["largest_process_rss_mb"]
    assert 96 <= largest < 96 + 60  # one process: its own 96 MiB and the interpreter
    assert m.peak_rss_mb >= 2 * 96  # both processes' own pages at once
    assert 2 * 96 <= m.extra["peak_anon_mb"] <= m.peak_rss_mb + 0.1  # the heaps they allocated, never more than all


def test_one_process_keeps_gnu_times_figure() -> None:
    m = measure.timed(
        "one", [sys.executable, "-c", f"b = bytearray({64 * MIB}); b[::4096] = b'1' * len(b[::4096])"], cold=False
    )
    assert abs(m.peak_rss_mb - m.extra["largest_process_rss_mb"]) < 0.1  # only rounded
    assert m.peak_rss_mb >= 64


def test_system_time_is_the_kernels_share() -> None:
    """A step that spends its time in system calls reports most of its CPU as system time, and never more than all."""
    m = measure.timed("sys", [sys.executable, "-c", SYSCALLS], cold=False)
    assert 0 < m.extra["system_s"] <= m.cpu_s + 0.01
    assert m.extra["system_s"] >= 0.3 * m.cpu_s
