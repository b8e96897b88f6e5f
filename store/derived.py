"""The cache's `derived` database (store/cache.py: format, sealing, trust): values a command computed from the vault's
content, keyed by that content (a snapshot's catalog and its shards, the MBFile memo, find's index, the camera
roll), so the same key always means the same value; its `segments` (a device's event segments, keyed by what the
vault's object is) and `stat` (a source file's stat -> its chunk ids, grouped by folder) databases. Mixins of `Cache`,
which provides the LMDB environment, the sealing and the repair.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Iterable
from functools import partial
from itertools import pairwise

import lmdb
import msgpack

from .errors import CacheCorrupt
from .residency import TRIM_GROWTH

DERIVED_BATCH = 4 << 20  # bytes of values per write transaction (each commit is an fsync)
_SEP = os.sep.encode()
_POSIX = _SEP == b"/"
STAT_GROUP = 4096  # stat entries per write transaction (~150 bytes each: ~0.6 MB of values and LMDB's dirty pages)
# ... and at most this many bytes of folder values a transaction (past it, the folder being written is the last): a
# folder's value holds every file of it, ~100 bytes each (~390 KB for a folder of a 1 000 000-file phone), so the
# day-2 import's few changed files, one or two in each of ~40 folders, rewrote ~15 MB of values in one transaction:
# LMDB's dirty copies of their pages in memory and the old values' pages mapped, the import's peak RSS at its end.
STAT_TXN_BYTES = 2 << 20
# A folder's stat entries packed past this are buckets of consecutive names (~300 files of a MobileSync folder): a
# folder of a 33 000-file phone (~130 files, ~13 KB) stays one value, one of 1 000 000 (~3 900 files) is ~13-26.
STAT_BUCKET_BYTES = 32 << 10
# A value past STAT_BUCKET_BYTES holds one file whose entry alone passes it (Manifest.db's, ~60 000 chunk ids at
# 1 000 000 files, ~4.4 MB decoded): it is not held after its lookup, which the Manifest parse child would inherit.
_SEALING = 28  # nonce and tag
STAT_FORMAT = b"2"  # the stat values' (meta "stat-format"): 2 buckets a large folder; a cache without it had one value


class DerivedValues:
    """`derived_get` / `derived_put` / `derived_put_many` over the Cache's `derived` database."""

    def derived_get(self, key: bytes) -> bytes | None:
        return self._get_sealed(self._derived, b"derived", self._derived_key(key))

    def derived_put(self, key: bytes, value: bytes) -> None:
        self.derived_put_many([(key, value)])

    def derived_put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Several values, up to DERIVED_BATCH bytes per transaction (each commit is an fsync), the map trimmed after
        each: writing overflow values maps pages of data.mdb (LMDB looks through its free list for runs of free pages),
        and a 1 000 000-file import's catalog (~100 MB of values) mapped 47 MB, the import's peak RSS."""
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        for key, value in items:
            k = self._derived_key(key)
            batch.append((k, self._seal(b"derived", k, bytes(value))))
            size += len(value)
            if size >= DERIVED_BATCH:
                self._write(partial(self._put_derived, batch))
                self.trim()
                batch, size = [], 0
        if batch:
            self._write(partial(self._put_derived, batch))
            self.trim()

    def _put_derived(self, batch: list[tuple[bytes, bytes]], txn: lmdb.Transaction) -> None:
        for k, v in batch:
            txn.put(k, v, db=self._derived)


class SegmentEntries:
    """The Cache's `segments` database: each sealed event segment object's plaintext (trust: store/cache.py)."""

    def segment_key(self, device_key: str, name: str, size: int, head: bytes) -> bytes:
        """The key of one sealed segment object: its name, its size and its first 12 bytes (its nonce)."""
        what = b"%s\0%d\0%s" % (name.encode(), size, head)
        return self._device_prefix(device_key) + self._ck.key(b"segments", what, 16)

    def _device_prefix(self, device_key: str) -> bytes:
        return self._ck.key(b"segdev", device_key.encode(), 16)

    def segment(self, key: bytes) -> bytes | None:
        return self._get_sealed(self._segments, b"segments", key)

    def put_segment(self, key: bytes, plain: bytes) -> None:
        self._write(lambda txn: txn.put(key, self._seal(b"segments", key, plain), db=self._segments))

    def retain_segments(self, device_key: str, keep: Iterable[bytes]) -> int:
        """Drop this device's cached segments that match no segment of the vault; returns how many went."""
        prefix, keep = self._device_prefix(device_key), set(keep)
        dropped = 0

        def drop(txn: lmdb.Transaction) -> None:
            nonlocal dropped
            cur = txn.cursor(db=self._segments)
            ok = cur.set_range(prefix)
            while ok and cur.key()[:16] == prefix:
                if cur.key() in keep:
                    ok = cur.next()
                else:
                    dropped += 1
                    ok = cur.delete()  # moves to the next entry

        self._write(drop)
        return dropped


class StatEntries:
    """`stat_get` / `stat_put_many` over the Cache's `stat` database (format: store/cache.py). A folder's entries are
    one value while they pack into STAT_BUCKET_BYTES, else buckets of consecutive names under a root value listing
    where each bucket begins: a lookup holds one bucket (and the root's list), a write rewrites the buckets it
    touches, so neither grows with the folder (a MobileSync folder holds ~3 900 files at 1 000 000, ~390 KB)."""

    def stat_get(self, key: bytes) -> list | None:
        """The chunk ids recorded for a file whose key (`<path> 0x00 <stat fields>`) is exactly this, or None. Once per
        file of every import: `_split_stat_key` and the held bucket's check inlined."""
        path, _, fields = key.partition(b"\0")
        cut = (path.rfind(b"/") if _POSIX else max(path.rfind(b"/"), path.rfind(_SEP))) + 1
        folder, name, held = path[:cut], path[cut:], self._folder
        if (
            held is not None
            and held[0] == folder
            and held[1] == self._stat_gen
            and held[2] <= name
            and (held[3] is None or name < held[3])
        ):
            entry = held[4].get(name)
        else:
            entry = self._stat_bucket(folder, name).get(name)
        if entry is not None and entry[0] == fields:
            return entry[1]
        return None

    def _stat_bucket(self, folder: bytes, name: bytes) -> dict:
        """The entries of the bucket of `folder` that `name` falls in, held (with the root's list of bucket starts) for
        the next lookups: the walk visits a folder's names in order, so each bucket is read once."""
        lo, hi, hold = b"", None, True
        self._folder = None  # the bucket held is let go before the next is decoded
        try:
            txn = self._read()
            root = self._stat_root
            if root is None or root[0] != folder or root[1] != self._stat_gen:
                k = self._stat_key(folder)
                raw = txn.get(k, db=self._stat)
                root = (folder, self._stat_gen, _checked(self, None if raw is None else self._unpack(b"stat", k, raw)))
                hold = raw is None or len(raw) <= STAT_BUCKET_BYTES + _SEALING
                self._stat_root = root if hold else None
            entries = {} if root[2] is None else root[2]
            if isinstance(entries, list):
                i = bisect_right(entries, name) - 1
                lo, hi = entries[i], entries[i + 1] if i + 1 < len(entries) else None
                k = self._stat_key(folder + b"\0" + lo)
                raw = txn.get(k, db=self._stat)
                entries = _checked(self, {} if raw is None else self._unpack(b"stat", k, raw), bucket=True)
                hold = raw is None or len(raw) <= STAT_BUCKET_BYTES + _SEALING
        except (lmdb.Error, CacheCorrupt) as e:
            self._recover(e)
            lo, hi, entries = b"", None, {}
        # Past the limit a value is one file's entry (a split keeps the rest below it): the next name is elsewhere.
        if hold:
            self._folder = (folder, self._stat_gen, lo, hi, entries)
        return entries

    def stat_put_many(self, items: Iterable[tuple[bytes, list]]) -> None:
        """Record files' chunk ids under their stat keys: STAT_GROUP files a write transaction (each commit is an
        fsync; one a shard was 257 of them, ~1 s of a 300 000-file import's wall), the map trimmed after each."""
        by_folder: dict[bytes, dict] = {}
        for n, (key, chunks) in enumerate(items, 1):
            folder, name, fields = _split_stat_key(key)
            by_folder.setdefault(folder, {})[name] = [fields, list(chunks)]
            if n % STAT_GROUP == 0:
                self._put_stat(by_folder)
                by_folder = {}
        if by_folder:
            self._put_stat(by_folder)

    def _put_stat(self, by_folder: dict[bytes, dict]) -> None:
        """Each folder's touched buckets read, updated and written again, STAT_TXN_BYTES of values a transaction at
        most (past it, the folder written is the transaction's last), the map trimmed as the old values' pages map
        it. A folder is written in one transaction (its root and its buckets agree in every snapshot)."""
        folders = list(by_folder.items())
        at = 0
        while at < len(folders):
            taken = 0

            def put(txn: lmdb.Transaction, start: int = at) -> None:
                nonlocal taken
                taken = written = 0  # from `start` again if the cache was rebuilt and this runs once more
                for folder, new in folders[start:]:
                    written += self._put_folder(txn, folder, new)
                    taken += 1
                    self.trim(TRIM_GROWTH)  # safe mid-transaction: LMDB's dirty pages are copies, not the map's
                    if written >= STAT_TXN_BYTES:
                        return

            self._write(put)
            self._stat_gen += 1
            self.trim()
            if not taken:  # the cache failed twice (`_write` repairs it once): the rest is not written either
                return
            at += taken

    def _put_folder(self, txn: lmdb.Transaction, folder: bytes, new: dict) -> int:
        """One folder's new entries written; returns the bytes of values written."""
        k = self._stat_key(folder)
        raw = txn.get(k, db=self._stat)
        root = _checked(self, None if raw is None else self._unpack(b"stat", k, raw))
        if not isinstance(root, list):  # one value (or none yet)
            root = root or {}
            root.update(new)
            pieces = _pieces(sorted(root.items()))
            if len(pieces) == 1:
                return self._put_value(txn, k, pieces[0][1])
            starts = [b""] + [first for first, _ in pieces[1:]]
            written = sum(
                self._put_value(txn, self._stat_key(folder + b"\0" + s), p)
                for s, (_, p) in zip(starts, pieces, strict=True)
            )
            return written + self._put_value(txn, k, msgpack.packb(starts))
        by_bucket: dict[int, dict] = {}
        for name, entry in new.items():
            by_bucket.setdefault(bisect_right(root, name) - 1, {})[name] = entry
        starts, written = list(root), 0
        for i, part in by_bucket.items():
            bk = self._stat_key(folder + b"\0" + root[i])
            raw = txn.get(bk, db=self._stat)
            entries = _checked(self, {} if raw is None else self._unpack(b"stat", bk, raw), bucket=True)
            entries.update(part)
            pieces = _pieces(sorted(entries.items()))
            written += self._put_value(txn, bk, pieces[0][1])  # the first piece keeps the bucket's start
            for first, packed in pieces[1:]:
                written += self._put_value(txn, self._stat_key(folder + b"\0" + first), packed)
                starts.append(first)
        if len(starts) > len(root):
            starts.sort()
            written += self._put_value(txn, k, msgpack.packb(starts))
        return written

    def _put_value(self, txn: lmdb.Transaction, k: bytes, packed: bytes) -> int:
        value = self._seal(b"stat", k, packed)
        txn.put(k, value, db=self._stat)
        return len(value)

    def _check_stat_format(self, txn: lmdb.Transaction, key: bytes) -> None:
        """On opening (`txn` writes): a cache whose stat entries are of another STAT_FORMAT (or of none: before the
        buckets) has its `stat` database emptied, so they are never read as this format's; the rest is kept."""
        raw = txn.get(key, db=self._meta)
        if raw is None or self._open(b"meta", key, raw) != STAT_FORMAT:
            txn.drop(self._stat, delete=False)
            txn.put(key, self._seal(b"meta", key, STAT_FORMAT), db=self._meta)


def _checked(cache, value, bucket: bool = False):
    """A stat value as read: a folder's (or a bucket's, `bucket`) entries {name: [stat fields, chunk ids]}, or a root's
    list of bucket starts (sorted, the first b""); None stays None. Anything else is CacheCorrupt."""
    if isinstance(value, dict):
        if all(isinstance(e, list) and len(e) == 2 and isinstance(e[1], list) for e in value.values()):
            return value
        raise CacheCorrupt(cache._where, "a stat entry is not [stat fields, chunk ids]")
    if value is None and not bucket:
        return None
    if (
        not bucket
        and isinstance(value, list)
        and len(value) > 1
        and value[0] == b""
        and all(isinstance(a, bytes) and isinstance(b, bytes) and a < b for a, b in pairwise(value))
    ):
        return value
    raise CacheCorrupt(cache._where, "a stat value is neither a folder's entries nor its buckets' starts")


def _pieces(items: list[tuple[bytes, list]]) -> list[tuple[bytes, bytes]]:
    """Sorted entries packed as one map, or as several of consecutive names if one would pass STAT_BUCKET_BYTES:
    [(first name, packed map)]."""
    packed = msgpack.packb(dict(items))
    if len(packed) <= STAT_BUCKET_BYTES or len(items) == 1:
        return [(items[0][0], packed)]
    n = len(items)
    k = min(n, -(-len(packed) // STAT_BUCKET_BYTES))
    return [p for j in range(k) for p in _pieces(items[j * n // k : (j + 1) * n // k])]


def _split_stat_key(key: bytes) -> tuple[bytes, bytes, bytes]:
    """`<folder>/<name> 0x00 <stat fields>` -> (folder with its separator, name, stat fields)."""
    path, _, fields = key.partition(b"\0")
    cut = max(path.rfind(b"/"), path.rfind(_SEP)) + 1
    return path[:cut], path[cut:], fields
