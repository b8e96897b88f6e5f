"""Writing a snapshot's files into a local folder (export): small files read ahead a batch at a time and written
by two threads in bundles, large ones a chunk at a time on two threads.

`ReadAhead` cuts the snapshot's shards into batches of at most `ReadAhead.BATCH` bytes of small files, looks their
chunks up in the cache (on the caller's thread: the cache's read transaction is not shared between threads) and
hands each batch to one reader thread, which reads the chunks in (pack, offset) order with neighbours merged into
one read and decrypts them (`read_located`) while the caller writes the batch before. A chunk the reader
could not give is read again by `take` with `get_blob`, which retries a pack moved by prune and raises the error
that names the file.
A file whose chunks cannot be read back from the vault raises PhonevaultError before anything of it is left behind
(a large file is removed again), so the caller can name it and go on. Memory: two batches of small files (the one
being written, shrinking as its files are taken; the one being read: 2 × BATCH), bundles of small files waiting for
each writer thread (under `FileWriters.WAITING` + BUNDLE + SMALL bytes each), the large files' opened chunks (a
`ChunkReader` on each of two threads, given back after each file), where the second thread's file's chunks are
(`Located`: 33 bytes a chunk), and the cache pages `Repository.locate_needed`'s trim policy lets map; nothing grows
with the number of files beyond one shard's entries and Manifest.db's chunk locations (2 MB at 1 000 000 files).
"""

from __future__ import annotations

import os
import stat
import threading
from array import array
from collections import Counter, deque
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
    """Creates small files on WRITERS (2) threads, handed over in bundles of up to BUNDLE_FILES files or BUNDLE bytes
    of one folder: creating a file costs ~100 µs of syscalls here (most of it ext4's create), a backup folder holds
    up to a million small ones, and the syscalls release the GIL, so they overlap decryption and lookups in the
    caller and each other. One hand-over per file (a future, a semaphore, a queue put and a wake-up each) cost more
    than the file: 30 futex calls a file, 10 of 20 system CPU seconds of a 120 000-file export.
    Each writer has its own queue, and a folder's bundles go to the writer that has some of that folder's waiting,
    else to the one with the fewest bytes waiting: no two writers create files in one folder at once. Two writers
    in one folder (a shared queue: a snapshot's files come a folder, a shard, at a time) queue on the folder's lock
    (i_rwsem) while ext4 looks for a free inode (slow after recent deletes: `recently_deleted`), and spin on it:
    exporting the 1 GB phone that way, 3 rounds alternated (load 9-16), 2 threads 12.0/7.8/16.9 CPU s, 1 thread
    4.6/6.1/15.1. In different folders the creates run side by side. A writer takes no more bundles while WAITING
    bytes or MAX_BUNDLES bundles wait for it (the one being written included), so at most WRITERS × (WAITING +
    BUNDLE + SMALL) bytes wait; enough for the caller to go on to the next folder while the last one is written. A
    file's mode is given to `open` when the umask lets it through unchanged (no `fchmod`); its times are set
    through the descriptor (by path, each is one more lookup in the folder). The first failed write is raised in
    the caller (by `submit` or on leaving the `with`); the rest of the queues is dropped."""

    # Files up to SMALL are read ahead whole and written from memory; larger ones stream through ChunkReader's kept
    # buffers. At 4 MiB, each 1-4 MiB photo got a fresh plaintext block; glibc raised its mmap threshold to the
    # largest freed, so those blocks came from the reading thread's heap, which grew with the bytes exported (export
    # peak 70-75 MB at 1 GB, 82-86 MB at 3.3 GB); at 1 MiB both are 66 MB, CPU the same (3 rounds each, tmpfs target).
    SMALL = 1 << 20
    BUNDLE = 1 << 20
    BUNDLE_FILES = 64
    # Bytes waiting per writer. On the 6 GB phone, 4 waiting bundles of one writer (each could hold a 4 MiB file) and
    # 16 MiB batches had export peak 113-130 MB (in-process, under load), 2 and 8 MiB 87-104 MB.
    WAITING = 2 << 20
    MAX_BUNDLES = 16
    WRITERS = 2

    def __init__(self, writers: int | None = None) -> None:
        self._umask = _umask()
        self._cv = threading.Condition()
        self._bundle: list[tuple[str, bytes | memoryview, int, int]] = []
        self._bytes = 0
        self._folder: str | None = None  # the folder of the bundle being filled
        self._to: _Queue | None = None  # the writer that folder's bundles go to
        self._last: _Queue | None = None  # the writer the last folder went to
        self._error: BaseException | None = None
        self._closed = False
        n = self.WRITERS if writers is None else writers
        self._queues = [_Queue() for _ in range(n)]
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name=f"export-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for t in self._threads:
            t.start()

    def submit(self, path: str | Path, entry: FileEntry, data: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        path = os.fspath(path)
        folder = path[: path.rfind("/") + 1]
        if folder != self._folder:
            self._flush()
            self._folder, self._to = folder, None
        self._bundle.append((path, data, stat.S_IMODE(entry.mode), entry.mtime_ns))
        self._bytes += len(data)
        if self._bytes >= self.BUNDLE or len(self._bundle) >= self.BUNDLE_FILES:
            self._flush()

    def _flush(self) -> None:
        bundle, n, self._bundle, self._bytes = self._bundle, self._bytes, [], 0
        if not bundle:
            return
        if not self._threads:
            self._write(bundle)
            return
        with self._cv:
            if (q := self._to) is None:  # a new folder: the writer that still has some of it, else the one with the
                last, folder = self._last, self._folder  # least to do (not the last folder's on a tie)
                held = [q for q in self._queues if folder in q.folders]
                q = held[0] if held else min(self._queues, key=lambda q: (q.bytes, len(q.bundles), q is last))
                self._to = self._last = q
            while self._error is None and (q.bytes >= self.WAITING or len(q.bundles) >= self.MAX_BUNDLES):
                self._cv.wait()
            if self._error is not None:
                raise self._error
            q.bundles.append((bundle, n, self._folder))
            q.bytes += n
            q.folders[self._folder] += 1
            self._cv.notify_all()

    def _run(self, q: _Queue) -> None:
        cv = self._cv
        while True:
            with cv:
                while not q.bundles and not self._closed:
                    cv.wait()
                if not q.bundles:
                    return
                bundle, n, folder = q.bundles[0]  # left in the queue (and counted) while it is written
            try:
                if self._error is None:
                    self._write(bundle)
            except BaseException as e:  # noqa: BLE001  (raised again in the caller's thread)
                self._error = e
            finally:
                with cv:
                    q.bundles.popleft()
                    q.bytes -= n
                    if (left := q.folders[folder] - 1) > 0:
                        q.folders[folder] = left
                    else:
                        del q.folders[folder]
                    cv.notify_all()

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
        try:
            if exc_type is None:
                self._flush()
        finally:
            self._close(exc_type is not None)
        if exc_type is None and self._error is not None:
            raise self._error

    def _close(self, failed: bool) -> None:
        self._bundle = []
        with self._cv:
            if failed:  # nothing more is written: the queued bundles are dropped
                for q in self._queues:
                    while len(q.bundles) > 1:
                        q.bundles.pop()
            self._closed = True
            self._cv.notify_all()
        for t in self._threads:
            t.join()


class _Queue:
    """One writer thread's bundles (the first is being written), their bytes and their folders."""

    __slots__ = ("bundles", "bytes", "folders")

    def __init__(self) -> None:
        self.bundles: deque[tuple[list, int, str | None]] = deque()
        self.bytes = 0
        self.folders: Counter[str | None] = Counter()


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


class LargeWriter:
    """Large files written on one more thread beside the caller's: writing a phone's media is mostly the kernel
    copying into the page cache (23 of 29 CPU s exporting the 6 GB phone on one thread), which two threads do side
    by side. `offer(e, local)` hands `e` to the thread when it is free, with every chunk located on the caller's
    thread (the cache is not shared between threads), and says whether it did; otherwise the caller writes `e`
    itself. The thread reads with a ChunkReader of its own (its buffers and pack descriptor) and never asks the
    cache: a file it cannot read as located (a pack moved by prune, damage, a failed write) is removed and given
    back by `returned()`, for the caller to write the usual way, which retries a move and names what is damaged.
    Memory: one more ChunkReader's buffers (the largest chunk sealed, opened and decompressed) and where the file's
    chunks are (`Located`, 33 bytes a chunk) while it writes."""

    def __init__(self, repo: Repository) -> None:
        self._repo = repo
        self._reader = ChunkReader(repo)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export-large")
        self._busy: Future[None] | None = None
        self._back: list[tuple[FileEntry, str]] = []  # files the thread did not write

    def offer(self, e: FileEntry, local: str) -> bool:
        if self._busy is not None and not self._busy.done():
            return False
        located = Located()
        for c in e.chunks:
            if (loc := self._repo.locate_needed(c)) is None:
                return False
            located.append(loc)
        self._busy = self._pool.submit(self._write, e, local, located)
        return True

    def _write(self, e: FileEntry, local: str, located: Located) -> None:
        try:
            write_pieces(self._reader.located_pieces(e, located), local, e)
        except Exception:  # noqa: BLE001  (the caller writes it again, and meets the error itself)
            self._back.append((e, local))

    def returned(self) -> list[tuple[FileEntry, str]]:
        """The files handed over that the thread did not write, once it has finished them all."""
        if self._busy is not None:
            self._busy.result()
        back, self._back = self._back, []
        return back

    def __enter__(self) -> LargeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reader.__exit__()


class Located:
    """Where each chunk of one large file is (`located[i]`, a BlobLocation made when asked for), kept in arrays while
    LargeWriter writes the file: a list of BlobLocations costs ~270 bytes a chunk (the object, its pack's name, its
    ints), 16.6 MB for a 1 000 000-file phone's Manifest.db (60 968 chunks), held the ~7.5 s it took to write; here
    33 bytes a chunk (2 MB) and each pack's name once."""

    __slots__ = ("_index", "_length", "_offset", "_pack", "_packs", "_raw_length", "_type")

    def __init__(self) -> None:
        self._packs: list[str] = []
        self._index: dict[str, int] = {}
        self._pack = array("I")
        self._offset, self._length, self._raw_length = array("Q"), array("Q"), array("Q")
        self._type = array("B")

    def append(self, loc: BlobLocation) -> None:
        if (i := self._index.get(loc.pack)) is None:
            i = self._index[loc.pack] = len(self._packs)
            self._packs.append(loc.pack)
        self._pack.append(i)
        self._offset.append(loc.offset)
        self._length.append(loc.length)
        self._raw_length.append(loc.raw_length)
        self._type.append(loc.type)

    def __len__(self) -> int:
        return len(self._pack)

    def __getitem__(self, i: int) -> BlobLocation:
        return BlobLocation(
            self._packs[self._pack[i]], self._offset[i], self._length[i], self._raw_length[i], self._type[i]
        )


def small_plain(e: FileEntry) -> bool:
    """A file export writes whole from memory, as stored: what `ReadAhead` reads ahead."""
    return e.size <= FileWriters.SMALL and not e.cipher_key and not e.is_dir


class ReadAhead:
    """The small files of a snapshot's shards, read a batch ahead on one thread (see the module docstring).

    `batches(shards)` yields the entries again in the same order, cut into batches; while the caller handles one
    batch, the next one's chunks are read. `take(e)` gives a small file's bytes from its batch (or raises what
    reading it raises), for files that `wanted(e)` says are read ahead; any other file the caller reads itself."""

    BATCH = 8 << 20  # bytes of small files per batch (two are held: see FileWriters.WAITING for what 16 cost)

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
