"""Spools: what a command must keep for later but not in memory (an import's stat-cache updates, written only after
its commit; its Manifest.db rows; check's fold of a snapshot's deltas, filed by shard) in an anonymous temporary file
in the cache directory, unlinked as it is made (a crash leaves nothing).

Format: sealed batches, each u32be length ‖ nonce ‖ AES-256-GCM(msgpack batch, the cache encryption key, ad =
`spool/` ‖ 8-byte batch number) ‖ tag (store/cache.py's sealing). A batch that fails to open is CacheCorrupt.
"""

from __future__ import annotations

import struct
import tempfile

import msgpack

from .cache import Cache


class Spool:
    """Sealed batches of msgpack-able items in an anonymous temporary file (format in the module docstring): append
    them, then read them back once, in order. Memory: one batch."""

    _LEN = struct.Struct(">I")

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._file = tempfile.TemporaryFile(dir=cache.path, prefix="spool-")
        self._n = 0

    def append(self, batch: list) -> None:
        if batch:
            sealed = self._cache._seal(b"spool", self._n.to_bytes(8, "big"), msgpack.packb(batch))
            self._file.write(self._LEN.pack(len(sealed)) + sealed)
            self._n += 1

    def flush(self) -> None:
        """Everything appended so far is in the file (before a fork: the child reads it, see sync/catalogshards.py)."""
        self._file.flush()

    def __iter__(self):
        self._file.flush()
        self._file.seek(0)
        for n in range(self._n):
            (size,) = self._LEN.unpack(self._file.read(self._LEN.size))
            yield self._cache._unpack(b"spool", n.to_bytes(8, "big"), self._file.read(size))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ShardSpool:
    """Sealed batches filed by shard in one anonymous temporary file (the format of `Spool`, each batch sealed with
    its own number): `append(shard, batch)` in any order, then `read(shard)` gives that shard's batches in the order
    they were appended, as often as asked. Memory: three numbers per batch (where it is) and one batch."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._file = tempfile.TemporaryFile(dir=cache.path, prefix="spool-")
        self._where: dict[str, list[tuple[int, int, int]]] = {}  # shard -> [(offset, size, batch number)]
        self._end = 0
        self._n = 0

    def append(self, shard: str, batch: list) -> None:
        if not batch:
            return
        sealed = self._cache._seal(b"spool", self._n.to_bytes(8, "big"), msgpack.packb(batch))
        self._file.seek(self._end)
        self._file.write(sealed)
        self._where.setdefault(shard, []).append((self._end, len(sealed), self._n))
        self._end += len(sealed)
        self._n += 1

    def shards(self) -> list[str]:
        return sorted(self._where)

    def read(self, shard: str):
        self._file.flush()
        for offset, size, n in self._where.get(shard, ()):
            self._file.seek(offset)
            yield self._cache._unpack(b"spool", n.to_bytes(8, "big"), self._file.read(size))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ShardSpool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
