"""Spools: what a command must keep for later but not in memory (an import's stat-cache updates, written only after
its commit) in an anonymous temporary file in the cache directory, unlinked as it is made (a crash leaves nothing).

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
