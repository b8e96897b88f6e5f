"""Reading a shard's small files for import out of the import's process: `SmallReads` hands them over in the walk's
order, ≤ 8 MiB ahead; `ReaderProcess` is the child process (this interpreter, `serve_reads`) that reads them.
Split from sync/folderwalk.py, which lists the shards; used by sync/mobilesync.py.
"""

from __future__ import annotations

import fcntl
import os
import queue
import select
import struct
import subprocess
import sys
import threading
from array import array
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

from .folderwalk import ReadAhead


class SmallReads:
    """Reads the small files of a shard (< ReadAhead.MIN_SIZE, which advises the larger ones) in a `ReaderProcess`,
    in batches of ≤ BATCH_FILES files or ≥ BATCH_BYTES, up to WINDOW listed bytes or WINDOW_FILES files ahead of the
    one being staged; the caller takes each file's bytes in the walk's order (packs come out the same whatever the
    reader's timing).

    `take(i)` gives file i's bytes, the OSError that reading it raised, or None: not read here (a large file, or
    one that grew past MIN_SIZE since it was listed: the caller streams it). Read to EOF, so a file that changed
    since it was listed comes back as it was read. Memory: ≤ WINDOW + one batch of file contents, and ~250 bytes a
    file asked for (its path, its request, its answer's object), for ≤ WINDOW_FILES + BATCH_FILES files."""

    MAX = ReadAhead.MIN_SIZE  # read here if listed smaller than this
    WINDOW = 8 << 20
    # The files of a 1 000 000-file phone average ~300 bytes, so 8 MiB was ~28 000 files, and each shard's ~3 900
    # were asked for at once (a shard's reads begin when the last one's are all asked): ~2 MB of paths and requests
    # in this process and as much in the reader's, growing with the files. 1 024 is 16 batches in flight.
    WINDOW_FILES = 1024
    BATCH_FILES = 64
    BATCH_BYTES = 1 << 20

    def __init__(self, reader: ReaderProcess, paths: list[str], sizes: list[int], window: list[int]) -> None:
        self._reader, self._paths, self._sizes = reader, paths, sizes
        self._batches: deque[tuple[int, list[int], int]] = deque()  # (first index, indices, the reader's ticket)
        self._got: dict[int, bytes | OSError | None] = {}  # taken from a finished batch, not yet by the caller
        self._next = 0  # first file not yet submitted
        self._window = window  # [listed bytes, files] submitted and not yet taken, shared with the next shard's reads

    @property
    def all_asked(self) -> bool:
        """Every file of the shard is asked for: the next shard's reads may begin (in what is left of the window)."""
        return self._next >= len(self._paths)

    def fill(self) -> None:
        n = len(self._paths)
        while self._next < n and self._window[0] < self.WINDOW and self._window[1] < self.WINDOW_FILES:
            batch, size = [], 0
            while self._next < n and len(batch) < self.BATCH_FILES and size < self.BATCH_BYTES:
                if self._sizes[self._next] < self.MAX:
                    batch.append(self._next)
                    size += self._sizes[self._next]
                self._next += 1
            if batch:
                ticket = self._reader.submit([(self._paths[i], self._sizes[i]) for i in batch])
                self._batches.append((batch[0], batch, ticket))
                self._window[0] += size
                self._window[1] += len(batch)

    def take(self, i: int) -> bytes | OSError | None:
        self.fill()
        while i not in self._got and self._batches and self._batches[0][0] <= i:
            _first, batch, ticket = self._batches.popleft()
            self._got.update(zip(batch, self._reader.result(ticket), strict=True))
        if i not in self._got:
            return None  # a file not read here
        self._window[0] -= self._sizes[i]
        self._window[1] -= 1
        got = self._got.pop(i)
        self.fill()
        return got

    def close(self) -> None:
        """Drop the batches not taken (an import that stops early): their results are discarded as they arrive."""
        for _first, batch, ticket in self._batches:
            self._reader.discard(ticket)
            self._window[0] -= sum(self._sizes[i] for i in batch)
            self._window[1] -= len(batch)
        self._window[0] -= sum(self._sizes[i] for i in self._got)
        self._window[1] -= len(self._got)
        self._batches.clear()
        self._got.clear()


def _read_small(files: list[tuple[str | bytes, int]]) -> list[bytes | OSError | None]:
    """Each file's bytes to EOF (None once it holds MAX or more: the caller streams it). The first read asks for one
    byte more than listed: a regular file's read comes back short only at its end, so an unchanged file costs one
    read, and one that grew is read on to its end."""
    out: list[bytes | OSError | None] = []
    limit = SmallReads.MAX
    for path, listed in files:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                want = min(listed + 1, limit)
                data = os.read(fd, want)
                if len(data) == want:  # grew since it was listed (or is exactly at the limit): on to its end
                    parts, total = [data], len(data)
                    while total < limit and (block := os.read(fd, limit - total)):
                        parts.append(block)
                        total += len(block)
                    data = None if total >= limit else b"".join(parts)
            finally:
                os.close(fd)
        except OSError as e:
            out.append(e)
            continue
        out.append(data)
    return out


# Frames between ReaderProcess and its child, both ways: kind (1 byte), n (u32), n signed 64-bit numbers, then bytes.
#   request  b"R": n files: their listed sizes, then n u32 path lengths, then the paths (os.fsencode);
#   reply    b"R": n results in request order: ≥ 0 the length of the file's bytes (which follow, concatenated),
#                  -1 not read here (None), ≤ -2 an OSError with errno -2 - code.
_HEAD = struct.Struct("<cI")


class ReaderProcess:
    """A child process (this interpreter, `serve_reads`) that reads small files for the import, so that those syscalls
    cost the import's threads nothing.

    Why a process and not reader threads: each open, read and close gives up the GIL, and getting it back waits
    behind whichever thread holds it; on 300 000 small files four reader threads made the import's own thread wait
    ~4 s warm and ~46 s on a cold disk for their batches, and every LMDB lookup and hash of the import's thread
    waited behind them in turn (~30 µs each instead of ~1 µs). Here a batch of 64 files costs the import one pipe
    read. The child reads each batch with READERS threads of its own (a cold disk wants several reads in flight)
    and answers in request order.

    Tickets are answered strictly in order; `discard` drops a ticket's answer when it comes. The child starts with
    the first `submit` (none for an import that reads no small file). If the child cannot be started or dies, every
    batch not yet answered is read here instead (`_read_small`), so the import goes on.
    Memory: the batches asked for and not yet taken (bounded by the callers' window, SmallReads.WINDOW and
    WINDOW_FILES) and the pipes' buffers (PIPE_BYTES each way, filled only as far as that window: the requests of
    1 024 files are ~0.15 MiB of paths, so `submit` does not wait on a child busy reading)."""

    READERS = 4
    PIPE_BYTES = 1 << 20
    READ_BYTES = 256 << 10  # below the import's mmap threshold (1 MiB): a read's buffer is reused, not mapped

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._asked: deque[tuple[int, list[tuple[str, int]]]] = deque()  # (ticket, files)
        self._answers: dict[int, list[bytes | OSError | None]] = {}
        self._discarded: set[int] = set()
        self._buf = bytearray()
        self._tickets = 0
        self._started = False

    def _start(self) -> None:
        """The child, started at the first batch rather than with the import: an unchanged re-import reads no file,
        and a Python start-up (~0.07 CPU s, ~3 % of an unchanged 6 GB re-import) bought it nothing."""
        self._started = True
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-P", "-c", "from phonevault.sync.smallreads import serve_reads; serve_reads()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
            )
        except OSError:
            return
        for pipe in (self._proc.stdin, self._proc.stdout):  # room for the window's batches (Linux; else 64 KiB)
            with suppress(OSError):
                fcntl.fcntl(pipe.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), self.PIPE_BYTES)

    def __enter__(self) -> ReaderProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.stdin.close()
            proc.stdout.close()
            proc.wait()

    def _send(self, kind: bytes, sizes: list[int], paths: list[bytes]) -> bool:
        if self._proc is None:
            return False
        frame = b"".join(
            (_HEAD.pack(kind, len(sizes)), array("q", sizes).tobytes(), array("I", map(len, paths)).tobytes(), *paths)
        )
        try:
            view = memoryview(frame)
            while view:  # the child takes requests as they come, so this never waits on its answers
                view = view[self._proc.stdin.write(view) :]
        except (OSError, ValueError):
            self._died()
            return False
        return True

    def submit(self, files: list[tuple[str, int]]) -> int:
        ticket = self._tickets
        self._tickets += 1
        self._asked.append((ticket, files))
        if not self._started:
            self._start()
        self._send(b"R", [size for _p, size in files], [os.fsencode(p) for p, _s in files])
        return ticket

    def discard(self, ticket: int) -> None:
        if self._answers.pop(ticket, None) is None:
            self._discarded.add(ticket)

    def result(self, ticket: int) -> list[bytes | OSError | None]:
        while ticket not in self._answers:
            if self._proc is None:
                self._read_here(ticket)
            else:
                self._pump(block=True)
        return self._answers.pop(ticket)

    def _read_here(self, upto: int) -> None:
        """Without a child: read every batch asked for up to `upto` here, in order."""
        while self._asked and self._asked[0][0] <= upto:
            ticket, files = self._asked.popleft()
            if ticket not in self._discarded:
                self._answers[ticket] = _read_small(files)
            self._discarded.discard(ticket)

    def _died(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with suppress(OSError):
                proc.kill()
            proc.wait()

    def _pump(self, *, block: bool) -> None:
        """Read what the child has sent (at least one frame if `block`) and file each answer under its ticket."""
        fd = self._proc.stdout.fileno()
        while True:
            if not block and not select.select([fd], [], [], 0)[0]:
                return
            try:
                chunk = os.read(fd, self.READ_BYTES)
            except OSError:
                chunk = b""
            if not chunk:  # the child died: what it did not answer is read here
                self._died()
                return
            self._buf += chunk
            if self._frames() and block:
                return

    def _frames(self) -> int:
        """File every complete frame in the buffer; how many."""
        done, pos, buf = 0, 0, self._buf
        while len(buf) - pos >= _HEAD.size:
            _kind, n = _HEAD.unpack_from(buf, pos)
            codes = array("q")
            end = pos + _HEAD.size + 8 * n
            if len(buf) < end:
                break
            codes.frombytes(buf[pos + _HEAD.size : end])
            need = sum(c for c in codes if c > 0)
            if len(buf) < end + need:
                break
            out: list[bytes | OSError | None] = []
            at = end
            for c in codes:
                if c >= 0:
                    out.append(bytes(buf[at : at + c]))
                    at += c
                else:
                    out.append(None if c == -1 else OSError(-2 - c, os.strerror(-2 - c)))
            if not self._asked:
                raise RuntimeError("the reader process answered a batch it was not asked for")
            ticket = self._asked.popleft()[0]
            if ticket in self._discarded:
                self._discarded.discard(ticket)
            else:
                self._answers[ticket] = out
            pos, done = at, done + 1
        del buf[:pos]
        return done


def serve_reads() -> None:
    """The child of ReaderProcess: answers its frames on stdin until stdin ends (the import ended or died)."""
    pool = ThreadPoolExecutor(ReaderProcess.READERS, "read")
    answers: queue.Queue = queue.Queue()
    lock = threading.Lock()

    def send(frame: bytes) -> None:
        with lock:
            view = memoryview(frame)
            try:
                while view:
                    view = view[os.write(1, view) :]
            except OSError:  # the import is gone
                os._exit(0)

    def writer() -> None:
        while (future := answers.get()) is not None:
            send(future.result())

    threading.Thread(target=writer, daemon=True).start()
    while True:
        _kind, n = _HEAD.unpack(_read_exact(0, _HEAD.size))
        sizes, lengths = array("q"), array("I")
        sizes.frombytes(_read_exact(0, 8 * n))
        lengths.frombytes(_read_exact(0, 4 * n))
        names = _read_exact(0, sum(lengths))
        paths, at = [], 0
        for length in lengths:
            paths.append(names[at : at + length])
            at += length
        answers.put(pool.submit(_answer, list(zip(paths, sizes, strict=True))))


def _answer(files: list[tuple[bytes, int]]) -> bytes:
    codes, data = array("q"), []
    for got in _read_small(files):
        if isinstance(got, OSError):
            codes.append(-2 - (got.errno or 5))
        elif got is None:
            codes.append(-1)
        else:
            codes.append(len(got))
            data.append(got)
    return b"".join((_HEAD.pack(b"R", len(codes)), codes.tobytes(), *data))


def _read_exact(fd: int, n: int) -> bytes:
    """n bytes from fd; at its end (the import closed the pipe, or died) the child exits: nothing waits for it."""
    parts, got = [], 0
    while got < n:
        block = os.read(fd, n - got)
        if not block:
            os._exit(0)
        parts.append(block)
        got += len(block)
    return b"".join(parts)
