"""Resident memory of a memory-mapped file: dropping its pages from this process's page tables (Linux).

A read-only shared map (the LMDB cache, store/cache.py) keeps every page a read touched counted in the process's
resident memory until the page is unmapped, although the bytes belong to the page cache: a command that looks up
blobs all over the index would look as large as the file. `drop` unmaps them (madvise MADV_DONTNEED): the bytes
stay in the page cache, the next read maps them again (a minor fault), nothing is written. Safe only for maps whose
user keeps no pointer into them between calls (py-lmdb copies what it returns), and only while the map is the one
`find_map` found: the caller must hold the map open meanwhile (a span of a closed map may belong to other memory).
Elsewhere than Linux a no-op.
"""

from __future__ import annotations

import ctypes
import os
import sys

_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def find_map(path: str) -> tuple[int, int] | None:
    """(start, end) of this process's map of `path`, read from /proc/self/maps; None if there is none (or not Linux)."""
    if _libc is None:
        return None
    path = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) == 6 and fields[5].rstrip("\n") == path:
                    start, end = (int(x, 16) for x in fields[0].split("-"))
                    return start, end
    except OSError:
        pass
    return None


def drop(span: tuple[int, int], path: str) -> None:
    """Unmap the resident pages of `span` (a map of `path`, still open) up to the file's size."""
    if _libc is None:
        return
    try:
        size = os.stat(path).st_size
    except OSError:
        return
    start, end = span
    _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(min(end - start, size)), _MADV_DONTNEED)
