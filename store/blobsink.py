"""BlobSink: the deduplicating blob writer under every snapshot writer and `copy`.

Known ids cost a cache lookup; new blobs are sealed (zstd + AES-GCM, store/packs.py) into the open pack of their
kind (data, or tree and delta), and a full pack is written (pack, fsync, index object, cache) by a background
thread while the caller goes on. Memory bound: (2 open + MAX_INFLIGHT) packs of ≤ 16 MiB each.

A blob in a candidate pack of a running prune is never deduplicated against (store/prune.py), and before a commit
`verify_packs` checks that every pack the snapshot depends on still exists.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import PackPruned
from .index import write_index
from .packs import DATA, TREE, PackWriter, open_blob, pack_name, seal_blob
from .prune import candidate_packs
from .repository import Repository


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

    A full pack is written (pack, fsync, index object, cache) by one background thread while chunking goes on, so
    disk and CPU overlap; at most MAX_INFLIGHT full packs wait for it, which bounds memory to
    (2 open + MAX_INFLIGHT) × 16 MiB. `flush()` waits for all of them and re-raises a failed write."""

    MAX_INFLIGHT = 1

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.stats = WriteStats()
        self._packs = {DATA: PackWriter(repo.backend, repo.key), TREE: PackWriter(repo.backend, repo.key)}
        self._avoid = candidate_packs(repo)  # packs a prune may delete: never dedup against them
        self.reused_packs: set[str] = set()
        self._verified: set[str] = set()  # dependencies already seen to exist
        self._inflight: list[tuple[PackWriter, Future]] = []
        self._pool: ThreadPoolExecutor | None = None

    def _writer(self, blob_type: int) -> PackWriter:
        return self._packs[DATA if blob_type == DATA else TREE]

    def _open_writers(self) -> list[PackWriter]:
        return [*self._packs.values(), *(w for w, _ in self._inflight)]

    def known(self, blob_id: bytes) -> bool:
        if any(blob_id in w.pending for w in self._open_writers()):
            return True
        loc = self.repo.locate(blob_id)
        if loc is None or loc.pack in self._avoid:
            return False
        self.reused_packs.add(loc.pack)
        return True

    def get(self, blob_id: bytes) -> bytes:
        """Read a blob, including one still in an open or not yet written pack."""
        for w in self._open_writers():
            if (sealed := w.sealed(blob_id)) is not None:
                return open_blob(self.repo.key, blob_id, sealed, "open pack")
        return self.repo.get_blob(blob_id)

    def verify_packs(self) -> None:
        """Before committing: every pack this snapshot depends on — reused or written by this writer — must still
        exist (a prune may have swept it). Each is checked once per writer."""
        for pack in sorted((self.reused_packs | set(self.stats.packs)) - self._verified):
            if not self.repo.backend.exists(pack_name(pack)):
                raise PackPruned(pack)
            self._verified.add(pack)

    def put(self, blob_type: int, plaintext: bytes, compress: bool) -> tuple[bytes, bool]:
        """Store a blob unless known; returns (id, was new)."""
        blob_id = self.repo.key.blob_id(plaintext)
        if self.known(blob_id):
            return blob_id, False
        sealed = seal_blob(self.repo.key, blob_id, plaintext, compress)
        writer = self._writer(blob_type)
        writer.add(blob_id, blob_type, sealed, len(plaintext))
        self.stats.new_blobs += 1
        self.stats.new_raw += len(plaintext)
        self.stats.new_bytes += len(sealed)
        if writer.full():
            self._hand_off(DATA if blob_type == DATA else TREE)
        return blob_id, True

    def _write_pack(self, writer: PackWriter) -> None:
        done = writer.finish()
        if done is None:
            return
        pack_id, locations = done
        name = write_index(self.repo.backend, self.repo.key, pack_id, locations)
        self.repo.cache.add_index(name, locations)
        self.stats.packs.append(pack_id)

    def _hand_off(self, kind: int) -> None:
        writer = self._packs[kind]
        if not len(writer):
            return
        self._packs[kind] = PackWriter(self.repo.backend, self.repo.key)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-writer")
        self._inflight.append((writer, self._pool.submit(self._write_pack, writer)))
        while len(self._inflight) > self.MAX_INFLIGHT or (self._inflight and self._inflight[0][1].done()):
            self._retire()

    def _retire(self) -> None:
        _writer, future = self._inflight[0]
        try:
            future.result()  # re-raises a failed write here, in the caller's thread
        finally:
            self._inflight.pop(0)

    def flush(self) -> None:
        for kind in (DATA, TREE):
            self._hand_off(kind)
        while self._inflight:
            self._retire()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
