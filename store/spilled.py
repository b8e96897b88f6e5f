"""A staged tree whose memory does not grow with the number of entries (a device backup's: it arrives in the
device's order, with moves and removes, not shard by shard): past SPILL_ENTRIES in memory, the entries are spilled,
sealed, to the cache directory and merged back a folder at a time.

Format: one ShardSpool (store/spool.py: an anonymous temporary file in the cache directory, unlinked as it is made,
batches sealed with AES-256-GCM under the cache key), filed by *bucket* — the folder holding a path ("" for the top
level, `Snapshot/ab` for `Snapshot/ab/<fileID>`) — each batch a list of `FileEntry.encode()` items of one bucket; a
bucket's batches are read in the order they were appended, a later item for a path overriding an earlier one.
Nothing staged is on disk in plaintext, and a crash leaves nothing behind (the commit is the writer's, unchanged).

Memory bound: SPILL_ENTRIES entries (~1 KB each with the folder index), the buckets an operation loads (a MobileSync
folder's `xx/` holds 1/256 of the files), the Bloom filter of spilled paths (BLOOM_BITS bits = 2 MiB) and a few
numbers per bucket and per folder above one, whatever the number of entries.

Cost: a file set or looked up costs O(1) unless the Bloom filter says it may be spilled (then its bucket is loaded);
a folder-level operation loads the buckets at and below its path. A device moves its uploads one file at a time in
fileID order (Snapshot/ab/<id> -> ab/<id>), so each bucket is loaded about once per spill; moves in random order
would load a bucket per move.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from .staged import StagedTree
from .trees import FileEntry, shard_of

SPILL_ENTRIES = 20_000  # entries a SpillingTree holds in memory before it spills them
BLOOM_BITS = 1 << 24  # 2 MiB: under 0.2 % false positives at a million spilled paths (4 hashes)
_BLOOM_HASHES = 4


def bucket_of(path: str) -> str:
    """The folder holding `path` ("" for the top level): the unit a SpillingTree spills and loads."""
    return path.rpartition("/")[0]


def _shard_of_bucket(bucket: str) -> str:
    return bucket.partition("/")[0]


class SpillingTree:
    """A StagedTree whose memory does not grow with the number of entries (module docstring).

    Invariant: an entry of bucket b is either in memory (`_mem`, a StagedTree) or in b's batches after `_skip[b]`
    (batch 0 being the base, a parent snapshot's content, when there is one), the memory's copy being the newer. A
    bucket is *resident* when memory holds all of it (it was loaded: its batches so far are superseded, `_skip[b]`
    moves past them). Every folder-level operation (remove, move, copy, count, listing) loads the buckets it touches
    first — the one holding its path and every one at or below it — then runs on `_mem` exactly as StagedTree does,
    so it never needs tombstones. A path is looked for in the spool only if the Bloom filter of spilled paths says it
    may be there (then its bucket is loaded). The count of entries is kept exactly (`len`)."""

    def __init__(
        self,
        cache,
        state: dict[str, FileEntry] | None = None,
        limit: int | None = None,
        base: Mapping[str, Callable[[], Iterable[FileEntry]]] | None = None,
    ) -> None:
        """`base`: shard -> what reads that shard's entries (a parent snapshot's shard from the vault), the tree's
        starting content, read once here (for the Bloom filter and the count) and again whenever one of its buckets
        is loaded, never held whole. `limit`: SPILL_ENTRIES unless given."""
        self._cache, self._limit = cache, limit if limit is not None else SPILL_ENTRIES
        self._spool = None
        self._reset()
        self.state = SpilledState(self)
        for read in (base or {}).values():
            buckets = set()
            for e in read():
                self._n += 1
                self._mark(e.path)
                buckets.add(bucket_of(e.path))
            for b in buckets:
                self._base[b] = read
                self._spilled_to(b)  # the base is the bucket's first batch
        for entry in (state or {}).values():
            self.set(entry)

    def _reset(self) -> None:
        self.close()
        self._mem = StagedTree()
        self._base: dict[str, Callable[[], Iterable[FileEntry]]] = {}  # bucket -> its shard's base reader
        self._batches: dict[str, int] = {}  # bucket -> batches appended
        self._skip: dict[str, int] = {}  # bucket -> batches superseded (the bucket was loaded since)
        self._folders: set[str] = set()  # every bucket with batches and every folder above one
        self._resident: set[str] = set()
        self._bloom = bytearray(BLOOM_BITS // 8)
        self._n = 0

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def __len__(self) -> int:
        return self._n

    # --- the spool --------------------------------------------------------------------------------------------
    def _bits(self, path: str) -> list[int]:
        h1, h2 = hash(path), hash((path, 1))
        return [(h1 + i * h2) % BLOOM_BITS for i in range(_BLOOM_HASHES)]

    def _mark(self, path: str) -> None:
        for b in self._bits(path):
            self._bloom[b >> 3] |= 1 << (b & 7)

    def _spilled_to(self, bucket: str) -> None:
        self._batches[bucket] = self._batches.get(bucket, 0) + 1
        folder = bucket
        while folder not in self._folders:
            self._folders.add(folder)
            if not folder:
                break
            folder = bucket_of(folder)

    def _held(self, bucket: str) -> bool:
        """Whether the spool holds entries of `bucket` that memory does not."""
        return bucket not in self._resident and self._batches.get(bucket, 0) > self._skip.get(bucket, 0)

    def _maybe_spilled(self, path: str) -> bool:
        return self._held(bucket_of(path)) and all(self._bloom[b >> 3] & (1 << (b & 7)) for b in self._bits(path))

    def _buckets_under(self, path: str) -> list[str]:
        """The spilled buckets a subtree at `path` touches: the one holding it, and every one at or below it."""
        out = [bucket_of(path)]
        if not path:
            return list(self._batches)
        if path in self._folders:  # rare: a folder with spilled content below it
            out += [b for b in self._batches if b == path or b.startswith(path + "/")]
        return out

    def _spilled(self, bucket: str) -> dict[str, FileEntry]:
        """A bucket's entries in the spool (merged, later batches winning); not what memory holds."""
        out: dict[str, FileEntry] = {}
        skip = self._skip.get(bucket, 0)
        if self._batches.get(bucket, 0) <= skip:
            return out
        first = 0
        if bucket in self._base:  # batch 0
            if skip == 0:
                out.update((e.path, e) for e in self._base[bucket]() if bucket_of(e.path) == bucket)
            first = 1
        if self._spool is not None:
            for n, batch in enumerate(self._spool.read(bucket), start=first):
                if n >= skip:
                    for item in batch:
                        out[item[0]] = FileEntry.decode(item)
        return out

    def _load(self, buckets: Iterable[str]) -> None:
        for bucket in buckets:
            if bucket in self._resident:
                continue
            for path, entry in self._spilled(bucket).items():
                if path not in self._mem.state:  # what memory holds is newer
                    self._mem._put(entry)
            self._skip[bucket] = self._batches.get(bucket, 0)
            self._resident.add(bucket)

    def _spill(self) -> None:
        from .spool import ShardSpool  # noqa: PLC0415  (spool.py builds on the cache, which the writer opens)

        if self._spool is None:
            self._spool = ShardSpool(self._cache)
        groups: dict[str, list[FileEntry]] = {}  # references: each bucket is encoded only as it is written
        for path, entry in self._mem.state.items():
            groups.setdefault(bucket_of(path), []).append(entry)
            self._mark(path)
        self._mem, self._resident = StagedTree(), set()
        while groups:
            bucket, entries = groups.popitem()
            self._spool.append(bucket, [e.encode() for e in entries])
            self._spilled_to(bucket)
        self._cache.trim()  # the cache pages these entries' stores and lookups mapped (store/residency.py)

    def _settle(self) -> None:
        if len(self._mem) > self._limit:
            self._spill()

    def _edit(self, op, *args):
        """Run one edit of `_mem` (its buckets loaded), keeping the count."""
        before = len(self._mem)
        try:
            return op(*args)
        finally:
            self._n += len(self._mem) - before
            self._settle()

    # --- reads ------------------------------------------------------------------------------------------------
    def get(self, path: str) -> FileEntry | None:
        entry = self._mem.get(path)
        if entry is None and self._maybe_spilled(path):
            self._load([bucket_of(path)])
            entry = self._mem.get(path)
            self._settle()
        return entry

    def shards(self) -> set[str]:
        """Every shard (store/trees.py `shard_of`) holding an entry."""
        held = {_shard_of_bucket(b) for b in self._batches if self._held(b)}
        return held | {shard_of(p) for p in self._mem.state}

    def _shard_buckets(self, shard: str) -> list[str]:
        return [b for b in self._batches if _shard_of_bucket(b) == shard and (b or not shard)]

    def entries(self) -> Iterator[FileEntry]:
        """Every entry, bucket by bucket (memory: one bucket merged, and references to what memory holds)."""
        mine: dict[str, list[FileEntry]] = {}
        for path, entry in self._mem.state.items():
            mine.setdefault(bucket_of(path), []).append(entry)
        for bucket in sorted(mine.keys() | {b for b in self._batches if self._held(b)}):
            if not self._held(bucket):
                yield from mine.get(bucket, ())
                continue
            merged = self._spilled(bucket)
            merged.update((e.path, e) for e in mine.get(bucket, ()))
            yield from merged.values()

    def count(self, path: str, stop_at: int) -> int:
        if not path:
            return min(self._n, stop_at)
        self._load(self._buckets_under(path))
        n = self._mem.count(path, stop_at)
        self._settle()
        return n

    def children(self, path: str) -> list[tuple[str, FileEntry | None, bool]]:
        if path:
            self._load(self._buckets_under(path))
            out = self._mem.children(path)
        else:  # the top level: the bucket "" (top-level entries), and every shard holding something below a name
            self._load([""])
            kids = {name: (entry, has) for name, entry, has in self._mem.children("")}
            for s in self.shards() - {""}:
                kids[s] = (kids[s][0] if s in kids else self._mem.get(s), True)
            out = [(name, entry, has) for name, (entry, has) in sorted(kids.items())]
        self._settle()
        return out

    def take_shard(self, shard: str) -> list[FileEntry]:
        self._load(self._shard_buckets(shard))
        return self._edit(self._mem.take_shard, shard)

    def take_all(self) -> dict[str, FileEntry]:
        """Every entry, in memory at once: for small trees and tests; the commit uses `by_shard`."""
        out = {e.path: e for e in self.entries()}
        self.remove("")
        return out

    def by_shard(self) -> SpilledShards:
        """The commit's rest, one shard merged at a time as it is popped (everything in memory is spilled first)."""
        self._spill()
        return SpilledShards(self)

    # --- edits ------------------------------------------------------------------------------------------------
    def set(self, entry: FileEntry) -> None:
        if entry.path not in self._mem.state and self._maybe_spilled(entry.path):
            self._load([bucket_of(entry.path)])
        self._edit(self._mem.set, entry)

    def remove(self, path: str) -> int:
        if not path:
            n = self._n
            self._reset()
            return n
        self._load(self._buckets_under(path))
        return self._edit(self._mem.remove, path)

    def check_relocation(self, src: str, dst: str, what: str) -> None:
        self._mem.check_relocation(src, dst, what)

    def move(self, src: str, dst: str) -> int:
        if src == dst:
            return self.count(src, self._n)
        if src and dst:
            self._load(self._buckets_under(src) + self._buckets_under(dst))
        return self._edit(self._mem.move, src, dst)

    def copy(self, src: str, dst: str) -> int:
        if src and dst:
            self._load(self._buckets_under(src) + self._buckets_under(dst))
        return self._edit(self._mem.copy, src, dst)

    def drop_nonempty_dirs(self) -> None:
        """StagedTree's, a shard at a time: a folder's entries lie in its shard (and, for a top-level folder, in
        the shard of its name), so each shard is loaded with the top level and judged there."""
        for shard in sorted(self.shards() - {""}):
            self._load(["", *self._shard_buckets(shard)])
            self._edit(self._mem.drop_nonempty_dirs_under, shard)


class SpilledState(Mapping):
    """A SpillingTree seen as the `state` mapping path -> FileEntry (lookups may load a shard)."""

    def __init__(self, tree: SpillingTree) -> None:
        self._tree = tree

    def __getitem__(self, path: str) -> FileEntry:
        entry = self._tree.get(path) if isinstance(path, str) else None
        if entry is None:
            raise KeyError(path)
        return entry

    def get(self, path, default=None):
        entry = self._tree.get(path) if isinstance(path, str) else None
        return default if entry is None else entry

    def __contains__(self, path) -> bool:
        return isinstance(path, str) and self._tree.get(path) is not None

    def __len__(self) -> int:
        return len(self._tree)

    def __iter__(self) -> Iterator[str]:
        return (e.path for e in self._tree.entries())

    def values(self) -> _Walk:
        return _Walk(self._tree, lambda e: e)

    def items(self) -> _Walk:
        return _Walk(self._tree, lambda e: (e.path, e))


class _Walk:
    """`values()` / `items()` of a SpilledState: walked shard by shard each time they are iterated."""

    def __init__(self, tree: SpillingTree, shape) -> None:
        self._tree, self._shape = tree, shape

    def __iter__(self) -> Iterator:
        return (self._shape(e) for e in self._tree.entries())

    def __len__(self) -> int:
        return len(self._tree)


class SpilledShards:
    """What `SpillingTree.by_shard` gives the commit: `keys()` the shards, `pop(shard, default)` one merged shard."""

    def __init__(self, tree: SpillingTree) -> None:
        self._tree = tree
        self._keys = tree.shards()

    def keys(self) -> set[str]:
        return set(self._keys)

    def pop(self, shard: str, default=None):
        # The cache pages the commit's lookups mapped since the last shard (its tree nodes and delta blobs, ~150 KB
        # a lookup, store/residency.py): a 256-shard commit does not trim otherwise, and at 80 000 files it mapped
        # ~10 MB of the index, growing with the files.
        self._tree._cache.trim()
        if shard not in self._keys:
            return default
        self._keys.discard(shard)
        return self._tree.take_shard(shard)
