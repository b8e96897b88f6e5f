"""The kernel's own account of the mapping that holds a buffer: its /proc/self/smaps fields (Linux)."""

from __future__ import annotations

import ctypes


def mapping_field(buf, field: str) -> str:
    """The value of `field` ("Rss", "VmFlags", ...) in /proc/self/smaps for the mapping holding `buf`'s first byte."""
    probe = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(probe)
    del probe
    region = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                region = lo <= addr < hi
            elif region and line.startswith(field + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError("buffer not found in /proc/self/smaps")
