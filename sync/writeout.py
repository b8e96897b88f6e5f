"""Writing a snapshot's files into a local folder (export): small files from 4 threads, large ones a chunk at a time.

A file whose chunks cannot be read back from the vault raises PhonevaultError before anything of it is left behind
(a large file is removed again), so the caller can name it and go on. Memory: at most `FileWriters.MAX_PENDING`
bytes of small files waiting for a thread, and one chunk of a large file.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

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
        try:
            with open(path, "wb") as f:
                f.write(data)
            set_meta(path, entry)
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
