"""Writing a snapshot's files into a local folder (export): small files read ahead a batch at a time and written
by one thread in bundles, large ones a chunk at a time.

`ReadAhead` cuts the snapshot's shards into batches of at most `ReadAhead.BATCH` bytes of small files, looks their
chunks up in the cache (on the caller's thread: the cache's read transaction is not shared between threads) and
hands each batch to one reader thread, which reads the chunks in (pack, offset) order with neighbours merged into
one read and decrypts them (`read_located`) while the caller writes the batch before. A chunk the reader
could not give is read again by `take` with `get_blob`, which retries a pack moved by prune and raises the error
that names the file.
A file whose chunks cannot be read back from the vault raises PhonevaultError before anything of it is left behind
(a large file is removed again), so the caller can name it and go on. Memory: two batches of small files (the one
being written, shrinking as its files are taken; the one being read: 2 × BATCH), at most `FileWriters.MAX_BUNDLES`
bundles of small files (each under BUNDLE + SMALL bytes) waiting for a writer thread, a large file's opened chunk
(`ChunkReader`, given back after the file), and the cache pages `Repository.locate_needed`'s trim policy lets map;
nothing grows with the number of files beyond one shard's entries.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import zstandard

from phonevault.store.crypto import OVERHEAD
from phonevault.store.errors import CorruptObject, PhonevaultError
from phonevault.store.packs import STORED, ZSTD, BlobLocation, dctx, pack_name
from phonevault.store.repository import ChunkReader, Repository
from phonevault.store.trees import FileEntry

Progress = Callable[[int, int], None]  # (bytes done, bytes total)
MERGE_GAP = 64 << 10  # read through a gap this small rather than seek past it (a pack's other files' blobs)
MERGED_READ = 4 << 20  # one read of neighbouring blobs is at most this long
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_REPLACE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def set_meta(path: str | Path, e: FileEntry) -> None:
    os.chmod(path, stat.S_IMODE(e.mode))
    os.utime(path, ns=(e.mtime_ns, e.mtime_ns))


def _umask() -> int | None:
    """This process's umask, read without changing it (Linux: /proc/self/status), or None where it cannot be."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


class FileWriters:
    """Creates small files on WRITERS (1) thread, handed over in bundles of up to BUNDLE_FILES files or BUNDLE bytes:
    creating a file costs ~100 µs of syscalls here (most of it ext4's create), a backup folder holds up to a million
    small ones, and the syscalls release the GIL, so they overlap decryption and lookups in the caller. One hand-over
    per file (a future, a semaphore, a queue put and a wake-up each) cost more than the file: 30 futex calls a file,
    10 of 20 system CPU seconds of a 120 000-file export, with four threads queueing on one folder's lock and the GIL.
    At most MAX_BUNDLES bundles wait (each under BUNDLE + SMALL bytes). A file's mode is given to `open` when the
    umask lets it through unchanged (no `fchmod`); its times are set through the descriptor (by path, each is one
    more lookup in the folder). One thread, not two: a snapshot's files come a folder (shard) at a time, so two
    writers create files in one folder, and while one create holds the folder's lock (i_rwsem) and ext4 looks for
    a free inode (slow after recent deletes: `recently_deleted`), the other spins on it. Exporting the 1 GB phone,
    3 rounds alternated (load 9-16): 2 threads 12.0/7.8/16.9 CPU s, 33.5/21.2/48.4 s; 1 thread 4.6/6.1/15.1 CPU s,
    14.0/14.8/50.0 s (the third round ~2 minutes after deleting 4 exports). The first failed write is raised in
    the caller (by `submit` or on leaving the `with`); the rest of the queue is dropped."""

    SMALL = 4 << 20
    BUNDLE = 1 << 20
    BUNDLE_FILES = 64
    # 2, not 4: each waiting bundle may hold a 4 MiB file; on the 6 GB phone, 4 waiting bundles and 16 MiB batches
    # had export peak 113-130 MB (in-process, under load), 2 and 8 MiB 87-104 MB.
    MAX_BUNDLES = 2
    WRITERS = 1

    def __init__(self, writers: int | None = None) -> None:
        self._umask = _umask()
        self._queue: queue.SimpleQueue[list | None] = queue.SimpleQueue()
        self._budget = threading.BoundedSemaphore(self.MAX_BUNDLES)
        self._bundle: list[tuple[str, bytes | memoryview, int, int]] = []
        self._bytes = 0
        self._error: BaseException | None = None
        n = self.WRITERS if writers is None else writers
        self._threads = [threading.Thread(target=self._run, name=f"export-{i}", daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def submit(self, path: str | Path, entry: FileEntry, data: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        self._bundle.append((os.fspath(path), data, stat.S_IMODE(entry.mode), entry.mtime_ns))
        self._bytes += len(data)
        if self._bytes >= self.BUNDLE or len(self._bundle) >= self.BUNDLE_FILES:
            self._flush()

    def _flush(self) -> None:
        bundle, self._bundle, self._bytes = self._bundle, [], 0
        if not bundle:
            return
        if not self._threads:
            self._write(bundle)
            return
        self._budget.acquire()
        self._queue.put(bundle)

    def _run(self) -> None:
        while (bundle := self._queue.get()) is not None:
            try:
                if self._error is None:
                    self._write(bundle)
            except BaseException as e:  # noqa: BLE001  (raised again in the caller's thread)
                self._error = e
            finally:
                self._budget.release()

    def _write(self, bundle: list[tuple[str, bytes | memoryview, int, int]]) -> None:
        umask = self._umask
        for path, data, mode, mtime_ns in bundle:
            by_open = umask is not None and not mode & (umask | 0o7000)  # set-id and sticky bits: always fchmod
            try:
                fd = os.open(path, _NEW, mode if by_open else 0o600)
            except FileExistsError:  # a path written twice (not in a fresh export's tree): replaced, as before
                fd, by_open = os.open(path, _REPLACE), False
            try:
                n = os.write(fd, data)
                if n < len(data):  # a short write: the rest
                    view = memoryview(data)[n:]
                    while view:
                        view = view[os.write(fd, view) :]
                if not by_open:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)

    def __enter__(self) -> FileWriters:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self._flush()
        else:
            self._bundle = []
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
        if exc_type is None and self._error is not None:
            raise self._error


def write_pieces(
    pieces: Iterable[bytes | memoryview], local: str | Path, e: FileEntry, written: Callable[[int], None] | None = None
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
        with suppress(FileNotFoundError):
            os.unlink(local)
        raise
    set_meta(local, e)
    return n


def write_large(
    chunks: ChunkReader, e: FileEntry, local: str | Path, progress: Progress | None, done: int, total: int
) -> None:
    """One large file of the vault, a chunk at a time (opened into ChunkReader's kept buffer), with progress."""
    write_pieces(chunks.pieces(e), local, e, (lambda n: progress(done + n, total)) if progress else None)


def small_plain(e: FileEntry) -> bool:
    """A file export writes whole from memory, as stored: what `ReadAhead` reads ahead."""
    return e.size <= FileWriters.SMALL and not e.cipher_key and not e.is_dir


class ReadAhead:
    """The small files of a snapshot's shards, read a batch ahead on one thread (see the module docstring).

    `batches(shards)` yields the entries again in the same order, cut into batches; while the caller handles one
    batch, the next one's chunks are read. `take(e)` gives a small file's bytes from its batch (or raises what
    reading it raises), for files that `wanted(e)` says are read ahead; any other file the caller reads itself."""

    BATCH = 8 << 20  # bytes of small files per batch (two are held: see FileWriters.MAX_BUNDLES for what 16 cost)

    def __init__(self, repo: Repository, wanted: Callable[[FileEntry], bool]) -> None:
        self._repo = repo
        self._wanted = wanted
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-read")
        self._blobs: dict[bytes, bytes | memoryview] = {}
        self._uses: Counter[bytes] = Counter()  # files of the batch yet to take each chunk

    def batches(self, shards: Iterable[list[FileEntry]]) -> Iterator[list[FileEntry]]:
        pending: tuple[list[FileEntry], Future] | None = None
        for batch in self._cut(shards):
            ahead = (batch, self._pool.submit(read_located, self._repo, self._locate(batch)))
            if pending is not None:
                yield self._ready(pending)
            pending = ahead
        if pending is not None:
            yield self._ready(pending)
        self._blobs = {}

    def take(self, e: FileEntry) -> bytes | memoryview:
        """`e`'s bytes (one chunk's as the reader gave them: a view of its own buffer). A chunk goes from the batch
        once the last file of the batch that needs it has taken it, so a batch shrinks as its files are handed to
        the writers instead of being held whole until the next one is ready."""
        blobs, uses = self._blobs, self._uses
        pieces = [blobs.get(c) for c in e.chunks]
        for c in e.chunks:
            if (left := uses.get(c, 0) - 1) <= 0:
                blobs.pop(c, None)
                uses.pop(c, None)
            else:
                uses[c] = left
        if any(p is None for p in pieces):  # left out by the reader: read (or fail) the usual way
            return b"".join(self._repo.read_file(e))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)  # type: ignore[return-value,arg-type]

    def _ready(self, pending: tuple[list[FileEntry], Future]) -> list[FileEntry]:
        batch, future = pending
        self._blobs = {}  # the last batch's leftovers (files the caller did not take) go before this one is held
        self._blobs = future.result()
        self._uses = Counter(c for e in batch if self._wanted(e) for c in e.chunks)
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
        for bid in ids:  # the cache's pages unmapped as locate_needed's one policy says (store/repository.py)
            if (loc := self._repo.locate_needed(bid)) is not None:  # a miss: `take` names it
                out.append((bid, loc))
        return out

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def read_located(repo: Repository, located: list[tuple[bytes, BlobLocation]]) -> dict[bytes, bytes | memoryview]:
    """The plaintexts (bytes, or a view of a buffer of their own) of blobs already located (blob id -> where), read
    in (pack, offset) order with neighbours merged into one read of up to MERGED_READ bytes, gaps of up to MERGE_GAP
    read through: one read per run of a pack instead of one per blob. Touches no cache, so it may run on another
    thread than the lookups. A blob that cannot be read or opened here (a pack moved by prune, a short read, damage)
    is left out: the caller reads it again with `get_blob`, which retries a move and raises the error that names it."""
    out: dict[bytes, bytes] = {}
    todo = sorted(((loc.pack, loc.offset, loc.length, bid) for bid, loc in located), key=lambda t: t[:2])
    i = 0
    while i < len(todo):
        pack, start, length, _ = todo[i]
        end, j = start + length, i + 1
        while j < len(todo):
            p2, off2, len2, _ = todo[j]
            if p2 != pack or off2 - end > MERGE_GAP or off2 + len2 - start > MERGED_READ:
                break
            end, j = max(end, off2 + len2), j + 1
        name = pack_name(pack)
        try:
            data = repo.backend.get_range(name, start, end - start)
        except PhonevaultError:
            data = b""
        view = memoryview(data)
        for _p, off, ln, bid in todo[i:j]:
            if bid in out or off - start + ln > len(data):
                continue
            try:
                out[bid] = _open_one(repo, bid, view[off - start : off - start + ln], name)
            except PhonevaultError:
                pass
        i = j
    return out


def _open_one(repo: Repository, blob_id: bytes, sealed: memoryview, name: str) -> bytes | memoryview:
    """A blob's plaintext opened straight out of a merged read into a buffer of its own: a stored blob's is a
    view of it past the flag byte (`open_blob` copied the sealed bytes, the ciphertext, and the payload)."""
    n = len(sealed) - OVERHEAD
    buf = bytearray(max(n, 0) + 15)
    repo.key.open_into(sealed, blob_id, name, buf)
    view = memoryview(buf)[:n]
    if n and view[0] == STORED[0]:
        return view[1:]
    if n and view[0] == ZSTD[0]:
        try:
            return dctx().decompress(view[1:])
        except zstandard.ZstdError as e:
            raise CorruptObject(name, f"blob {blob_id.hex()[:16]} does not decompress: {e}") from None
    raise CorruptObject(name, f"blob {blob_id.hex()[:16]} has unknown flag {bytes(view[:1])!r}")
