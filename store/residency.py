"""Resident memory of a memory-mapped file: dropping its pages from this process's page tables (Linux).

A read-only shared map (the LMDB cache, store/cache.py) keeps every page a read touched counted in the process's
resident memory until the page is unmapped, although the bytes belong to the page cache: a command that looks up
blobs all over the index would look as large as the file. `drop` unmaps them (madvise MADV_DONTNEED): the bytes
stay in the page cache, the next read maps them again (a minor fault), nothing is written. Safe only for maps whose
user keeps no pointer into them between calls (py-lmdb copies what it returns), and only while the map is the one
`find_map` found: the caller must hold the map open meanwhile (a span of a closed map may belong to other memory).
Elsewhere than Linux a no-op.

`Growth` says when to drop them by what is mapped rather than by how many reads mapped it: a read maps the page it
needs and, by the kernel's fault-around, up to 15 cached neighbours, so a lookup in a large index maps ~64-150 KB
and one in a small index, whose pages are mapped already, nothing. It reads the process's resident file-backed
pages from /proc/self/statm (~2 µs; one pread of a file kept open).
"""

from __future__ import annotations

import ctypes
import os
import sys

_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_trim = getattr(_libc, "malloc_trim", None)  # glibc only (musl has none)
_mallopt = getattr(_libc, "mallopt", None)
_MALLOPT = {"trim_threshold": -1, "mmap_threshold": -3}  # glibc's M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


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


class Growth:
    """How far this process's resident file-backed memory grew since `reset` (never, where /proc/self/statm is not).
    Thread-safe enough for its use: a reading races a reset at worst by one check."""

    def __init__(self) -> None:
        self._fd: tuple[int, int] | None = None  # (pid, fd): a forked child opens its own
        self._base = 0

    def _resident(self) -> int:
        if _libc is None:
            return 0
        try:
            if self._fd is None or self._fd[0] != os.getpid():
                self._fd = (os.getpid(), os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC))
            # size resident shared text lib data dt, in pages; "shared" is the file-backed (and shmem) part
            return int(os.pread(self._fd[1], 128, 0).split()[2]) * _PAGE
        except (OSError, ValueError, IndexError):
            return 0

    def past(self, limit: int) -> bool:
        return self._resident() - self._base >= limit

    def reset(self) -> None:
        self._base = self._resident()


# File-backed bytes a command lets its reads map before it unmaps them (`Cache.trim(grown)`). At 8 MiB the cache's
# pages swung the importing process's Pss by up to ~11 MB between trims at 1 000 000 files (parent 13-20 MB file-backed
# at a first import's peak, 7-8 at 2 MiB); the unchanged re-import's CPU did not move beyond the machine's noise.
TRIM_GROWTH = 2 << 20
_GROWTH = Growth()


def grown(limit: int) -> bool:
    """Whether this process's resident file-backed memory grew `limit` bytes since the last `mark`."""
    return _GROWTH.past(limit)


def mark() -> None:
    _GROWTH.reset()


def set_malloc(**settings: int) -> None:
    """Fix glibc's `mmap_threshold` and/or `trim_threshold` (bytes) for this process; a no-op without glibc. The
    policies that call it say why: cli/allocator.py for each command, sync/catalogshards.py for the parse child."""
    if _mallopt is not None:
        for name, value in settings.items():
            _mallopt(_MALLOPT[name], value)


def release_free_heap() -> None:
    """Give the whole free pages inside glibc's heaps back to the system (`malloc_trim(0)`: each arena's free chunks
    are madvised away, not only the heap's top). A folder import calls it after each shard (store/writer.py
    `seal_shard`): the shard's buffers (listings, rows, the cache's write transactions, on the walk, sealing and pack
    threads, each with its own arena) are freed in an order that leaves holes no later block fills, so at 1 000 000
    files the import's heaps held ~9-10 MB free against ~4-5 at 33 000 (mallinfo2, same moments), and its anonymous
    memory sat ~7 MB higher. Python's own small-object arenas are not glibc's and are not touched. A few ms a call
    at most; a no-op where there is no glibc."""
    if _trim is not None:
        _trim(0)


class IdFilter:
    """The blob ids an index may hold: false positives, never a false negative. A bit per 24-bit prefix of the id
    (ids are keyed hashes, spread evenly): 2 MiB whatever the index's size, ~1.8 % false positives at 300 000 ids,
    ~6 % at 1 000 000. A lookup of an id it lacks (a first import's every new chunk) is answered without touching
    the map: no B-tree descent, no page mapped (store/cache.py `Cache.lookup`)."""

    BITS = 1 << 24

    def __init__(self) -> None:
        self._bits = bytearray(self.BITS >> 3)

    def add(self, blob_id: bytes) -> None:
        i = int.from_bytes(blob_id[:3], "big")
        self._bits[i >> 3] |= 1 << (i & 7)

    def may_hold(self, blob_id: bytes) -> bool:
        i = int.from_bytes(blob_id[:3], "big")
        return bool(self._bits[i >> 3] >> (i & 7) & 1)
