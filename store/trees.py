"""Snapshot trees (Merkle checkpoints) and deltas: pure encode/decode/diff over plain data.

A snapshot's content is a flat map path -> FileEntry of a backup folder. Its tree is two levels, sharded by the
first path component (a MobileSync folder's `xx/` directories; root-level files go to shard ""):
    root node  = [TREE_FORMAT, "root",  [[shard, shard node id, files, bytes], …]]  sorted by shard
    shard node = [TREE_FORMAT, "shard", [[path, size, mode, mtime_ns, [chunk id, …]], …]]  sorted by path
An entry may carry a sixth item, `cipher_key` (bytes): the stored chunks are a plaintext that the source had
encrypted with that key, and what it sent is recovered by encrypting them again (sync/decrypted.py: an iPhone's
encrypted backup stored decrypted so it deduplicates). The store treats it as opaque. A node or delta holding such
an entry is written as format 2 (a phonevault that predates it refuses it as an unsupported format rather than
misreading it); every other node is still format 1, byte for byte as before, so its id does not change. Both read.
Nodes are blobs (type TREE) addressed by their keyed hash, so an unchanged shard keeps its id and costs nothing to
store again, and `diff` descends only into shards whose ids differ.
A delta blob (type DELTA) lists what changed versus the parent: [TREE_FORMAT, "delta", [put entries], [removed
paths]]. Folding deltas from the first snapshot reproduces every tree: the invariant `check` verifies.
"""

from __future__ import annotations

import bisect
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from operator import attrgetter

import msgpack

from .errors import CorruptObject, UnsupportedFormat

TREE_FORMAT = 1
CIPHER_FORMAT = 2  # a node or delta with an entry that carries a cipher_key
READ_FORMATS = (TREE_FORMAT, CIPHER_FORMAT)
DELTA_GROUP = 20_000  # entries per delta blob: keeps each blob a few MiB at most


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str  # relative to the backup folder, "/"-separated
    size: int
    mode: int
    mtime_ns: int
    chunks: tuple[bytes, ...] = ()
    cipher_key: bytes = b""  # non-empty: the chunks are a plaintext the source sent encrypted with it (see above)

    def __init__(
        self, path: str, size: int, mode: int, mtime_ns: int, chunks: tuple[bytes, ...] = (), cipher_key: bytes = b""
    ) -> None:
        # The dataclass's own __init__ of a frozen class sets each field through object.__setattr__ (~2.2 us an
        # entry); the slots' setters do the same in ~1.3 (one entry per file of every import, decode and diff).
        _set_path(self, path)
        _set_size(self, size)
        _set_mode(self, mode)
        _set_mtime(self, mtime_ns)
        _set_chunks(self, chunks)
        _set_cipher_key(self, cipher_key)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def encode(self) -> list:
        # The chunk ids as the tuple they are: msgpack packs a tuple as the array a list makes, byte for byte.
        if self.cipher_key:
            return [self.path, self.size, self.mode, self.mtime_ns, self.chunks, self.cipher_key]
        return [self.path, self.size, self.mode, self.mtime_ns, self.chunks]

    @classmethod
    def decode(cls, item: list) -> FileEntry:
        # Once per file of every shard node read (check, export, diff): the common five-item form without the
        # star-unpack's list, and the chunks through map rather than a generator (~1.7 -> ~1.2 us an entry).
        if len(item) == 5:
            path, size, mode, mtime_ns, chunks = item
            return cls(path, size, mode, mtime_ns, tuple(map(bytes, chunks)))
        path, size, mode, mtime_ns, chunks, *rest = item
        return cls(path, size, mode, mtime_ns, tuple(map(bytes, chunks)), bytes(rest[0]) if rest else b"")


_set_path, _set_size, _set_mode, _set_mtime, _set_chunks, _set_cipher_key = (
    getattr(FileEntry, f).__set__ for f in ("path", "size", "mode", "mtime_ns", "chunks", "cipher_key")
)


def _format(items: list[list]) -> int:
    """The format a node or delta of these encoded entries is written as (format 1 unless one has a cipher_key)."""
    return CIPHER_FORMAT if any(len(i) > 5 for i in items) else TREE_FORMAT


@dataclass(frozen=True, slots=True)
class ShardRef:
    shard: str
    node: bytes
    files: int
    size: int


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    kind: str  # "added" | "removed" | "modified"
    old: FileEntry | None
    new: FileEntry | None


PutBlob = Callable[[bytes], bytes]  # plaintext -> blob id (the caller knows the blob type)
GetBlob = Callable[[bytes], bytes]


def shard_of(path: str) -> str:
    head, sep, _ = path.partition("/")
    return head if sep else ""


def _unpack(data: bytes, kind: str, where: str) -> list:
    try:
        fmt, got_kind, *rest = msgpack.unpackb(data)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CorruptObject(where, f"unreadable {kind} node: {e}") from None
    if fmt not in READ_FORMATS:
        raise UnsupportedFormat(where, fmt)
    if got_kind != kind:
        raise CorruptObject(where, f"expected a {kind} node, found {got_kind!r}")
    return rest


def encode_shard(entries: Iterable[FileEntry]) -> bytes:
    # Twice per shard of an unchanged re-import (its id checked against the parent's, then written): the entries
    # sorted by attrgetter and encoded inline (~490 -> ~260 us a shard of 240 files).
    items = [
        [e.path, e.size, e.mode, e.mtime_ns, e.chunks, e.cipher_key]
        if e.cipher_key
        else [e.path, e.size, e.mode, e.mtime_ns, e.chunks]
        for e in sorted(entries, key=_by_path)
    ]
    return msgpack.packb([_format(items), "shard", items])


def decode_shard(data: bytes, where: str = "tree") -> list[FileEntry]:
    (items,) = _unpack(data, "shard", where)
    return [FileEntry.decode(i) for i in items]


_by_path = attrgetter("path")


def encode_root(shards: Iterable[ShardRef]) -> bytes:
    rows = [[s.shard, s.node, s.files, s.size] for s in sorted(shards, key=lambda s: s.shard)]
    return msgpack.packb([TREE_FORMAT, "root", rows])


def decode_root(data: bytes, where: str = "tree") -> list[ShardRef]:
    (rows,) = _unpack(data, "root", where)
    return [ShardRef(r[0], bytes(r[1]), r[2], r[3]) for r in rows]


def write_shard(shard: str, entries: list[FileEntry], put_tree: PutBlob) -> ShardRef:
    """Write one shard node (entries of one shard, any order); returns its root row."""
    return ShardRef(shard, put_tree(encode_shard(entries)), len(entries), sum(e.size for e in entries))


def write_tree(state: Mapping[str, FileEntry], put_tree: PutBlob) -> bytes:
    """Write every shard node and the root; returns the root id. Unchanged shards dedup by id."""
    by_shard: dict[str, list[FileEntry]] = {}
    for entry in state.values():
        by_shard.setdefault(shard_of(entry.path), []).append(entry)
    return put_tree(encode_root(write_shard(shard, entries, put_tree) for shard, entries in by_shard.items()))


def read_root(root: bytes, get: GetBlob) -> list[ShardRef]:
    return decode_root(get(root), f"tree {root.hex()[:16]}")


def iter_tree(root: bytes, get: GetBlob) -> Iterator[FileEntry]:
    for ref in read_root(root, get):
        yield from decode_shard(get(ref.node), f"tree {ref.node.hex()[:16]}")


def load_tree(root: bytes, get: GetBlob) -> dict[str, FileEntry]:
    return {e.path: e for e in iter_tree(root, get)}


def lookup(root: bytes, path: str, get: GetBlob) -> FileEntry | None:
    """One file's entry: its shard node's rows are unpacked and the path found by bisection (rows are sorted by
    path), so only that row becomes a FileEntry (a shard of a 1 000 000-file phone holds ~3 900)."""
    shard = shard_of(path)
    for ref in read_root(root, get):
        if ref.shard == shard:
            where = f"tree {ref.node.hex()[:16]}"
            (items,) = _unpack(get(ref.node), "shard", where)
            try:
                at = bisect.bisect_left(items, path, key=lambda item: item[0])
                if at < len(items) and items[at][0] == path:
                    return FileEntry.decode(items[at])
            except (TypeError, IndexError, ValueError) as e:
                raise CorruptObject(where, f"unreadable shard node: {e}") from None
            return None
    return None


def diff_trees(old_root: bytes | None, new_root: bytes, get: GetBlob) -> Iterator[Change]:
    """Changes from old to new, descending only into shards whose node ids differ."""
    old_refs = {r.shard: r for r in read_root(old_root, get)} if old_root else {}
    new_refs = {r.shard: r for r in read_root(new_root, get)}
    for shard in sorted(old_refs.keys() | new_refs.keys()):
        a, b = old_refs.get(shard), new_refs.get(shard)
        if a and b and a.node == b.node:
            continue
        old = {e.path: e for e in decode_shard(get(a.node))} if a else {}
        new = {e.path: e for e in decode_shard(get(b.node))} if b else {}
        yield from diff_states(old, new)


def diff_states(old: Mapping[str, FileEntry], new: Mapping[str, FileEntry]) -> Iterator[Change]:
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path), new.get(path)
        if a is None:
            yield Change(path, "added", None, b)
        elif b is None:
            yield Change(path, "removed", a, None)
        elif a != b:
            yield Change(path, "modified", a, b)


class DeltaWriter:
    """Delta blobs written as changes stream in: each group of DELTA_GROUP changes is put as soon as it fills, so
    memory holds one group, however many files changed. `finish()` puts the rest (an empty delta if nothing
    changed at all) and returns every blob id in order.

    The group's puts are held packed, each entry's msgpack as it comes, and the blob is those bytes behind its array
    headers: byte for byte `msgpack.packb([format, "delta", puts, removes])`. As encoded lists they held every
    entry's path and chunk ids until the group was put: ~330 bytes an entry of one chunk (~6.5 MB a full group of a
    first import of small files), packed ~90."""

    def __init__(self, put_delta: PutBlob) -> None:
        self._put = put_delta
        self._packer = msgpack.Packer()
        self._puts = bytearray()  # the packed entries put, one after another
        self._count = 0  # entries in `_puts`
        self._format = TREE_FORMAT  # CIPHER_FORMAT once an entry carries a cipher_key (`_format`)
        self._removes: list[str] = []
        self.ids: list[bytes] = []

    def add(self, c: Change) -> None:
        if c.new is None:
            self._removes.append(c.path)
        else:
            item = c.new.encode()
            if len(item) > 5:
                self._format = CIPHER_FORMAT
            self._puts += self._packer.pack(item)
            self._count += 1
        if self._count + len(self._removes) >= DELTA_GROUP:
            self._emit()

    def _emit(self) -> None:
        p = self._packer
        head = p.pack_array_header(4) + p.pack(self._format) + p.pack("delta") + p.pack_array_header(self._count)
        blob = b"".join((head, self._puts, p.pack(self._removes)))
        self._count, self._format, self._puts, self._removes = 0, TREE_FORMAT, bytearray(), []
        self.ids.append(self._put(blob))

    def finish(self) -> tuple[bytes, ...]:
        if self._count or self._removes or not self.ids:
            self._emit()
        return tuple(self.ids)


def encode_deltas(changes: Iterable[Change]) -> list[bytes]:
    """Delta blobs' plaintexts for a list of changes (puts and removes), in groups of DELTA_GROUP."""
    out: list[bytes] = []
    w = DeltaWriter(lambda data: out.append(data) or b"")
    for c in changes:
        w.add(c)
    w.finish()
    return out


def apply_delta(state: dict[str, FileEntry], data: bytes, where: str = "delta") -> None:
    puts, removes = _unpack(data, "delta", where)
    for path in removes:
        state.pop(path, None)
    for item in puts:
        e = FileEntry.decode(item)
        state[e.path] = e
