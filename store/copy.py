"""Copy snapshots from one vault to another (local ⇄ S3, S3 ⇄ S3), each vault with its own password and keys.

Nothing is copied as stored bytes: blob ids are keyed hashes and blobs are sealed under each vault's master key, so
a blob of the source is opened there and stored again in the target through the target's own write path
(`SnapshotWriter`: its sink deduplicates against the target's index, seals under its key, writes packs and index
objects, and commits with put_exclusive, so a copy is crash-safe exactly as an import is). The chunk boundaries are
the source's: each source chunk becomes one target blob (never re-chunked), a file's entry keeps its path, size, mode
and mtime, and the snapshot keeps its device, its backup time, its source and the sync layer's record (meta).

Which snapshots the target lacks: a snapshot is identified across vaults by (device UDID, backup time, source,
meta), which a copy keeps; the same backup imported into both vaults is therefore also "already there". Only live
snapshots are copied (forgotten ones are not), oldest first, so each device's current snapshot in the target is its
newest copied one. Tags, pins and rollbacks stay behind.

Resumable: a snapshot is committed in one event or not at all. A copy killed halfway leaves packs whose blobs the
next run finds in the target's index: it reads those chunks from the source again (to learn their target ids) but
writes none of them. A second run finds every snapshot present and copies nothing.

Memory: one snapshot's file list at a time (its tree, as `load_tree` returns it, and the target writer's staged
tree; ~200 bytes per file each), the last copied snapshot's chunk-id map of the same device (so a file unchanged
since the previous snapshot costs no read: its target chunk ids are known), one chunk, and the target writer's
packs ((2 open + MAX_INFLIGHT) × 16 MiB, store/writer.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from .chunker import SNIFF_LEN, choose_policy
from .packs import DATA
from .projections import DeviceView, SnapshotRecord
from .repository import Repository
from .trees import FileEntry, load_tree
from .writer import SnapshotWriter

Progress = Callable[[int], None]  # bytes of file content handled so far


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
        with SnapshotWriter(dst, device, view.info, incremental=False) as writer:
            for path in sorted(entries):
                entry = entries[path]
                mapped = known.get(path)
                if mapped is not None and mapped[0] == entry.chunks:
                    ids = mapped[1]
                else:
                    ids = _copy_chunks(src, writer, entry)
                if not writer.put_entry(replace(entry, chunks=ids)):  # every other field kept (cipher_key)
                    ids = _copy_chunks(src, writer, entry)  # a prune took a known chunk's pack meanwhile: store anew
                    writer.put_entry(replace(entry, chunks=ids))
                if entry.chunks:
                    chunk_map[path] = (entry.chunks, ids)
                done_bytes += entry.size
                if progress:
                    progress(done_bytes)
            new = writer.commit(snap.source, meta=snap.meta, time_us=snap.time)
        previous[view.key] = (snap.hex, chunk_map)
        rec = CopiedSnapshot(snap.hex, new.hex, device, new.stats.files, new.stats.size, new.stats.new_bytes)
        copied.append(rec)
        if on_snapshot:
            on_snapshot(rec, True)
    return CopyResult(tuple(copied), tuple(present))


def _copy_chunks(src: Repository, writer: SnapshotWriter, entry: FileEntry) -> tuple[bytes, ...]:
    """Store each chunk of `entry` in the target (unless it has it); its target ids. Compressed as an import of
    the same file would decide, from its first bytes."""
    ids: list[bytes] = []
    compress: bool | None = None
    for chunk in entry.chunks:
        plain = src.get_blob(chunk)
        if compress is None:
            compress = choose_policy(plain[:SNIFF_LEN]).compress
        ids.append(writer.sink.put(DATA, plain, compress)[0])
    return tuple(ids)
