"""Resident memory of a memory-mapped file: dropping its pages from this process's page tables (Linux).

A read-only shared map (the LMDB cache, store/cache.py) keeps every page a read touched counted in the process's
resident memory until the page is unmapped, although the bytes belong to the page cache: a command that looks up
blobs all over the index would look as large as the file. `drop_mapped` unmaps them (madvise MADV_DONTNEED): the
bytes stay in the page cache, the next read maps them again (a minor fault), nothing is written. Safe only for maps
whose user keeps no pointer into them between calls (py-lmdb copies what it returns). Elsewhere than Linux a no-op.
"""

from __future__ import annotations

import ctypes
import os
import sys

_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def drop_mapped(path: str) -> None:
    """Unmap the resident pages of every map of `path` (up to the file's size) from this process."""
    if _libc is None:
        return
    path = os.path.realpath(path)
    try:
        size = os.stat(path).st_size
        with open("/proc/self/maps") as maps:
            spans = [line.split(None, 5) for line in maps if line.rstrip("\n").endswith(path)]
    except OSError:
        return
    for fields in spans:
        if len(fields) == 6 and fields[5].strip() == path:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(min(end - start, size)), _MADV_DONTNEED)
