"""Staging and committing a snapshot: the write path.

`SnapshotWriter` holds the staged content of one backup (a StagedTree: path -> FileEntry, about 200 bytes per file,
plus a folder index of ~40 bytes per entry once a device moves or copies something) and two pack writers (data,
tree). A writer that is told a shard is complete (`seal_shard`: a folder import, after each `xx/` folder) writes
that shard's tree node and its changes against the parent's shard at once and drops its entries, so it holds one
shard, not the snapshot; the rest is written at the commit. Deltas stream (trees.DeltaWriter): one group of
changes (≤ DELTA_GROUP, packed: ~120 bytes an entry of one chunk) is held, whatever the number of files. Files arrive as pushed blocks
(`open_file(...).write(block)`), so a 4 GB video costs the same memory as a 4 MB photo: one chunker buffer
(≤ 10 MiB, ~3-4 MiB of it mapped: store/chunker.py CUT_AHEAD), one open data pack and one being written (≤ 16 MiB
each, plus one blob).
Memory bound, folder import: one shard's entries + the parent's same shard (diffed) + one delta group + two packs,
plus the cache's index pages mapped between two trims: ≤ TRIM_GROWTH (2 MiB) and TRIM_CHECK lookups' worth more (~150
KB a lookup), the map being trimmed once it grew that much, every TRIM_LOOKUPS lookups and at each shard.

Write order, which crash safety rests on: data packs (+ their index objects) as they fill; tree nodes and delta
blobs into tree packs (+ index) as shards are sealed and at commit; then the event segment via put_exclusive — the
commit point. A crash
before that leaves only unreferenced packs, whose blobs a resumed backup finds in the index and does not write again.

Against a prune running meanwhile (the protocol is stated in full in store/prune.py):
1. the writer registers first: a sealed `writers/<random>` marker [1, started_us, refreshed_us], refreshed by a
   daemon thread every minute and deleted when the writer commits or is closed (`close()`, `with`, garbage
   collection or interpreter exit, whichever comes first). A prune sweeps no candidate pack that a writer which
   started before the candidate was marked could depend on while that writer's marker is fresh;
2. it then reads the prune markers and never deduplicates against a candidate pack;
3. before the commit point it checks that every pack it depends on — every pack it wrote and every pack it
   deduplicated against — still exists, and raises PackPruned otherwise (nothing is committed). Content inherited
   from the parent is protected by the registration alone (checking it would mean locating every chunk of the
   snapshot): the parent is the device's head; forgetting it moves the head first, and if the head moves the commit
   fails with ConcurrentCommit.

Every path staged is a safe relative path, whoever the caller is (a folder walk, a device): see store/staged.py,
which also bounds the cost of every edit of the staged tree.
"""

from __future__ import annotations

import operator
import os
import stat
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from .blobsink import BlobSink, WriteStats
from .chunker import SNIFF_LEN, Policy, StreamChunker, choose_policy, chunk_bytes
from .errors import PhonevaultError
from .events import DeviceSeen, SnapshotCommitted
from .packs import DATA, DELTA, TREE
from .projections import SnapshotRecord
from .prune import WRITER_REFRESH_S, seal_writer_marker, writer_marker_name
from .records import DeviceRecord, SnapshotStats
from .repository import Repository, now_us
from .residency import TRIM_GROWTH, release_free_heap
from .staged import StagedTree, check_path
from .trees import (
    DeltaWriter,
    FileEntry,
    ShardRef,
    decode_shard,
    diff_states,
    encode_root,
    encode_shard,
    load_tree,
    read_root,
    shard_of,
    write_shard,
)


class WriterRegistration:
    """This writer's `writers/<random>` marker (format in store/prune.py): put at once, put again every
    REFRESH_S by a daemon thread, deleted by `release()`. Holds no reference to the writer, so a writer that is
    dropped without being closed is still collected, and its finalizer releases the marker."""

    REFRESH_S = WRITER_REFRESH_S

    def __init__(self, repo: Repository) -> None:
        self._backend = repo.backend
        self._key = repo.key
        self.name = writer_marker_name()
        self.started_us = now_us()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._released = False
        self._put(self.started_us)  # a failure here stops the writer before it decided anything
        self._thread = threading.Thread(target=self._refresh, name="writer-marker", daemon=True)
        self._thread.start()

    def _put(self, refreshed_us: int) -> None:
        self._backend.put(self.name, seal_writer_marker(self._key, self.name, self.started_us, refreshed_us))

    def _refresh(self) -> None:
        while not self._stop.wait(self.REFRESH_S):
            with self._lock:  # never put again after release() deleted the marker
                if self._released:
                    return
                try:
                    self._put(now_us())
                except (OSError, PhonevaultError):
                    pass  # tried again next time; if it keeps failing the marker goes stale and step 3 still holds

    def release(self) -> None:
        if os.getpid() != self._pid:
            return  # a forked child (the Manifest.db parser) exiting must not unregister its parent
        with self._lock:
            if self._released:
                return
            self._released = True
            self._stop.set()
        try:
            self._backend.delete(self.name)
        except (OSError, PhonevaultError):
            pass  # left behind, it goes stale in ten minutes and the next prune removes it


class FileWriter:
    """Push-based writer of one file: `write(block)` as bytes arrive, `close()` to get its entry."""

    def __init__(self, owner: SnapshotWriter, path: str, mode: int, mtime_ns: int) -> None:
        self._owner = owner
        self.path = path
        self._mode = mode
        self._mtime_ns = mtime_ns
        self._head = bytearray()
        self._policy: Policy | None = None
        self._chunker: StreamChunker | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._new = False

    def _start(self) -> None:
        self._policy = choose_policy(bytes(self._head[:SNIFF_LEN]))
        self._chunker = StreamChunker(self._policy.profile)
        head, self._head = self._head, bytearray()
        self._emit(self._chunker.feed(head))

    def _emit(self, chunks: Iterable[bytes]) -> None:
        sink, before = self._owner.sink, len(self._chunks)
        for chunk in chunks:
            blob_id, new = sink.put(DATA, chunk, self._policy.compress)
            self._chunks.append(blob_id)
            self._new |= new
        self._owner._looked_up(len(self._chunks) - before)

    def write(self, data: bytes | memoryview) -> None:
        self._size += len(data)
        if self._chunker is None:
            self._head += data
            if len(self._head) >= SNIFF_LEN:
                self._start()
        else:
            self._emit(self._chunker.feed(data))

    def read_from(self, f: BinaryIO, limit: int = 1 << 20) -> int:
        """Read the next block (≤ `limit` bytes) of `f` into the file and store what it completes; returns the bytes
        read, 0 at the end of `f`. The same as `write(f.read(limit))`, but read straight into the chunker's buffer:
        no block object of fresh memory and no copy of it per block (a large file's import is page faults and
        copies more than hashing and sealing)."""
        if self._chunker is None:
            block = f.read(min(limit, SNIFF_LEN - len(self._head)))  # the sniff sample first: a small read
            self.write(block)
            return len(block)
        n = self._chunker.read_from(f, limit)
        self._size += n
        self._emit(self._chunker.ready())
        return n

    def close(self, cipher_key: bytes = b"") -> FileEntry:
        """Stage the file. `cipher_key`: what was written is a plaintext the source sent encrypted (store/trees.py)."""
        if self._chunker is None:
            self._start()
        self._emit(self._chunker.finish())
        entry = FileEntry(self.path, self._size, self._mode, self._mtime_ns, tuple(self._chunks), cipher_key)
        self._owner._put(entry, new=self._new)
        return entry


class SnapshotWriter:
    """Stage one snapshot of one device. `incremental=True` starts from the parent's content (device backups send
    only changes); `False` starts empty (a folder import lists everything).

    `commit()` ends the writer whether it succeeds or raises; a writer abandoned before committing should be
    closed (`close()`, or use it as a context manager) so running prunes stop holding packs back for it at once;
    if it is not, its marker goes when the writer is garbage-collected or the process exits."""

    # The cache's map is trimmed as lookups map it, not only at each shard: every lookup maps the index pages it
    # descends through and, by the kernel's fault-around, up to 15 cached neighbours of each (~150 KB a lookup in a
    # large index), so at 300 000 files one 1 200-file shard mapped 30-45 MB of the index between trims, and a
    # 267 MB Manifest.db (~4 000 chunks, one file) 80 MB. Every TRIM_CHECK data blobs looked up (in blobs, not files,
    # for that one file) it is trimmed if the process's file-backed memory grew TRIM_GROWTH (store/residency.py), and
    # every TRIM_LOOKUPS whatever: 256 lookups alone let 20-30 MB map between trims at 300 000 to 1 000 000 files.
    TRIM_LOOKUPS = 256
    TRIM_CHECK = 32

    def __init__(
        self, repo: Repository, device: str, info: DeviceRecord, *, incremental: bool, parent: bytes | None = ...
    ):
        self.repo = repo
        self.device = device
        self.info = info
        self.sink: BlobSink | None = None
        self._refs: dict[str, ShardRef] = {}  # shards written so far (`seal_shard`, then the rest at commit)
        self._done: set[str] = set()  # shards written or found empty: no entry may be staged in them any more
        self._inherited: dict[str, tuple[bytes, list[FileEntry]]] = {}  # shard -> the parent's node, staged whole
        self._deltas = DeltaWriter(lambda data: self.sink.put(DELTA, data, True)[0])
        self._counts = [0, 0, 0, 0, 0]  # files, bytes, added, modified, removed: of the shards written
        self._untrimmed = 0  # data blobs looked up since the cache's map was last trimmed (TRIM_LOOKUPS)
        # Register before deciding anything about reuse, then read the prune markers (BlobSink), then catch the
        # cache up with index objects a sweep deleted before those markers were read.
        self._registration = WriterRegistration(repo)
        self._finalizer = weakref.finalize(self, self._registration.release)
        try:
            self.sink = BlobSink(repo)
            repo.sync_index()
            self.device_key = repo.device_key(device)
            self.view = repo.view(self.device_key, refresh=True)
            self.parent: SnapshotRecord | None = self.view.head_record if parent is ... else self.view.get(parent)
            # Only an incremental writer starts from the parent's content; the delta against the parent is computed
            # at commit by diffing trees, which descends only into shards whose ids changed.
            self.tree = StagedTree(load_tree(self.parent.tree, repo.get_blob) if incremental and self.parent else {})
            self._parent_refs = {r.shard: r for r in read_root(self.parent.tree, self.sink.get)} if self.parent else {}
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """End this writer without committing (a no-op after commit): its marker goes, its pack thread stops."""
        self._finalizer()
        if self.sink is not None:
            self.sink.close()

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def state(self) -> dict[str, FileEntry]:
        return self.tree.state

    @property
    def stats(self) -> WriteStats:
        return self.sink.stats

    def open_file(self, path: str, mode: int = 0o100644, mtime_ns: int = 0) -> FileWriter:
        if path not in self.tree.state:
            check_path(path)  # before a byte of it is stored
        return FileWriter(self, path, mode, mtime_ns)

    def put_bytes(self, path: str, mode: int, mtime_ns: int, data: bytes) -> FileEntry:
        """Stage a whole file given at once (import's small files, read ahead by reader threads): the same chunks
        and entry as `open_file(...).write(data)` + `close()`, without a chunker or a FileWriter of its own; a file
        no longer than its profile's minimum chunk is one chunk, as FastCDC would cut it, without running FastCDC."""
        if path not in self.tree.state:
            check_path(path)
        policy = choose_policy(data[:SNIFF_LEN])
        if len(data) <= policy.profile.min_size:
            chunks = [data] if data else []
        else:
            chunks = chunk_bytes(data, policy.profile)
        sink, ids, new = self.sink, [], False
        for chunk in chunks:
            blob_id, fresh = sink.put(DATA, chunk, policy.compress)
            ids.append(blob_id)
            new |= fresh
        self._looked_up(len(chunks))
        entry = FileEntry(path, len(data), mode, mtime_ns, tuple(ids))
        self._put(entry, new=new)
        return entry

    def _looked_up(self, blobs: int) -> None:
        """`blobs` more data blobs were looked up in the index: the cache's map is trimmed as they map it."""
        before, self._untrimmed = self._untrimmed, self._untrimmed + blobs
        if self._untrimmed >= self.TRIM_LOOKUPS:
            self._untrimmed = 0
            self.repo.cache.trim()
        elif before // self.TRIM_CHECK != self._untrimmed // self.TRIM_CHECK:
            self.repo.cache.trim(TRIM_GROWTH)

    def _stage(self, entry: FileEntry) -> None:
        if self._done and shard_of(entry.path) in self._done:
            raise ValueError(f"{entry.path}: its shard was already written (seal_shard)")
        self.tree.set(entry)

    def _put(self, entry: FileEntry, *, new: bool) -> None:
        self._stage(entry)
        self.stats.new_files += int(new)

    def read_file(self, entry: FileEntry) -> Iterator[bytes]:
        """The bytes of a staged file, whether its chunks are already in packs or still in the open one."""
        for chunk in entry.chunks:
            yield self.sink.get(chunk)

    def put_entry(self, entry: FileEntry) -> bool:
        """Reuse an entry whose chunks are already stored (stat cache hit); False if any chunk is unknown. Each
        lookup counts towards the cache's trim (`_looked_up`), as a stored chunk's does: a day-2 import's shard with
        one changed file checks every other file of it here, and those lookups mapped ~60 KB of the index each until
        the shard's trim (1 200 files a shard at 300 000 files: 70 MB)."""
        known = self.sink.known
        for c in entry.chunks:
            found = known(c)
            self._looked_up(1)
            if not found:
                return False
        self._stage(entry)
        self.stats.reused_files += 1
        return True

    def put_parent_shard(self, node: bytes, entries: list[FileEntry]) -> bool:
        """Stage a shard's entries, each known from the stat cache, as the parent's shard if they make its tree node
        `node` (by keyed hash: the same paths, sizes, modes, mtimes and chunk ids). Their chunks are then the
        parent's, which the vault holds and this writer's registration protects from a prune as it protects all
        content inherited from its head (store/prune.py), so no chunk is looked up in the blob index (one random page
        read per file on a cold cache). False, nothing staged, if they make another node."""
        if self.repo.key.blob_id(encode_shard(entries)) != node:
            return False
        if entries:
            # One shard, the parent's: its paths were checked when the parent staged them (the keyed hash covers
            # them), so they are staged without `check_path` and the shard's seal reuses the node (`_write_shard`).
            shard = shard_of(entries[0].path)
            if shard in self._done:
                raise ValueError(f"{entries[0].path}: its shard was already written (seal_shard)")
            stage = getattr(self.tree, "set_checked", self.tree.set)
            for entry in entries:
                stage(entry)
            self._inherited[shard] = (node, entries)
        self.stats.reused_files += len(entries)
        return True

    def add_dir(self, path: str, mode: int = 0o040755, mtime_ns: int = 0) -> None:
        self._stage(FileEntry(path, 0, stat.S_IFDIR | (mode & 0o7777), mtime_ns))

    def get(self, path: str) -> FileEntry | None:
        return self.tree.get(path)

    def remove(self, path: str) -> int:
        """Remove a path and everything under it; returns how many entries went."""
        return self.tree.remove(path)

    def move(self, src: str, dst: str) -> int:
        return self.tree.move(src, dst)

    def copy(self, src: str, dst: str) -> int:
        """Copy a path (or a subtree) within the staged tree; the chunks are shared, nothing is re-read."""
        return self.tree.copy(src, dst)

    def drop_nonempty_dirs(self) -> None:
        self.tree.drop_nonempty_dirs()

    def commit(self, source: str, *, meta: bytes = b"", time_us: int | None = None) -> SnapshotRecord:
        """Write tree + deltas, check every pack this snapshot depends on, then append the event segment (the
        commit point). Raises ConcurrentCommit if another backup of this device committed since this one started,
        PackPruned if a prune deleted a pack it needs; nothing is lost either way (run it again: what was stored is
        reused). The writer is closed afterwards, whatever happened."""
        try:
            return self._commit(source, meta, time_us)
        finally:
            self.close()

    def seal_shard(self, shard: str) -> None:
        """Write shard `shard` (every staged path whose first component it is; "" is the top level) now: its tree
        node, and its changes against the parent's shard into the delta stream; its entries leave memory. Every
        entry of it must be staged by then: staging one in it afterwards raises ValueError. A folder import calls
        this after each `xx/` folder, so it holds one shard rather than the snapshot."""
        self._write_shard(shard, self.tree.take_shard(shard))
        self.repo.cache.trim()  # the cache pages this shard's lookups mapped (store/residency.py)
        release_free_heap()  # and the heap pages its buffers left free

    def _put_tree(self, data: bytes) -> bytes:
        return self.sink.put(TREE, data, True)[0]

    def _write_shard(self, shard: str, entries: list[FileEntry]) -> None:
        if shard in self._done:
            raise ValueError(f"shard {shard!r} was already written")
        self._done.add(shard)
        old = self._parent_refs.get(shard)
        node, inherited = self._inherited.pop(shard, (None, ()))
        if (  # exactly the entries `put_parent_shard` found to be the parent's node: no encode, no hash, one lookup
            old is not None
            and old.node == node
            and len(entries) == len(inherited)
            and all(map(operator.is_, entries, inherited))
            and self.sink.known(node)  # a prune's candidate pack is not reused: then written again, as `put` does
        ):
            ref = old
        else:
            ref = write_shard(shard, entries, self._put_tree) if entries else None
        if ref is not None:
            self._refs[shard] = ref
        if ref is None or old is None or old.node != ref.node:  # an unchanged shard keeps its id: no changes
            where = f"tree {old.node.hex()[:16]}" if old is not None else ""
            before = {e.path: e for e in decode_shard(self.sink.get(old.node), where)} if old is not None else {}
            for c in diff_states(before, {e.path: e for e in entries}):
                self._deltas.add(c)
                if c.kind == "modified" and c.old is not None and c.new is not None and c.old.chunks == c.new.chunks:
                    continue  # the same bytes with another mode or mtime: not modified (as `diff` says)
                self._counts[("added", "modified", "removed").index(c.kind) + 2] += 1
        files = [e for e in entries if not e.is_dir]
        self._counts[0] += len(files)
        self._counts[1] += sum(e.size for e in files)

    def _commit(self, source: str, meta: bytes, time_us: int | None) -> SnapshotRecord:
        self.sink.flush()
        self.sink.verify_packs()  # early: before the rest of the tree is written
        rest = self.tree.by_shard()  # a spilling tree (store/spilled.py) merges each shard only as it is popped
        for shard in sorted((rest.keys() | self._parent_refs.keys()) - self._done):
            self._write_shard(shard, rest.pop(shard, []))  # a parent's shard absent now: all of it removed
        tree = self._put_tree(encode_root(self._refs.values()))
        deltas = self._deltas.finish()
        self.sink.flush()
        self.sink.verify_packs()  # the tree packs, and what the tree and deltas reused
        st = self.stats
        files, size, added, modified, removed = self._counts
        stats = SnapshotStats(
            files=files,
            size=size,
            added=added,
            modified=modified,
            removed=removed,
            new_files=st.new_files,
            new_blobs=st.new_blobs,
            new_raw=st.new_raw,
            new_bytes=st.new_bytes,
        )
        committed = now_us()
        t = time_us if time_us is not None else committed  # the backup's own date, when the source knows it
        snap_id = os.urandom(16)
        events = []
        if self.view.device != self.device or self.view.info != self.info:
            events.append(DeviceSeen(self.device, self.info, committed))
        events.append(
            SnapshotCommitted(
                snap_id,
                t,
                source,
                self.parent.id if self.parent else None,
                deltas,
                tree,
                tuple(st.packs),
                stats,
                meta,
                committed,
            )  # fmt: skip
        )
        self.repo.append(self.device_key, events, expect_head=self.view.head)
        return self.repo.snapshot_record(self.device_key, snap_id)
