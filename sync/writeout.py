"""Writing a snapshot's files into a local folder (export): small files read ahead a batch at a time and written
from 4 threads, large ones a chunk at a time.

`ReadAhead` cuts the snapshot's shards into batches of at most `ReadAhead.BATCH` bytes of small files, looks their
chunks up in the cache (on the caller's thread: the cache's read transaction is not shared between threads) and
hands each batch to one reader thread, which reads the chunks in (pack, offset) order with neighbours merged into
one read and decrypts them (`Repository.read_located`) while the caller writes the batch before. A chunk the reader
could not give is read again by `take` with `get_blob`, which retries a pack moved by prune and raises the error
that names the file.
A file whose chunks cannot be read back from the vault raises PhonevaultError before anything of it is left behind
(a large file is removed again), so the caller can name it and go on. Memory: two batches of small files (the one
being written, the one being read: 2 × BATCH), at most `FileWriters.MAX_PENDING` bytes of small files waiting for a
writer thread, one chunk of a large file, and the cache pages of at most TRIM_LOOKUPS lookups (store/check.py);
nothing grows with the number of files beyond one shard's entries.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from phonevault.store.check import TRIM_LOOKUPS
from phonevault.store.packs import BlobLocation
from phonevault.store.repository import Repository
from phonevault.store.trees import FileEntry

Progress = Callable[[int, int], None]  # (bytes done, bytes total)


def set_meta(path: Path, e: FileEntry) -> None:
    os.chmod(path, stat.S_IMODE(e.mode))
    os.utime(path, ns=(e.mtime_ns, e.mtime_ns))


class FileWriters:
    """Creates small files from 4 threads: creating a file costs 100–300 µs of syscalls here, and a backup folder
    holds tens of thousands of small ones. The syscalls release the GIL, so they overlap decryption in the caller.
    At most MAX_PENDING bytes wait to be written."""

    SMALL = 4 << 20
    MAX_PENDING = 64 << 20

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="export")
        self._budget = threading.BoundedSemaphore(self.MAX_PENDING // self.SMALL)
        self._futures: list[Future] = []

    def submit(self, path: Path, entry: FileEntry, data: bytes) -> None:
        self._budget.acquire()
        self._futures.append(self._pool.submit(self._write, path, entry, data))
        if len(self._futures) > 256:
            self._reap()

    def _write(self, path: Path, entry: FileEntry, data: bytes) -> None:
        # Mode and times set through the descriptor: by path, each is one more lookup in a folder the other
        # threads are creating files in (they wait for its lock).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, stat.S_IMODE(entry.mode))
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            finally:
                os.close(fd)
        finally:
            self._budget.release()

    def _reap(self) -> None:
        pending = []
        for f in self._futures:
            if f.done():
                f.result()  # re-raise a failed write in the caller
            else:
                pending.append(f)
        self._futures = pending

    def __enter__(self) -> FileWriters:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)
        for f in self._futures:
            f.result()


def write_pieces(
    pieces: Iterable[bytes], local: Path, e: FileEntry, written: Callable[[int], None] | None = None
) -> int:
    """One file written a piece at a time (mode and mtime as `e`); removed again if a piece fails (a chunk that
    cannot be read, a file that does not decrypt): no half file in an export. `written(n)` after each piece; the
    length written."""
    n = 0
    try:
        with open(local, "wb") as f:
            for piece in pieces:
                f.write(piece)
                n += len(piece)
                if written:
                    written(n)
    except BaseException:
        local.unlink(missing_ok=True)
        raise
    set_meta(local, e)
    return n


def write_large(repo: Repository, e: FileEntry, local: Path, progress: Progress | None, done: int, total: int) -> None:
    """One large file of the vault, a chunk at a time, with progress."""
    write_pieces(repo.read_file(e), local, e, (lambda n: progress(done + n, total)) if progress else None)


def small_plain(e: FileEntry) -> bool:
    """A file export writes whole from memory, as stored: what `ReadAhead` reads ahead."""
    return e.size <= FileWriters.SMALL and not e.cipher_key and not e.is_dir


class ReadAhead:
    """The small files of a snapshot's shards, read a batch ahead on one thread (see the module docstring).

    `batches(shards)` yields the entries again in the same order, cut into batches; while the caller handles one
    batch, the next one's chunks are read. `take(e)` gives a small file's bytes from its batch (or raises what
    reading it raises), for files that `wanted(e)` says are read ahead; any other file the caller reads itself."""

    BATCH = 16 << 20  # bytes of small files per batch

    def __init__(self, repo: Repository, wanted: Callable[[FileEntry], bool]) -> None:
        self._repo = repo
        self._wanted = wanted
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-read")
        self._blobs: dict[bytes, bytes] = {}

    def batches(self, shards: Iterable[list[FileEntry]]) -> Iterator[list[FileEntry]]:
        pending: tuple[list[FileEntry], Future] | None = None
        for batch in self._cut(shards):
            ahead = (batch, self._pool.submit(self._repo.read_located, self._locate(batch)))
            if pending is not None:
                yield self._ready(pending)
            pending = ahead
        if pending is not None:
            yield self._ready(pending)
        self._blobs = {}

    def take(self, e: FileEntry) -> bytes:
        blobs = self._blobs
        pieces = [blobs.get(c) for c in e.chunks]
        if any(p is None for p in pieces):  # left out by the reader: read (or fail) the usual way
            return b"".join(self._repo.read_file(e))
        return b"".join(pieces)  # type: ignore[arg-type]

    def _ready(self, pending: tuple[list[FileEntry], Future]) -> list[FileEntry]:
        batch, future = pending
        self._blobs = future.result()
        return batch

    def _cut(self, shards: Iterable[list[FileEntry]]) -> Iterator[list[FileEntry]]:
        for entries in shards:
            batch: list[FileEntry] = []
            size = 0
            for e in entries:
                batch.append(e)
                if self._wanted(e):
                    size += e.size
                    if size >= self.BATCH:
                        yield batch
                        batch, size = [], 0
            if batch:
                yield batch

    def _locate(self, batch: list[FileEntry]) -> list[tuple[bytes, BlobLocation]]:
        ids = {c for e in batch if self._wanted(e) for c in e.chunks}  # a chunk many files share: located once
        out = []
        for i, bid in enumerate(ids, 1):
            if i % TRIM_LOOKUPS == 0:  # each page fault maps ~64 KiB of the cache: unmap as it goes (check.py)
                self._repo.cache.trim()
            if (loc := self._repo.cache.lookup(bid)) is not None:  # a miss: `take` reloads the index, or names it
                out.append((bid, loc))
        return out

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
