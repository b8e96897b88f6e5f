"""Copy snapshots from one vault to another (local ⇄ S3, S3 ⇄ S3), each vault with its own password and keys.

Nothing is copied as stored bytes: blob ids are keyed hashes and blobs are sealed under each vault's master key, so
a blob of the source is opened there and stored again in the target through the target's own write path
(`SnapshotWriter`: its sink deduplicates against the target's index, writes packs and index objects, and commits
with put_exclusive, so a copy is crash-safe exactly as an import is). What crosses over is a blob's stored form
(flag || payload: compressed or not, as the source stored it), decrypted under the source's key and encrypted under
the target's (`seal_blob(..., stored=)`), so nothing is compressed again; its target id is the target's keyed hash
of the plaintext. The chunk boundaries are the source's: each source chunk becomes one target blob (never re-chunked), a file's entry keeps its path, size, mode
and mtime, and the snapshot keeps its device, its backup time, its source and the sync layer's record (meta).

Which snapshots the target lacks: a snapshot is identified across vaults by (device UDID, backup time, source,
meta), which a copy keeps; the same backup imported into both vaults is therefore also "already there". Only live
snapshots are copied (forgotten ones are not), oldest first, so each device's current snapshot in the target is its
newest copied one. Tags, pins and rollbacks stay behind.

Resumable: a snapshot is committed in one event or not at all. A copy killed halfway leaves packs whose blobs the
next run finds in the target's index: it reads those chunks from the source again (to learn their target ids) but
writes none of them. A second run finds every snapshot present and copies nothing.

Speed: the source's chunks are read, opened (decrypted, decompressed), hashed under the target's id key and sealed
under its key by READERS threads ahead of the writer, in order; this thread only asks the target's sink whether it
has each id and hands it the sealed blob (`BlobSink.put_sealed`: no sealing queue, no hand-off per batch), and the
sink writes packs on its own threads (store/blobsink.py: several packs in flight, which an object store needs to
keep its connections busy). A chunk the target has already was sealed for nothing: AES-GCM over its bytes, which a
resumed copy pays once per chunk it had stored (a hash and a lookup of it were needed anyway). Each chunk is still
looked up in the source's cache by this thread (the cache is read by its owner only); a run of chunks stored one
after another in one source pack (≤ READ_GROUP_BYTES) is one ranged read and one task, not one per chunk (a phone's
small files make ~26 KiB chunks on average). While a snapshot is copied the objects alive before it are frozen out of the cyclic garbage
collector (gc.freeze), which otherwise went over all of them again and again. Every blob is still authenticated
when opened, in the source under its key, and sealed afresh in the target.

Memory: one snapshot's file list at a time (its tree, as `load_tree` returns it, and the target writer's staged
tree; ~200 bytes per file each), the last copied snapshot's chunk-id map of the same device (so a file unchanged
since the previous snapshot costs no read: its target chunk ids are known), the chunks read ahead (≤
READ_AHEAD_BYTES = 4 MiB + one group of plaintext, held sealed for the target, no larger than the plaintext but
for 29 bytes a chunk; plus the group reads in progress, READERS × (READ_GROUP_BYTES + READ_GAP) or one chunk, and
the one chunk each reader is opening), and
the target writer's sink (2 open packs + the backend's
pack_writes in flight + its sealing queue; the formula is in store/blobsink.py).
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

from .chunker import SNIFF_LEN, choose_policy
from .crypto import OVERHEAD, MasterKey
from .errors import MissingObject
from .packs import DATA, STORED, BlobLocation, open_stored, pack_name
from .projections import DeviceView, SnapshotRecord
from .repository import Repository
from .trees import FileEntry, load_tree
from .writer import SnapshotWriter

Progress = Callable[[int], None]  # bytes of file content handled so far
Resealed = tuple[
    bytes, bytes, int
]  # a source chunk made ready for the target: (its id there, sealed there, raw length)
T = TypeVar("T")

READERS = 2  # threads reading and opening source chunks ahead of the writer
# Plaintext read ahead, at most (plus one chunk). 16 MiB cost 70 MB of peak RSS in a 400 MB copy at load 7 (a chunk
# is held twice, plaintext and stored form, and freed on reader threads' malloc arenas) and saved no wall time.
READ_AHEAD_BYTES = 4 << 20
# One ranged read serves a run of blobs stored one after another in a source pack, up to this much (a blob larger is
# read alone), skipping at most READ_GAP bytes between two of them (a blob another file holds, or one skipped):
# 22 000 reads and thread hand-offs of 26 KiB each cost a 600 MB copy ~0.5 CPU s, on cores the S3 server needs.
READ_GROUP_BYTES = 1 << 20
READ_GAP = 64 << 10


@dataclass(frozen=True, slots=True)
class CopiedSnapshot:
    source: str  # the snapshot's id in the source vault (hex)
    target: str  # its id in the target vault (hex), or "" when it was already there
    device: str
    files: int
    size: int
    new_bytes: int  # stored bytes the target did not have


@dataclass(frozen=True, slots=True)
class CopyResult:
    copied: tuple[CopiedSnapshot, ...]
    present: tuple[CopiedSnapshot, ...]  # already in the target: nothing written

    @property
    def new_bytes(self) -> int:
        return sum(c.new_bytes for c in self.copied)


def identity(device: str | None, snap: SnapshotRecord) -> tuple:
    """What says two snapshots in two vaults are the same backup."""
    return (device, snap.time, snap.source, snap.meta)


def plan(
    src: Repository, dst: Repository, wanted: Iterable[tuple[DeviceView, SnapshotRecord]] | None = None
) -> list[tuple[DeviceView, SnapshotRecord, bool]]:
    """(device view, snapshot, already in the target) for each snapshot to consider, oldest first per device."""
    if wanted is None:
        wanted = [(v, s) for v in src.devices() for s in v.live()]
    present = {identity(v.device, s) for v in dst.devices() for s in v.live()}
    chosen = sorted({(v.key, s.id): (v, s) for v, s in wanted}.values(), key=lambda vs: (vs[0].key, vs[1].time))
    return [(v, s, identity(v.device, s) in present) for v, s in chosen]


def copy_snapshots(
    src: Repository,
    dst: Repository,
    wanted: Iterable[tuple[DeviceView, SnapshotRecord]] | None = None,
    *,
    progress: Progress | None = None,
    on_snapshot: Callable[[CopiedSnapshot, bool], None] | None = None,
) -> CopyResult:
    """Copy `wanted` (default: every live snapshot of every device) that `dst` lacks. `on_snapshot(record, copied)`
    is told of each as it is done; `progress` of the bytes of file content handled."""
    copied: list[CopiedSnapshot] = []
    present: list[CopiedSnapshot] = []
    done_bytes = 0
    previous: dict[str, tuple[str, dict[str, tuple[tuple[bytes, ...], tuple[bytes, ...]]]]] = {}
    for view, snap, there in plan(src, dst, wanted):
        device = view.device or view.key
        if there:
            rec = CopiedSnapshot(snap.hex, "", device, snap.stats.files, snap.stats.size, 0)
            present.append(rec)
            done_bytes += snap.stats.size
            if progress:
                progress(done_bytes)
            if on_snapshot:
                on_snapshot(rec, False)
            continue
        known = previous.get(view.key, ("", {}))[1]
        entries = load_tree(snap.tree, src.get_blob)
        chunk_map: dict[str, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}
        paths = sorted(entries)
        to_read = (c for p in paths if _unchanged(known, entries[p]) is None for c in entries[p].chunks)
        # The objects alive now (this snapshot's file list, both vaults' state, botocore's service model: ~10⁵)
        # live through the whole copy; the cyclic collector went over all of them at each full collection, ~0.6 CPU
        # s of a 600 MB copy. Frozen, it only looks at what the copy allocates since.
        gc.freeze()
        try:
            with (
                ThreadPoolExecutor(READERS, thread_name_prefix="copy-read") as pool,
                SnapshotWriter(dst, device, view.info, incremental=False) as writer,
            ):
                ready = _read_ahead(src, to_read, pool, _resealer(dst.key))
                for path in paths:
                    entry = entries[path]
                    ids = _unchanged(known, entry)
                    if ids is None:
                        ids = _store_chunks(writer, islice(ready, len(entry.chunks)))
                    if not writer.put_entry(_with_chunks(entry, ids)):
                        # a prune took a known chunk's pack meanwhile: store anew
                        ids = _copy_chunks(src, writer, entry)
                        writer.put_entry(_with_chunks(entry, ids))
                    if entry.chunks:
                        chunk_map[path] = (entry.chunks, ids)
                    done_bytes += entry.size
                    if progress:
                        progress(done_bytes)
                new = writer.commit(snap.source, meta=snap.meta, time_us=snap.time)
        finally:
            gc.unfreeze()
        previous[view.key] = (snap.hex, chunk_map)
        rec = CopiedSnapshot(snap.hex, new.hex, device, new.stats.files, new.stats.size, new.stats.new_bytes)
        copied.append(rec)
        if on_snapshot:
            on_snapshot(rec, True)
    return CopyResult(tuple(copied), tuple(present))


def _with_chunks(entry: FileEntry, chunks: tuple[bytes, ...]) -> FileEntry:
    """`dataclasses.replace(entry, chunks=chunks)`, every other field kept (cipher_key too), at a third of its cost
    per file; tests/store/test_copy_entries.py holds it to `replace` and to FileEntry's list of fields."""
    return FileEntry(entry.path, entry.size, entry.mode, entry.mtime_ns, chunks, entry.cipher_key)


def _unchanged(known: dict[str, tuple[tuple[bytes, ...], tuple[bytes, ...]]], entry: FileEntry) -> tuple | None:
    """The target ids of a file whose chunks are those it had in the previous copied snapshot: it needs no read."""
    m = known.get(entry.path)
    return m[1] if m is not None and m[0] == entry.chunks else None


def _resealer(key: MasterKey) -> Callable[[bytes | memoryview, bytes], Resealed]:
    """On a reader thread: a source chunk's (plaintext, stored form) as the target stores it: its stored form sealed
    as it is, as `seal_blob(key, blob_id, plain, False, stored)` seals it, in one buffer (`seal_buffer`)."""

    def reseal(plain: bytes | memoryview, stored: bytes) -> Resealed:
        blob_id = key.blob_id(plain)
        return blob_id, key.seal_buffer(stored, blob_id), len(plain)

    return reseal


def _opened(
    key: MasterKey, chunk: bytes, loc: BlobLocation, sealed: memoryview, name: str, made: Callable[[bytes, bytes], T]
) -> T:
    """`made(plaintext, stored form)` of one source blob. A blob stored uncompressed (its sealed length is its
    plaintext's + the flag byte + the seal's overhead; store/packs.py seals flag 0 || plaintext then) is opened
    where it lies in the group's read, and its plaintext is a view of the stored form, not a copy of it; media
    chunks, most of a phone's bytes, are such blobs. Any other goes through `open_stored` (zstd)."""
    if loc.length == loc.raw_length + 1 + OVERHEAD:
        inner = key.open_view(sealed, chunk, name)
        if inner[:1] == STORED:
            return made(memoryview(inner)[1:], inner)
    return made(*open_stored(key, chunk, sealed, name))


def _read_ahead(
    src: Repository, chunks: Iterable[bytes], pool: ThreadPoolExecutor, made: Callable[[bytes, bytes], T]
) -> Iterator[T | bytes]:
    """`made(plaintext, stored form)` of each of `chunks`, in order, computed on `pool`; or the plaintext alone
    (bytes) of a chunk that had to be read again. Each is located here (this thread owns the cache); a run of chunks
    stored one after another in one pack (a source pack holds a file's chunks in order, and the next file's) is one
    ranged read, opened on `pool` as one task, up to READ_AHEAD_BYTES of plaintext ahead. A chunk not found, or
    whose pack vanished meanwhile (a prune moved it), is read again by `get_blob`, which reloads the index and says
    what is missing."""
    groups: deque[tuple[list[bytes], int, Future[list[T] | None] | None]] = deque()
    held = 0  # plaintext bytes of the groups read or being read
    run: list[tuple[bytes, BlobLocation]] = []  # the group being gathered: chunks of one pack, in read order
    run_end = 0

    def fetch(run: list[tuple[bytes, BlobLocation]]) -> list[T] | None:
        name = pack_name(run[0][1].pack)
        start = run[0][1].offset
        try:
            data = memoryview(src.backend.get_range(name, start, _run_end(run) - start))
        except MissingObject:
            return None
        return [
            _opened(src.key, chunk, loc, data[loc.offset - start : loc.offset - start + loc.length], name, made)
            for chunk, loc in run
        ]

    def submit() -> None:
        nonlocal held
        if run:
            size = sum(loc.raw_length for _c, loc in run)
            groups.append(([c for c, _l in run], size, pool.submit(fetch, list(run))))
            held += size
            run.clear()

    def take() -> Iterator[T | bytes]:
        nonlocal held
        group, size, future = groups.popleft()
        held -= size
        opened = future.result() if future is not None else None
        if opened is not None:
            yield from opened
        else:
            for chunk in group:
                yield src.get_blob(chunk)

    for chunk in chunks:
        loc = src.locate(chunk)
        if not (
            loc is not None
            and run
            and loc.pack == run[0][1].pack
            and run_end <= loc.offset <= run_end + READ_GAP
            and loc.offset + loc.length - run[0][1].offset <= READ_GROUP_BYTES
        ):
            submit()
        if loc is None:
            groups.append(([chunk], 0, None))
        else:
            run.append((chunk, loc))
            run_end = loc.offset + loc.length
        while held > READ_AHEAD_BYTES:
            yield from take()
    submit()
    while groups:
        yield from take()


def _run_end(run: list[tuple[bytes, BlobLocation]]) -> int:
    """Where a group's ranged read ends: its last blob's end (blobs of a group are in pack order)."""
    _chunk, last = run[-1]
    return last.offset + last.length


def _store_chunks(writer: SnapshotWriter, chunks: Iterable[Resealed | bytes]) -> tuple[bytes, ...]:
    """Store each chunk of a file in the target (unless it has it); its target ids. A chunk comes sealed for the
    target from its stored form (compressed or not as the source stored it, not compressed again); one read again
    comes as its plaintext, compressed as an import of the same file would decide, from its first bytes."""
    sink = writer.sink
    ids: list[bytes] = []
    compress: bool | None = None
    for chunk in chunks:
        if isinstance(chunk, tuple):
            blob_id, sealed, raw_length = chunk
            sink.put_sealed(DATA, blob_id, sealed, raw_length)
        else:
            if compress is None:  # the sniff costs a zstd pass over 64 KiB: only when needed
                compress = choose_policy(chunk[:SNIFF_LEN]).compress
            blob_id = sink.put(DATA, chunk, compress)[0]
        ids.append(blob_id)
    return tuple(ids)


def _copy_chunks(src: Repository, writer: SnapshotWriter, entry: FileEntry) -> tuple[bytes, ...]:
    """`_store_chunks` of `entry`'s chunks read one at a time (the rare second try after a prune)."""
    return _store_chunks(writer, (src.get_blob(chunk) for chunk in entry.chunks))
