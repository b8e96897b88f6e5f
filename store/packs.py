"""packs/<xx>/<pack-id>: many sealed blobs written once, with a sealed header at the end.

Pack format (version 1):
    sealed blob 0 || sealed blob 1 || … || sealed header || u32be header length || b"PVP" || u8 version
The header, sealed with ad=b"phonevault/v1/pack-header", is msgpack [1, [[blob id, type, offset, length,
raw length], …]], so the whole index can be rebuilt from packs alone: `check --repair-index` (store/repair.py).
A sealed blob is nonce || AES-256-GCM(flag || payload, ad=blob id), flag 0 = stored, 1 = zstd.
pack-id = unkeyed BLAKE3 of the pack's bytes: `check --read-data` verifies a pack without trusting its name.

`PackWriter` fills one pack; data and tree blobs go to separate writers so tree packs stay small and hot in any cache. A
pack that takes media chunks, or whose data blobs grow past SMALL_PACK, is from then on written as it fills when the
backend can (its `spool`: a local disk, store/backends/local.py): to a temporary file in packs/, small blobs gathered up
to SPOOL_STAGE (1 MiB) per write, the pack id hashed as bytes are appended (both on one appending thread, in order,
behind the caller), and published by fsync and rename, so the pack is written once and never held whole. Import, warm
alternating A/B, load 7-17: 1.1 GB phone (3 rounds each) peak 128 -> 91 MB, 13.4 -> 11.8 CPU s; 3.3 GB (5 each) 135 ->
102 MB, 31.6 -> 28.4 CPU s; wall within the noise (1.1 GB at load 2-4, 3 each: 12.4 -> 11.0 s). Hashing the id from the
file at `finish`, off the caller's thread, cost more CPU (3.3 GB: 29.6 against 26.9 s). A blob of it is read back with
pread (no map: a file's mapped pages count in the resident set). Elsewhere (S3, a wrapper) it moves its bytes to an
anonymous map taken from a process-wide pool (`PackBuffers`) and given back as soon as the pack is written (`finish`; it
is then read from the backend), so a vault written pack after pack reuses pages already mapped instead of faulting in
(and zeroing) 16 MiB of fresh memory for every pack: on a virtual machine a copy into fresh pages runs at ~1.3 GB/s,
into mapped ones at ~8 GB/s. A pack of tree, delta and catalog blobs never takes a pooled buffer and is full at
TREE_PACK_SIZE (4 MiB).
Memory: a spooled data pack ≤ SMALL_PACK before it spools, then ≤ SPOOL_STAGE + header + the piece being written;
otherwise the buffers of the data packs open or being written (a blob sink: 1 + its writes in flight, counting one
waiting for a writing thread, store/blobsink.py), each ≤ target size + one blob + header, plus ≤ PackBuffers.KEEP (1)
free one, which keeps ≤ target size of pages; a tree pack ≤ TREE_PACK_SIZE + one blob, in its own bytes, or where the
backend spools ≤ SPOOL_STAGE + one blob in memory, spooled past it as a data pack is (`_spool_trees`).
"""

from __future__ import annotations

import mmap
import struct
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress

import msgpack
import zstandard

from .backends import Backend
from .crypto import MasterKey, content_hash, content_hasher
from .errors import CorruptObject, UnsupportedFormat
from .index import BlobLocation, PackLocations, pack_entries  # BlobLocation: imported from here too

PACK_FORMAT = 1
TRAILER = struct.Struct(">I3sB")
MAGIC = b"PVP"
HEADER_AD = b"phonevault/v1/pack-header"
TARGET_PACK_SIZE = 16 << 20
# A pack's bytes stay in a buffer of its own (grown as a bytearray) up to SMALL_PACK, unless a data blob of POOL_BLOB
# or more comes: then they move to a pooled buffer (PackWriter). A pack of small files' chunks thus does not hold a
# pooled buffer's mapped pages (up to 16 MiB) while it fills; a pack of media chunks takes one at once; a tree pack
# never does (it would hold a reused buffer's 16 MiB of pages for its few MiB, from its first shard to the commit).
SMALL_PACK = 4 << 20
POOL_BLOB = 256 << 10
# A pack that holds no data blob (tree nodes, deltas, catalog shards) is full at this size, not TARGET_PACK_SIZE: such
# blobs come slowly, one shard at a time, so a first import's tree pack stayed open from its first shard to the commit,
# and at 16 MiB it was, after the data packs, the largest thing the import held.
TREE_PACK_SIZE = SMALL_PACK
# A spooled pack (one on a backend with `spool`) gathers blobs smaller than this in memory and writes them at once.
SPOOL_STAGE = 1 << 20
# A spooled pack's writes (hashing the bytes for the pack id, then the write) run on one appending thread of the
# process, in order, while the caller goes on chunking: on the caller's thread they were a quarter of a first import's
# busiest thread (2.2 GB phone, py-spy). One piece at a time: the caller hands the next only once the last is written
# (~0.3 ms for 1 MiB, against ~4 ms to chunk, hash and seal the next), so it holds one piece more at most.
_appender: ThreadPoolExecutor | None = None
_appender_lock = threading.Lock()


def _appending() -> ThreadPoolExecutor:
    """The process's one appending thread (one is enough: a disk takes the writes one after another; a single thread
    keeps each pack's pieces in order without more)."""
    global _appender
    with _appender_lock:
        if _appender is None:
            _appender = ThreadPoolExecutor(1, thread_name_prefix="pack-append")
        return _appender


# blob types
DATA, TREE, DELTA = 0, 1, 2
TYPE_NAMES = {DATA: "data", TREE: "tree", DELTA: "delta"}

STORED, ZSTD = b"\x00", b"\x01"  # a blob's flag byte: payload stored as is, or a zstd frame
# One compressor and one decompressor per thread: a zstandard context is not thread-safe (two threads in one
# compressor corrupt its heap: "double free" with two sealing workers), and blobs are sealed on worker threads
# (store/blobsink.py) and opened on several (export's read-ahead, S3 reads).
_zstd = threading.local()


def _cctx() -> zstandard.ZstdCompressor:
    try:
        return _zstd.c
    except AttributeError:
        _zstd.c = zstandard.ZstdCompressor(level=3)
        return _zstd.c


def dctx() -> zstandard.ZstdDecompressor:
    try:
        return _zstd.d
    except AttributeError:
        _zstd.d = zstandard.ZstdDecompressor()
        return _zstd.d


def pack_name(pack_id: str) -> str:
    return f"packs/{pack_id[:2]}/{pack_id}"


SEAL_IN_PLACE = 64 << 10  # a stored blob this large is sealed without joining flag and payload (crypto.seal_flagged)


def seal_blob(
    key: MasterKey, blob_id: bytes, plaintext: bytes, compress: bool, stored: bytes | None = None
) -> bytes | bytearray:
    """`stored`: the blob's stored form (flag || payload, `open_stored`) as another vault holds it: `copy` seals it
    again under this vault's key as it is, rather than compressing the plaintext again (zstd is most of its CPU)."""
    if stored is not None:
        return key.seal(stored, blob_id)
    if compress and len(plaintext) > 64:
        packed = _cctx().compress(plaintext)
        if len(packed) < len(plaintext) - len(plaintext) // 32:
            return key.seal(ZSTD + packed, blob_id)
    if len(plaintext) >= SEAL_IN_PLACE:
        return key.seal_flagged(STORED, plaintext, blob_id)
    return key.seal(STORED + plaintext, blob_id)


def open_blob(key: MasterKey, blob_id: bytes, sealed: bytes, where: str) -> bytes:
    return open_stored(key, blob_id, sealed, where)[0]


def open_stored(key: MasterKey, blob_id: bytes, sealed: bytes, where: str) -> tuple[bytes, bytes]:
    """(plaintext, stored form): the stored form is what `seal_blob(..., stored=)` takes."""
    inner = key.open(sealed, blob_id, where)
    flag, payload = inner[:1], inner[1:]
    if flag == STORED:
        return payload, inner
    if flag == ZSTD:
        try:
            return dctx().decompress(payload), inner
        except zstandard.ZstdError as e:
            raise CorruptObject(where, f"blob {blob_id.hex()[:16]} does not decompress: {e}") from None
    raise CorruptObject(where, f"blob {blob_id.hex()[:16]} has unknown flag {flag!r}")


_HEADER_HEAD = msgpack.packb([PACK_FORMAT, []])[:-1]  # a header's plaintext up to its entries: [PACK_FORMAT, ...]


def anonymous_map(size: int) -> mmap.mmap:
    """A private anonymous map of `size` bytes whose pages are mapped as they are written and that a forked child
    does not inherit (MADV_DONTFORK where the system has it). Not a shared map (`mmap(-1, size)`'s default): a
    shared map's pages are shmem, which `MADV_DONTNEED` does not free, and a private one forked without
    DONTFORK would copy every page the parent writes while the child lives (the Manifest.db parser is forked,
    sync/catalogshards.py), the child keeping the old copies."""
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if (dontfork := getattr(mmap, "MADV_DONTFORK", None)) is not None:
        buf.madvise(dontfork)
    return buf


def drop_pages(buf: mmap.mmap, start: int) -> None:
    """Give back to the system the pages of `buf` from `start` (rounded up to a page) on; they read as zeros after."""
    start = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
    if start < len(buf) and hasattr(mmap, "MADV_DONTNEED"):
        buf.madvise(mmap.MADV_DONTNEED, start, len(buf) - start)


class PackBuffers:
    """Anonymous maps for packs being filled, kept for the next pack once a pack is written (thread-safe: packs
    are filled on the caller's thread and written on others). A map's pages are mapped only when written, so a
    buffer reserves twice the target size but holds only what it was written up to, and a buffer kept for the next
    pack holds at most `keep_pages` bytes of them (the pack target: a pack overshoots it by up to one 8 MiB blob,
    and those pages would otherwise stay with the buffer for the rest of the import)."""

    # Free buffers kept. One is what a steady stream of packs needs (a written pack's buffer is taken by the next
    # pack's first media blob); each more idles with up to 16 MiB of mapped pages through the parts of an import
    # that do not fill packs that fast: with 4 kept a 1.1 GB phone's import peaked 30 MB higher, with 1 as before.
    KEEP = 1

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            for i in range(len(self._free) - 1, -1, -1):  # the most recently used first: its pages are warmest
                if len(self._free[i]) >= size:
                    return self._free.pop(i)
        return anonymous_map(size)

    def give(self, buf: mmap.mmap, keep_pages: int) -> None:
        drop_pages(buf, keep_pages)
        with self._lock:
            self._free.append(buf)
            if len(self._free) > self.KEEP:  # the smallest goes (unmapped once nothing refers to it)
                self._free.remove(min(self._free, key=len))


_BUFFERS = PackBuffers()


class PackWriter:
    """One pack being filled: its bytes (a pooled buffer, see the module docstring), and `pending`, its blobs' records
    and ids (store/index.py PackLocations: 73 to 89 bytes a blob; as a list of five objects each blob cost ~250 bytes,
    and a dict of id -> record number beside the records ~190 more), which deduplicates within the pack, finds a blob
    still in it, and is the written pack's locations."""

    def __init__(self, backend: Backend, key: MasterKey, target_size: int = TARGET_PACK_SIZE) -> None:
        self._backend = backend
        self._key = key
        self._target = target_size
        # The pack as it will be written (no join copy at the end): its own buffer first, then a pooled one.
        self._buf: bytearray | mmap.mmap = bytearray()
        self._size = 0  # bytes of _buf in use
        self._release: weakref.finalize | None = None  # gives the pooled buffer back (written, or dropped)
        self.pending = PackLocations()  # its blobs' records and ids: deduplicates within the pack, finds a blob in it
        self._written: str | None = None  # the pack's name once written: its blobs are read from the backend
        self._full_at = min(TREE_PACK_SIZE, target_size)  # until a data blob comes: then target_size
        self._lock = threading.Lock()  # `sealed` (the caller's thread) against `finish` giving the buffer back
        # A spooled pack (the backend's `spool`): its first `_spooled` bytes are in the file, the rest in `_buf`.
        self._spool = None
        self._spooled = 0  # bytes handed to the appending thread (written, or being written: `_ahead`)
        self._hash = None  # crypto.content_hasher of every byte appended, for the pack id (on the appending thread)
        self._ahead: Future[None] | None = None  # the last piece handed to the appending thread
        self._spool_error: BaseException | None = None  # a failed write, raised by `finish` (and `sealed`)

    def __len__(self) -> int:
        return self.pending.records

    @property
    def size(self) -> int:
        return self._size

    def full(self) -> bool:
        return self._size >= self._full_at

    def _append(self, data: bytes | bytearray | memoryview, pool: bool) -> None:
        """`pool`: whether this data may move the pack to a pooled buffer (see the module docstring)."""
        end = self._size + len(data)
        if self._spool is not None:
            self._spool_append(data, end)
            return
        if self._release is None and (not pool or (end <= min(SMALL_PACK, self._target) and len(data) < POOL_BLOB)):
            # A pack of only tree, delta and catalog blobs past SPOOL_STAGE goes to the spool too, where there is one:
            # it fills slowly, and in memory it held ~4 MB for most of a 6.5 GB phone's import (see `_spool_trees`).
            if not (end > SPOOL_STAGE and self._spool_trees()):
                self._buf += data  # still its own buffer
                self._size = end
                return
        if self._release is None and (spool := getattr(self._backend, "spool", None)) is not None:
            self._spool = spool("packs")  # to a file from here on: given up (removed) if this writer is dropped
            self._release = weakref.finalize(self, self._spool.close)
            self._hash = content_hasher()  # fed every byte written, from the stage's first (`_write_piece`)
            self._spool_append(data, end)
            return
        if self._release is None or end > len(self._buf):  # to the pool, or (rare) past twice the target
            grown = _BUFFERS.take(max(end, 2 * self._target, 2 * self._size))
            grown[: self._size] = memoryview(self._buf)[: self._size]
            if self._release is not None:
                self._release()  # the smaller one back to the pool
            # Given back once the pack is written (`finish`), or when this writer is dropped unwritten.
            self._buf, self._release = grown, weakref.finalize(self, _BUFFERS.give, grown, self._target)
        self._buf[self._size : end] = data
        self._size = end

    def _spool_trees(self) -> bool:
        """Whether this pack is a tree pack (no data blob yet: full at TREE_PACK_SIZE) on a backend that spools. Such a
        pack stayed in memory up to TREE_PACK_SIZE, ~4 MB at every peak of an instrumented 6.5 GB import; spooled past
        SPOOL_STAGE it holds ≤ SPOOL_STAGE + the piece being written, as a data pack does."""
        return self._full_at != self._target and getattr(self._backend, "spool", None) is not None

    def _spool_append(self, data: bytes | bytearray | memoryview, end: int) -> None:
        """Append to a spooled pack: small pieces gather in `_buf` up to SPOOL_STAGE, then go to the file in one write
        (on the appending thread: `data` must not change afterwards; a sealed blob never does)."""
        if len(self._buf) + len(data) > SPOOL_STAGE:
            self._flush_spool()
        if len(data) >= SPOOL_STAGE:
            self._write_out(data)
        else:
            self._buf += data
        self._size = end

    def _flush_spool(self) -> None:
        if self._buf:
            self._write_out(self._buf)
        self._buf = bytearray()

    def _write_out(self, data: bytes | bytearray | memoryview) -> None:
        """Hand `data`, the next bytes of the file, to the appending thread, once the piece before it is written."""
        self._spooled += len(data)
        if self._spool_error is not None:
            return
        self._settle()
        self._ahead = _appending().submit(self._write_piece, data)

    def _write_piece(self, data: bytes | bytearray | memoryview) -> None:
        """On the appending thread. A failed write is kept, not raised: the caller may take an OSError for its source
        file's and go on; `finish` (and `sealed`) raise it."""
        if self._spool_error is not None:
            return
        self._hash.update(data)
        try:
            self._spool.append(data)
        except OSError as e:
            self._spool_error = e

    def _settle(self) -> None:
        """Wait until every piece handed to the appending thread is written (or failed: `_spool_error`)."""
        if self._ahead is not None:
            self._ahead.result()
            self._ahead = None

    def add(self, blob_id: bytes, blob_type: int, sealed: bytes | bytearray, raw_length: int) -> None:
        if len(blob_id) != 32:
            raise ValueError(f"a blob id is 32 bytes, not {len(blob_id)}")
        if blob_type == DATA:
            self._full_at = self._target
        self.pending.add(blob_id, blob_type, self._size, len(sealed), raw_length)
        self._append(sealed, blob_type == DATA)

    def sealed(self, blob_id: bytes) -> bytes | None:
        """A blob of this pack, open or in flight (readers of a staged snapshot may need it before the blob sink
        has the pack's index): from the buffer until the pack is written, then from the backend."""
        row = self.pending.row(blob_id)
        if row is None:
            return None
        _bid, _type, offset, length, _raw = row
        with self._lock:
            if self._written is None:
                if self._spool is None:
                    return bytes(self._buf[offset : offset + length])
                if self._spool_error is not None:
                    raise self._spool_error
                if offset >= self._spooled:  # a blob is in the file or in the stage, whole
                    return bytes(self._buf[offset - self._spooled : offset - self._spooled + length])
                self._settle()  # in the file once the appending thread wrote it
                if self._spool_error is not None:
                    raise self._spool_error
                return self._spool.pread(offset, length)
        return self._backend.get_range(self._written, offset, length)

    def finish(self) -> tuple[str, PackLocations | dict[bytes, BlobLocation]] | None:
        """Write the pack (durable when this returns); returns its id and the locations of its blobs.
        A writer writes one pack: start a new one for the next (this one stays readable, `sealed`, from the backend).
        Its buffer goes back at once, not when the writer is dropped: a blob sink keeps a written pack until it
        retires it at a later hand-off, and with its pages that was one more full pack buffer most of the time."""
        if not len(self):
            return None
        entries = pack_entries(self.pending.rows(), len(self))
        header = self._key.seal_flagged(_HEADER_HEAD, entries, HEADER_AD)  # msgpack [PACK_FORMAT, entries]
        header += TRAILER.pack(len(header), MAGIC, PACK_FORMAT)
        with self._lock:  # `sealed` (the caller's thread) may be reading the bytes these move (a spool's stage)
            if self._spool is None:
                self._append(header, False)
            else:  # after the stage, a piece of its own: not copied into it (~0.75 MB at PACK_BLOBS blobs)
                self._flush_spool()
                self._write_out(header)
                self._size += len(header)
        if self._spool is not None:
            pack_id = self._publish()
        else:
            with memoryview(self._buf) as whole, whole[: self._size] as data:
                pack_id = content_hash(data)
                self._backend.put(pack_name(pack_id), data)
        with self._lock:
            self._written = pack_name(pack_id)
            self._buf = bytearray()
            if self._release is not None:
                self._release()
        locations = self.pending
        locations.pack, locations.entries = pack_id, entries  # an id added twice: a dict of the last's, as ever
        return pack_id, locations if len(locations) == len(self) else dict(locations.items())

    def _publish(self) -> str:
        """A spooled pack's last bytes to its file, then the file published under the pack's name."""
        try:
            with self._lock:  # `sealed` may be reading the stage
                self._flush_spool()
                self._settle()
            if self._spool_error is not None:
                raise self._spool_error
            pack_id = self._hash.hexdigest()
            self._spool.publish(pack_name(pack_id))
            return pack_id
        except BaseException:
            with self._lock:
                with suppress(BaseException):
                    self._settle()  # nothing may still write to the descriptor `_release` closes
                self._release()  # the temporary file goes now, not when the writer is dropped
                self._spool_error = self._spool_error or OSError("pack write failed")
            raise


def parse_header(key: MasterKey, pack_id: str, tail: bytes, pack_size: int) -> dict[bytes, BlobLocation]:
    """Decode a pack's header from the pack's last bytes (`tail` must include the whole header and trailer)."""
    name = pack_name(pack_id)
    if len(tail) < TRAILER.size:
        raise CorruptObject(name, "too short for a pack trailer")
    hlen, magic, version = TRAILER.unpack(tail[-TRAILER.size :])
    if magic != MAGIC:
        raise CorruptObject(name, "no pack trailer (not a phonevault pack)")
    if version != PACK_FORMAT:
        raise UnsupportedFormat(name, version)
    if hlen + TRAILER.size > len(tail) or hlen + TRAILER.size > pack_size:
        raise CorruptObject(name, f"header length {hlen} exceeds the pack")
    sealed = tail[-TRAILER.size - hlen : -TRAILER.size]
    try:
        fmt, entries = msgpack.unpackb(key.open(sealed, HEADER_AD, name))
        if fmt != PACK_FORMAT:
            raise UnsupportedFormat(name, fmt)
        return {bytes(e[0]): BlobLocation(pack_id, e[2], e[3], e[4], e[1]) for e in entries}
    except (ValueError, TypeError, IndexError, msgpack.UnpackException) as e:
        raise CorruptObject(name, f"unreadable pack header: {e}") from None


def read_header(backend: Backend, key: MasterKey, pack_id: str, pack_size: int) -> dict[bytes, BlobLocation]:
    name = pack_name(pack_id)
    trailer = backend.get_range(name, pack_size - TRAILER.size, TRAILER.size)
    hlen = TRAILER.unpack(trailer)[0]
    if hlen + TRAILER.size > pack_size:
        raise CorruptObject(name, f"header length {hlen} exceeds the pack")
    tail = backend.get_range(name, pack_size - TRAILER.size - hlen, hlen + TRAILER.size)
    return parse_header(key, pack_id, tail, pack_size)
