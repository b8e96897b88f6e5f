"""The cache's `derived` database (store/cache.py: format, sealing, trust): values a command computed from the vault's
content, keyed by that content (a snapshot's catalog and its shards, the MBFile memo, find's index, the camera
roll), so the same key always means the same value; its `segments` (a device's event segments, keyed by what the
vault's object is) and `stat` (a source file's stat -> its chunk ids, grouped by folder) databases. Mixins of `Cache`,
which provides the LMDB environment, the sealing and the repair.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import partial

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
    """`stat_get` / `stat_put_many` over the Cache's `stat` database (format: store/cache.py)."""

    def stat_get(self, key: bytes) -> list | None:
        """The chunk ids recorded for a file whose key (`<path> 0x00 <stat fields>`) is exactly this, or None. Once per
        file of every import: `_split_stat_key` and the held folder's check inlined."""
        path, _, fields = key.partition(b"\0")
        cut = (path.rfind(b"/") if _POSIX else max(path.rfind(b"/"), path.rfind(_SEP))) + 1
        folder, held = path[:cut], self._folder
        if held is not None and held[0] == folder and held[1] == self._stat_gen:
            entry = held[2].get(path[cut:])
        else:
            entry = self._stat_folder(folder).get(path[cut:])
        if entry is not None and entry[0] == fields:
            return entry[1]
        return None

    def _stat_folder(self, folder: bytes) -> dict:
        held = self._folder
        if held is not None and held[0] == folder and held[1] == self._stat_gen:
            return held[2]
        k = self._stat_key(folder)
        try:
            raw = self._read().get(k, db=self._stat)
            entries = {} if raw is None else self._unpack(b"stat", k, raw)
            if not isinstance(entries, dict) or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[1], list) for e in entries.values()
            ):
                raise CacheCorrupt(self._where, "a stat entry is not [stat fields, chunk ids]")
        except (lmdb.Error, CacheCorrupt) as e:
            self._recover(e)
            entries = {}
        self._folder = (folder, self._stat_gen, entries)
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
        """Each folder's value read, updated and written again, STAT_TXN_BYTES of values a transaction at most (past
        it, the folder written is the transaction's last), the map trimmed as the old values' pages map it."""
        folders = list(by_folder.items())
        at = 0
        while at < len(folders):
            taken = 0

            def put(txn: lmdb.Transaction, start: int = at) -> None:
                nonlocal taken
                taken = written = 0  # from `start` again if the cache was rebuilt and this runs once more
                for folder, new in folders[start:]:
                    k = self._stat_key(folder)
                    raw = txn.get(k, db=self._stat)
                    entries = {} if raw is None else self._unpack(b"stat", k, raw)
                    if not isinstance(entries, dict):
                        raise CacheCorrupt(self._where, "a stat folder is not a map")
                    entries.update(new)
                    value = self._seal(b"stat", k, msgpack.packb(entries))
                    txn.put(k, value, db=self._stat)
                    taken, written = taken + 1, written + len(value)
                    self.trim(TRIM_GROWTH)  # safe mid-transaction: LMDB's dirty pages are copies, not the map's
                    if written >= STAT_TXN_BYTES:
                        return

            self._write(put)
            self._stat_gen += 1
            self.trim()
            if not taken:  # the cache failed twice (`_write` repairs it once): the rest is not written either
                return
            at += taken


def _split_stat_key(key: bytes) -> tuple[bytes, bytes, bytes]:
    """`<folder>/<name> 0x00 <stat fields>` -> (folder with its separator, name, stat fields)."""
    path, _, fields = key.partition(b"\0")
    cut = max(path.rfind(b"/"), path.rfind(_SEP)) + 1
    return path[:cut], path[cut:], fields
