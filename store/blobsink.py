"""BlobSink: the deduplicating blob writer under every snapshot writer and `copy`.

Known ids cost a cache lookup; new blobs are sealed (zstd + AES-GCM, store/packs.py) into the open pack of their
kind (data, or tree and delta). A full pack is handed to a bounded pool of pack-writing threads (pack, fsync or
upload, index object, cache) while the caller goes on; how many run at once is the backend's `pack_writes` (a disk
1, S3 4: each upload is a round trip that several in flight hide).

Sealing (zstd + AES-GCM, both of which release the GIL) runs on `sealers` worker threads (default: one per core,
at most MAX_SEALERS; none on one core) while the caller chunks and hashes the next blobs. Small blobs go to a worker
in batches (≤ SEAL_BATCH_BLOBS blobs or ≥ SEAL_BATCH_BYTES), so an 8 KiB plist chunk does not pay a thread hand-off
of its own. Sealed batches are taken back strictly in submission order and only then added to the open packs.

A blob sealed elsewhere (`put_sealed`: `copy` seals under this vault's key on its reader threads) skips the sealing
queue: it goes into the open pack at once, after whatever is still being sealed.

Determinism: which blobs go into which pack, in which order, depends only on the order of `put` and `put_sealed`
calls, never on thread timing: blobs are added to the open pack in the caller's order, and a pack's bytes are
fixed when it is handed off. Pack *ids* still differ between two runs because every seal draws a fresh random nonce
(store/crypto.py); a pack's blob ids, types, offsets and lengths do not. Written packs are retired in the order
they were handed off, so `stats.packs` and the snapshot's pack list are in a fixed order too.

Faults: a failed pack write is re-raised in the caller's thread at the next blob added and again at every `flush()`
(sticky): a caller that catches an OSError around one source file (an unreadable file is skipped) cannot swallow a
pack write and go on to commit a snapshot whose blobs were never written. The commit point stays the event segment's
put_exclusive, which store/writer.py makes only after `flush()` returned.

Memory bound: (2 open + P in flight) packs, P = `backend.pack_writes`; plus the sealing queue: its plaintexts ≤
SEAL_QUEUE_BYTES (2 MiB) + one blob (a chunk given as a read-only view, store/chunker.py, holds the buffer it views
until sealed: ≤ one chunker buffer, 10 MiB, more), and at most as many sealed bytes again (≤ 2 × 10 MiB; `copy`'s data
blobs come sealed, `put_sealed`, and never wait in it). On a disk (P = 1) a data pack is written to its file as it fills
(store/packs.py, spooled): ≤ SMALL_PACK (4 MiB) before, ≤ SPOOL_STAGE (1 MiB) + its header + the piece its appending
thread writes after, and the tree pack, spooled likewise, ≤ SPOOL_STAGE + one blob, so the packs hold ≤ 4 + 1 + 1 MiB +
two blobs (whatever the folder's size) and with the queue ~12 MiB typical, ≤ 35 MiB worst (it was 64 and 104 with the
packs in memory); on S3 (P = 4) each pack ≤ TARGET_PACK_SIZE (16 MiB) + one sealed blob (≤ 8 MiB + 29 B, the coarse
chunk maximum, store/chunker.py) + its header: 112 MiB typical, ≤ 176 MiB worst. Per blob in an open or in-flight
pack, 73 to 89 bytes more (its 57-byte record and its slot in the pack's id table: `pending`, index.PackLocations), and
~100 while its pack is written (its header's entries packed once from the records, which the index object reuses, and
the sealed header or index): a pack holds ≤ PACK_BLOBS (16 384) blobs, so ≤ 1.5 MB a pack, ~1.6 MB more for a moment,
whatever the number of files. A written pack is let go at the next blob added, not at the next hand-off: otherwise it
stayed held, buffer and records, for as long as the next pack took to fill.

A blob in a candidate pack of a running prune is never deduplicated against (store/prune.py), and before a commit
`verify_packs` checks that every pack the snapshot depends on still exists.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from .crypto import MasterKey
from .errors import PackPruned
from .index import write_index
from .packs import DATA, TARGET_PACK_SIZE, TREE, PackWriter, open_blob, pack_name, seal_blob
from .prune import candidate_packs
from .repository import Repository

DEFAULT_PACK_WRITES = 2  # a backend that does not say (one outside this package)
MAX_SEALERS = 4
# Plaintext waiting for or in sealing: an average media chunk (1 MiB) for each of two workers. Sealed batches are taken
# back only at the next put, so between two puts (a video's next 9 MiB read into the chunker, the next file opened) a
# full queue holds its plaintexts and their sealed bytes both: at a 6.5 GB phone's import peak (videos streamed, chunks
# copied out of the chunker) that was 12-13 MB with 8 MiB here, 6.5-7 MB with 4. With 2 the importing process's peak
# fell ~5 MB more at a 3.3 GB phone (Pss 63 -> 58 MB, tree 92 -> 87, medians of 3 alternating), at the same CPU.
SEAL_QUEUE_BYTES = 2 << 20
SEAL_BATCH_BYTES = 256 << 10  # a batch goes to a worker once it holds this much ...
SEAL_BATCH_BLOBS = 64  # ... or this many blobs (~20 µs of sealing each for a fine chunk: a hand-off costs as much)
# A pack is handed off at TARGET_PACK_SIZE or at this many blobs, whichever comes first: each blob of an open or
# in-flight pack costs 73 to 89 bytes (its record and its slot in `pending`; ~190 with a dict of ids) and writing the
# pack ~100 more for a moment (its packed entries and a sealed copy; ~500 as lists and maps). A 16 MiB pack of small
# plists (~270 sealed bytes each) held ~62 000 blobs: ~12 MB of records while it filled, ~30 MB more while written,
# and the first such pack came only past ~60 000 files, so a device backup's peak grew with the files up to there.
PACK_BLOBS = 16_384

Pending = tuple[int, bytes, bytes, bool, bytes | None]  # (blob type, id, plaintext, compress, stored form)


def default_sealers() -> int:
    """One sealing worker per core (at most MAX_SEALERS); none on one core, where a worker only adds hand-offs."""
    cores = os.cpu_count() or 1
    return min(MAX_SEALERS, cores) if cores > 1 else 0


def _seal_batch(key: MasterKey, batch: list[Pending]) -> list[bytes]:
    return [seal_blob(key, blob_id, plain, compress, stored) for _t, blob_id, plain, compress, stored in batch]


@dataclass(slots=True)
class WriteStats:
    files: int = 0
    size: int = 0
    new_files: int = 0  # files whose content was not all known before
    new_blobs: int = 0
    new_raw: int = 0  # plaintext bytes of new blobs
    new_bytes: int = 0  # stored (sealed, compressed) bytes of new blobs
    reused_files: int = 0  # skipped by stat cache
    packs: list[str] = field(default_factory=list)


class BlobSink:
    """Deduplicating blob writer: known ids cost a cache lookup, new ones are sealed into the right open pack.

    Full packs are written by up to `pack_writes` threads while chunking goes on (see the module docstring for the
    memory bound and the ordering). `flush()` waits for all of them and re-raises a failed write, every time."""

    def __init__(
        self,
        repo: Repository,
        *,
        pack_writes: int | None = None,
        sealers: int | None = None,
        pack_size: int = TARGET_PACK_SIZE,
        pack_blobs: int = PACK_BLOBS,
    ) -> None:
        self.repo = repo
        self.stats = WriteStats()
        self.pack_writes = max(1, pack_writes or getattr(repo.backend, "pack_writes", DEFAULT_PACK_WRITES))
        self._pack_size = pack_size  # smaller only in tests, to make many packs of little data
        self._pack_blobs = pack_blobs
        self._packs = {DATA: self._new_pack(), TREE: self._new_pack()}
        self._avoid = candidate_packs(repo)  # packs a prune may delete: never dedup against them
        self.reused_packs: set[str] = set()
        self._verified: set[str] = set()  # dependencies already seen to exist
        self._inflight: list[tuple[PackWriter, Future[str | None]]] = []  # in hand-off order
        self._pool: ThreadPoolExecutor | None = None
        self._failed: BaseException | None = None  # the first failed pack write: raised again at every flush
        self.sealers = default_sealers() if sealers is None else sealers
        self._seal_pool: ThreadPoolExecutor | None = None
        self._batch: list[Pending] = []  # blobs not yet handed to a sealing worker
        self._batch_bytes = 0
        self._sealing: deque[tuple[list[Pending], Future[list[bytes]]]] = deque()  # in put order
        self._unsealed: dict[bytes, bytes] = {}  # id -> plaintext of every blob in _batch or _sealing
        self._unsealed_bytes = 0

    def _new_pack(self) -> PackWriter:
        return PackWriter(self.repo.backend, self.repo.key, self._pack_size)

    def _writer(self, blob_type: int) -> PackWriter:
        return self._packs[DATA if blob_type == DATA else TREE]

    def _holding(self, blob_id: bytes) -> PackWriter | None:
        """The open or in-flight pack holding `blob_id`, if any: one lookup in each of ≤ 2 + pack_writes packs (a
        map of every such blob beside each pack's own cost ~50 bytes a blob, ~100 000 blobs of small files)."""
        for writer in self._packs.values():
            if blob_id in writer.pending:
                return writer
        for writer, _future in self._inflight:
            if blob_id in writer.pending:
                return writer
        return None

    def known(self, blob_id: bytes) -> bool:
        if blob_id in self._unsealed or self._holding(blob_id) is not None:
            return True
        loc = self.repo.locate(blob_id)
        if loc is None or loc.pack in self._avoid:
            return False
        self.reused_packs.add(loc.pack)
        return True

    def get(self, blob_id: bytes) -> bytes:
        """Read a blob, including one still being sealed or in an open or not yet written pack."""
        if (plain := self._unsealed.get(blob_id)) is not None:
            return bytes(plain)
        if (writer := self._holding(blob_id)) is not None:
            return open_blob(self.repo.key, blob_id, writer.sealed(blob_id), "open pack")
        return self.repo.get_blob(blob_id)

    def verify_packs(self) -> None:
        """Before committing: every pack this snapshot depends on — reused or written by this writer — must still
        exist (a prune may have swept it). Each is checked once per writer, up to `pack_writes` at once: on S3 each
        check is a HEAD round trip, and one after another they were the commit's wait (40 for a 600 MB import)."""
        todo = sorted((self.reused_packs | set(self.stats.packs)) - self._verified)
        exists = self.repo.backend.exists
        if len(todo) > 1 and self.pack_writes > 1:
            with ThreadPoolExecutor(min(self.pack_writes, len(todo)), thread_name_prefix="verify") as pool:
                found = list(pool.map(lambda pack: exists(pack_name(pack)), todo))
        else:
            found = [exists(pack_name(pack)) for pack in todo]
        for pack, there in zip(todo, found, strict=True):
            if not there:
                raise PackPruned(pack)  # the first missing in sorted order, as before
            self._verified.add(pack)

    def put(
        self, blob_type: int, plaintext: bytes | memoryview, compress: bool, stored: bytes | None = None
    ) -> tuple[bytes, bool]:
        """Store a blob unless known; returns (id, was new). `stored`: its stored form in another vault (copy), sealed
        as it is instead of compressing `plaintext` again (store/packs.py `seal_blob`)."""
        blob_id = self.repo.key.blob_id(plaintext)
        if self.known(blob_id):
            return blob_id, False
        if not self.sealers:
            sealed = seal_blob(self.repo.key, blob_id, plaintext, compress, stored)
            self._add(blob_type, blob_id, sealed, len(plaintext))
            return blob_id, True
        if not (isinstance(plaintext, memoryview) and plaintext.readonly):
            # Sealed later: the caller's buffer may change meanwhile. No copy of bytes, nor of a read-only view,
            # which callers hand over only of memory nothing writes again (store/chunker.py: bytes sliced, a
            # finished chunker's buffer).
            plaintext = bytes(plaintext)
        self._batch.append((blob_type, blob_id, plaintext, compress, stored))
        self._unsealed[blob_id] = plaintext
        self._batch_bytes += len(plaintext)
        self._unsealed_bytes += len(plaintext)
        if self._batch_bytes >= SEAL_BATCH_BYTES or len(self._batch) >= SEAL_BATCH_BLOBS:
            self._submit_batch()
        # Take back what is sealed already, and wait for the oldest while the queue holds too much.
        while self._sealing and (self._sealing[0][1].done() or self._unsealed_bytes > SEAL_QUEUE_BYTES):
            self._take_sealed()
        return blob_id, True

    def put_sealed(self, blob_type: int, blob_id: bytes, sealed: bytes, raw_length: int) -> bool:
        """Store a blob already sealed under this vault's key, exactly as `put` would have (`seal_blob(self.repo.key,
        blob_id, ...)`, `blob_id` the key's hash of its `raw_length` bytes of plaintext), unless known; True if it
        was new. Blobs still being sealed go into the packs first, so pack contents follow the calls' order."""
        if self.known(blob_id):
            return False
        if self._batch or self._sealing:
            self._submit_batch()
            while self._sealing:
                self._take_sealed()
        self._add(blob_type, blob_id, sealed, raw_length)
        return True

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        if self._seal_pool is None:
            self._seal_pool = ThreadPoolExecutor(max_workers=self.sealers, thread_name_prefix="sealer")
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._sealing.append((batch, self._seal_pool.submit(_seal_batch, self.repo.key, batch)))

    def _take_sealed(self) -> None:
        """Add the oldest sealing batch's blobs to the open packs, in put order (waits for it)."""
        batch, future = self._sealing[0]
        sealed = future.result()
        self._sealing.popleft()
        for (blob_type, blob_id, plain, _c, _s), blob in zip(batch, sealed, strict=True):
            del self._unsealed[blob_id]
            self._unsealed_bytes -= len(plain)
            self._add(blob_type, blob_id, blob, len(plain))

    def _add(self, blob_type: int, blob_id: bytes, sealed: bytes, raw_length: int) -> None:
        writer = self._writer(blob_type)
        writer.add(blob_id, blob_type, sealed, raw_length)
        self.stats.new_blobs += 1
        self.stats.new_raw += raw_length
        self.stats.new_bytes += len(sealed)
        if writer.full() or len(writer) >= self._pack_blobs:
            self._hand_off(DATA if blob_type == DATA else TREE)
        elif self._inflight and self._inflight[0][1].done():
            # A written pack goes at once, not at the next hand-off: its buffer, records and ids (a full pack's worth)
            # would otherwise stay held while the next pack fills, however long that takes.
            self._retire()

    def _write_pack(self, writer: PackWriter) -> str | None:
        """On a pack-writing thread: the pack, then its index object, then the cache (the cache is thread-safe)."""
        done = writer.finish()
        if done is None:
            return None
        pack_id, locations = done
        name = write_index(self.repo.backend, self.repo.key, pack_id, locations)
        self.repo.cache.add_index(name, locations)
        return pack_id

    def _hand_off(self, kind: int) -> None:
        writer = self._packs[kind]
        if not len(writer):
            return
        self._packs[kind] = self._new_pack()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.pack_writes, thread_name_prefix="pack-writer")
        self._inflight.append((writer, self._pool.submit(self._write_pack, writer)))
        # Retire in hand-off order: at most pack_writes stay in flight, and any already done go now.
        while len(self._inflight) > self.pack_writes or (self._inflight and self._inflight[0][1].done()):
            self._retire()

    def _retire(self) -> None:
        """Wait for the oldest pack in flight; record it, or keep its failure (sticky) and raise it here."""
        writer, future = self._inflight[0]
        try:
            pack_id = future.result()
        except BaseException as e:
            self._drop(writer)  # its blobs are no longer "known": nothing may be deduplicated against them
            if self._failed is None:
                self._failed = e
            raise
        self._drop(writer)  # its blobs are in the cache now (the writing thread added its index)
        if pack_id is not None:
            self.stats.packs.append(pack_id)

    def _drop(self, writer: PackWriter) -> None:
        """Forget the oldest pack in flight: its blobs are found in the cache from now on, or nowhere."""
        self._inflight.pop(0)

    def flush(self) -> None:
        """Write the open packs and wait for every pack in flight. Raises the first pack write that failed in this
        sink's life, whenever it was first raised: nothing this sink staged may be committed after a lost pack."""
        try:
            if self._failed is None:
                self._submit_batch()
                while self._sealing:
                    self._take_sealed()
                for kind in (DATA, TREE):
                    self._hand_off(kind)
        except BaseException:
            if self._failed is None:
                raise
        wait([f for _w, f in self._inflight])
        while self._inflight:
            try:
                self._retire()
            except BaseException:
                pass  # kept in _failed, raised below once every write has ended
        if self._failed is not None:
            raise self._failed

    def close(self) -> None:
        if self._seal_pool is not None:
            self._seal_pool.shutdown(wait=True)
            self._seal_pool = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
