"""The cache's `derived` database (store/cache.py: format, sealing, trust): values a command computed from the vault's
content, keyed by that content (a snapshot's catalog and its shards, the MBFile memo, find's index, the camera
roll), so the same key always means the same value. A mixin of `Cache`, which provides the LMDB environment, the
sealing and the repair.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import lmdb

DERIVED_BATCH = 4 << 20  # bytes of values per write transaction (each commit is an fsync)


class DerivedValues:
    """`derived_get` / `derived_put` / `derived_put_many` over the Cache's `derived` database."""

    def derived_get(self, key: bytes) -> bytes | None:
        return self._get_sealed(self._derived, b"derived", self._derived_key(key))

    def derived_put(self, key: bytes, value: bytes) -> None:
        self.derived_put_many([(key, value)])

    def derived_put_many(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Several values, up to DERIVED_BATCH bytes per transaction (each commit is an fsync)."""
        batch: list[tuple[bytes, bytes]] = []
        size = 0
        for key, value in items:
            k = self._derived_key(key)
            batch.append((k, self._seal(b"derived", k, bytes(value))))
            size += len(value)
            if size >= DERIVED_BATCH:
                self._write(partial(self._put_derived, batch))
                batch, size = [], 0
        if batch:
            self._write(partial(self._put_derived, batch))

    def _put_derived(self, batch: list[tuple[bytes, bytes]], txn: lmdb.Transaction) -> None:
        for k, v in batch:
            txn.put(k, v, db=self._derived)
