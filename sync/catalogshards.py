"""A Manifest.db catalog a shard at a time: parsed, compared with the folder, cached and read back in fileID-prefix
shards (`xx` = the fileID's first two characters, the folder's own `xx/` sharding), so no command holds every row.

Parse. Rows are read `ORDER BY fileID` (sync/manifest.py), so a shard's rows are neighbours; each row is packed as it is
read, each shard sent once its last row is: [shard, rows (msgpack of the catalog._row packs, on their own: the cache's
value for the shard, which the import spools and caches as is, and compares with the folder a row at a time,
`CatalogShard.file_rows`), their number, the row problems read since the previous shard ([path, message] as
catalog._row_problem), the duplicate-fileID problems of this shard, this shard's fresh memo packed on its own, the
cache's value as is (nil if it equals the old memo's shard, which the cache keeps)]. An import parses in a forked
child (decoding MBFile archives is pure Python; on the other core it overlaps the reads and sealing) which sends each
packed shard through a pipe as it is done, at most PIPE_AHEAD bytes ahead of the import (the pipe's buffer, in the
kernel): the parent compares it with the folder's shard and spools it. Without a second process the same generator
runs in the parent, pulled shard by shard.

MBFile memo: sync/mbfilememo.py (what the parse child is given, what it sends back).

The cache of a parsed catalog (a shard read back at a time, an import compared with it): sync/catalogcache.py.

Memory: the shard being parsed packed as its rows are read (~130 bytes a row at 1 000 000 files; the rows of one
fileID as CatalogEntry objects) with its fresh memo (the values it used), the packed rows of the shards the parent
holds (~130 bytes a row, ~3 shards), two shards of the old memo packed (sync/mbfilememo.py), the problems; a shard
read back from the cache as CatalogEntry objects; a Manifest.db from the vault is read through a sealed image in the
cache (sync/sealeddb.py), so SQLite holds its page cache (2 MB at most), not the file. The parse child's blocks of
SHARD_BUFFER or more are maps of their own, so a shard's buffers, once freed, leave no hole in its heap.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import io
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import msgpack

from phonevault.store.repository import Repository
from phonevault.store.residency import TRIM_GROWTH, set_malloc
from phonevault.store.spool import Spool

from .errors import ManifestInvalid
from .layouts import MANIFEST_DB
from .manifest import FLAG_FILE, CatalogEntry, ManifestSource, RowProblem, check_manifest_db, read_manifest_db
from .mbfilememo import Memo as Memo  # sync/catalog.py's, from here
from .mbfilememo import MemoWriter, WindowMemo, bin_header, old_memo, old_memo_packed, unpacked_memo

PIPE_AHEAD = 1 << 20  # bytes of parsed shards the child may send before the import takes them (the pipe's buffer)
SHARD_BUFFER = 128 << 10  # the parse child's blocks from this size up are maps of their own (`_return_shard_buffers`)

PackRow = Callable[[CatalogEntry], list]
RowProblemText = Callable[[RowProblem, str], list]
Duplicates = Callable[[list[CatalogEntry]], list[list]]


def shard_of_id(file_id: str) -> str:
    return file_id[:2]


def phone_file_id(domain: str, relative_path: str) -> str:
    """What a phone names a file: SHA-1 of `<domain>-<relativePath>` (sync/manifest.py `file_id`, any text)."""
    return hashlib.sha1(f"{domain}-{relative_path}".encode(errors="surrogatepass")).hexdigest()


def conforms(c: CatalogEntry) -> bool:
    """The row's fileID is what a phone names its path."""
    return phone_file_id(c.domain, c.relative_path) == c.file_id


@dataclass(frozen=True, slots=True)
class CatalogShard:
    """One shard of a parsed catalog, as the import uses it."""

    shard: str
    rows: bytes  # msgpack of the catalog._row packs, in fileID order (the cache's value as is, or the parse's)
    count: int  # rows in `rows`
    row_problems: list  # [path, message] of unusable rows read since the previous shard (any shard)
    dup_problems: list  # [path, message] of rows sharing a fileID in this shard
    memo: bytes | None  # this shard's fresh MBFile memo, packed (the cache's value); None: the old one stays
    conforming: bool

    def file_rows(self) -> Iterator[tuple[str, int, bool]]:
        """(fileID, size, keyed) of each file row, in fileID order, keyed: the phone encrypted its bytes; read from
        `rows` a row at a time (no list of them, no second packing of the sizes to unpack again)."""
        unpacker = msgpack.Unpacker(io.BytesIO(self.rows), read_size=1 << 14)  # buffers 16 KiB, not a copy
        unpacker.read_array_header()
        # catalog._row packs: [file_id, domain, path, flags, size, mode, mtime, target, protection class, has key]
        return ((r[0], r[4], r[9]) for r in unpacker if r[3] == FLAG_FILE)


class _ShardPacker:
    """One shard's message, packed row by row as the rows are read: its rows as msgpack bytes, the rows of the
    current fileID (duplicates are neighbours in fileID order) and the duplicates' problems; no row is
    kept as an object past the next fileID."""

    def __init__(self, shard: str, pack_row: PackRow, duplicates: Duplicates) -> None:
        self.shard, self._pack_row, self._duplicates = shard, pack_row, duplicates
        self._packer = msgpack.Packer()
        self._rows = bytearray()
        self._count = 0
        self._group: list[CatalogEntry] = []
        self._dups: list[list] = []
        self._conforming = True

    def add(self, c: CatalogEntry) -> None:
        if self._group and self._group[0].file_id != c.file_id:
            self._close_group()
        self._group.append(c)
        self._rows += self._packer.pack(self._pack_row(c))
        self._count += 1
        self._conforming = self._conforming and conforms(c)

    def _close_group(self) -> None:
        if len(self._group) > 1:
            self._dups += self._duplicates(self._group)
        self._group = []

    def message(self, probs: list, memo: bytes | None) -> bytes:
        """[b"shard", shard, rows packed, their number, probs, dups, memo, conforming], packed: the bytes
        msgpack.packb gives for that list. The shard's buffers are let go (the parse keeps this object until the
        next shard's first row)."""
        self._close_group()
        pack, p = self._packer.pack, self._packer
        rows_head = p.pack_array_header(self._count)
        memo_bin = (pack(None),) if memo is None else (bin_header(len(memo)), memo)  # not copied into the packer
        message = b"".join(
            (p.pack_array_header(8), pack(b"shard"), pack(self.shard),
             bin_header(len(rows_head) + len(self._rows)), rows_head, self._rows, pack(self._count),
             pack(probs), pack(self._dups), *memo_bin, pack(self._conforming))
        )  # fmt: skip
        self._rows = bytearray()
        return message


def parse_shards(
    source: ManifestSource,
    old: Iterator[tuple[str, dict]],
    where: str | None,
    pack_row: PackRow,
    row_problem: RowProblemText,
    duplicates: Duplicates,
) -> Iterator[bytes]:
    """Every shard of a Manifest.db packed as the module docstring says, in order, then [b"end", row problems]."""
    memo = WindowMemo(old, shard_of_id)
    row_problems: list[RowProblem] = []
    shard: _ShardPacker | None = None

    def packed(shard: _ShardPacker) -> bytes:
        probs = [row_problem(p, MANIFEST_DB.record) for p in row_problems]
        row_problems.clear()
        # A shard whose rows used exactly the old memo's shard (an unchanged Manifest.db's) sends None: the cache
        # keeps that memo, and nobody packs, unpacks, seals and writes it again.
        # The rows and the memo go packed on their own: the import only spools or writes them for the cache, whose
        # values they are (unpacked and packed again, a 1 000 000-file import's memo was ~5 MB of objects a shard).
        return shard.message(probs, memo.take(shard.shard))

    for c in read_manifest_db(source, memo, row_problems, where):
        s = shard_of_id(c.file_id)
        if shard is None or s != shard.shard:
            if shard is not None:
                yield packed(shard)
            shard = _ShardPacker(s, pack_row, duplicates)
        shard.add(c)
    if shard is not None:
        yield packed(shard)
    yield msgpack.packb([b"end", [row_problem(p, MANIFEST_DB.record) for p in row_problems]])


def unpack_shard(message: bytes) -> CatalogShard | list:
    """A packed shard as CatalogShard; the end message as its trailing row problems (a list)."""
    got = msgpack.unpackb(message, strict_map_key=False)
    if got[0] == b"end":
        return got[1]
    if got[0] == b"error":
        raise ManifestInvalid(got[1], got[2])
    _kind, shard, rows, count, probs, dups, fresh, conforming = got
    return CatalogShard(shard, rows, count, probs, dups, fresh, conforming)


def _die_with_parent(parent: int) -> None:
    """The parse process must not outlive an import that was killed (SIGKILL leaves no chance to clean up)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _return_shard_buffers() -> None:
    """The parse child's malloc policy: every block of SHARD_BUFFER or more gets its own map, returned when freed.
    The import's (cli/allocator.py `return_large_buffers`, 1 MiB) comes through the fork, and under it a shard's
    buffers (its rows, message, memos: 0.1-1 MB each at 1 000 000 files, made and freed shard after shard at other
    sizes) left holes in the heap: an in-process parse of a 1 000 000-file day-2 Manifest.db grew 6-7 MB of anonymous
    memory with 1 MiB, 3-4 with this (2 runs each, CPU the same)."""
    set_malloc(mmap_threshold=SHARD_BUFFER)


def _child(conn: Connection, parent: int, path: str, spool: Spool | None, funcs: tuple) -> None:
    _die_with_parent(parent)
    _return_shard_buffers()
    try:
        old = unpacked_memo((shard, raw) for shard, raw in spool) if spool is not None else iter(())
        for message in parse_shards(Path(path), old, None, *funcs):
            conn.send_bytes(message)
            del message  # not held while the next shard is parsed
    except ManifestInvalid as e:
        conn.send_bytes(msgpack.packb([b"error", e.path, e.reason]))
    finally:
        conn.close()
        os._exit(0)  # nothing of the parent's (atexit handlers, the writer's marker) runs here


class ShardStream:
    """A catalog's shards in fileID order, taken a shard at a time as the walk goes: `upto(shard)` yields those up
    to and including `shard` (None: all the rest) and keeps the first one past it for the next call. Subclasses
    give `_next` (the next shard, `_pending` first) and set `_pending` to None."""

    _pending: CatalogShard | None

    def _next(self) -> CatalogShard | None:
        raise NotImplementedError

    def upto(self, shard: str | None) -> Iterator[CatalogShard]:
        while (got := self._next()) is not None:
            if shard is not None and got.shard > shard:
                self._pending = got
                return
            yield got


class ManifestStream(ShardStream):
    """An import's Manifest.db, parsed a shard at a time (see the module docstring) while the folder is read.

    `upto(shard)` yields the catalog shards up to `shard` in order (None: all that are left); `problems` holds the
    rows that could not be used once every shard was read. The file is checked here, synchronously, so an unusable
    catalog is refused before any file is stored. Each shard's fresh memo goes to the cache as it arrives; the
    memo's head, naming the shards, only once the whole file was read."""

    def __init__(self, repo: Repository, device_key: str, path: Path, funcs: tuple) -> None:
        check_manifest_db(path)
        self._repo, self._device_key, self._path, self._funcs = repo, device_key, path, funcs
        self._memo = MemoWriter(repo, device_key)
        self._row_problems: list = []
        self._dup_problems: list = []
        self._pending: CatalogShard | None = None
        self._done = False
        self._received = 0
        self.conforming = True
        self._proc = self._conn = self._spool = None
        self._local: Iterator[bytes] | None = None
        if sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods():
            try:
                self._start_child()
            except OSError:
                self._stop_child()
        if self._conn is None:
            self._local = self._parse_here()

    def _spool_old_memo(self) -> Spool:
        """The old memo, written before the fork: the child reads it from this spool, never from LMDB. Each shard's
        as the cache holds it, packed (unpacked only by the child, as it parses): unpacked here, a 1 000 000-file
        phone's memo was ~100 MB of values made and dropped by the import before the fork, the last shard's (~1.5 MB
        of objects) held by this loop through the fork, so by the child to its end.
        The memo's cache pages are unmapped as they are read (a 1 000 000-file phone's old memo mapped 72 MB of
        data.mdb before one trim at the end, a day-2 import's peak), and not held through the import nor by the
        child."""
        spool = self._repo.cache.spool()
        for shard, raw in old_memo_packed(self._repo, self._device_key):
            spool.append([shard, raw])
            self._repo.cache.trim(TRIM_GROWTH)
        spool.flush()
        self._repo.cache.trim()
        return spool

    def _start_child(self) -> None:
        self._spool = self._spool_old_memo()
        reader, writer = multiprocessing.get_context("fork").Pipe(duplex=False)
        with contextlib.suppress(OSError):  # room for the child to run ahead of a slower shard (Linux; else 64 KiB)
            fcntl.fcntl(writer.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_AHEAD)
        self._proc = multiprocessing.get_context("fork").Process(
            target=_child, args=(writer, os.getpid(), str(self._path), self._spool, self._funcs), daemon=True
        )
        self._proc.start()
        writer.close()
        self._conn = reader

    def _stop_child(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join()
            self._proc = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _parse_here(self) -> Iterator[bytes]:
        return parse_shards(self._path, old_memo(self._repo, self._device_key), None, *self._funcs)

    def _next_message(self) -> bytes | None:
        if self._conn is not None:
            try:
                message = self._conn.recv_bytes()
                self._received += 1
                return message
            except (EOFError, OSError):  # the child died: parse here, past what it sent
                self._stop_child()
                self._local = self._parse_here()
                for _i in range(self._received):
                    next(self._local)
        message = next(self._local, None)
        self._received += message is not None
        return message

    def _next(self) -> CatalogShard | None:
        if self._pending is not None:
            got, self._pending = self._pending, None
            return got
        if self._done:
            return None
        message = self._next_message()
        if message is None:
            raise ManifestInvalid(str(self._path), "the catalog's parse ended early")
        got = unpack_shard(message)
        if isinstance(got, list):
            self._row_problems += got
            self._done = True
            self._stop_child()
            self._memo.finish()
            return None
        self._row_problems += got.row_problems
        self._dup_problems += got.dup_problems
        self.conforming = self.conforming and got.conforming
        self._memo.add(got.shard, got.memo)
        return got

    @property
    def problems(self) -> list:
        """[path, message] of every unusable row, then of every fileID listed twice (after `upto(None)`)."""
        return self._row_problems + self._dup_problems

    def close(self) -> None:
        self._stop_child()
