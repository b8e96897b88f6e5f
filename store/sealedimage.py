"""A sealed image: the bytes of one file (a Manifest.db from the vault) spilled to the cache directory so that they
can be read back at any offset without being held in memory, and without a plaintext byte on disk.

Format: an anonymous temporary file in the cache directory, unlinked as it is made (a crash leaves nothing), holding
the image in blocks of BLOCK bytes (the last one shorter), each sealed by store/cache.py's sealing: nonce ‖
AES-256-GCM(block, the cache encryption key, ad = `image/` ‖ this image's 16 random bytes ‖ 8-byte block number) ‖
tag. Every sealed block but the last is BLOCK + SEAL_OVERHEAD bytes, so block n starts at n × (BLOCK +
SEAL_OVERHEAD): nothing is kept per block. The random id binds each block to its image and position; a block that
fails to open is CacheCorrupt.

Memory: the block being written, and up to CACHED_BLOCKS opened blocks (most recently read first) — CACHED_BLOCKS ×
BLOCK bytes whatever the image's size.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict

from .cache import Cache

BLOCK = 32 << 10  # a multiple of every SQLite page size up to 32 KiB: a page read opens one block
SEAL_OVERHEAD = 12 + 16  # nonce and tag
CACHED_BLOCKS = 32  # 1 MiB of opened blocks


class SealedImage:
    """Write the image once (`write`, then `finish`), then `read(offset, amount)` any part of it, as often as asked."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._id = os.urandom(16)
        self._file = tempfile.TemporaryFile(dir=cache.path, prefix="image-")
        self._pending = bytearray()
        self._blocks = 0  # blocks written
        self.size = 0
        self._finished = False
        self._opened: OrderedDict[int, bytes] = OrderedDict()

    def _ad(self, n: int) -> bytes:
        return self._id + n.to_bytes(8, "big")

    def _seal_block(self, plain: bytes | memoryview) -> None:
        self._file.write(self._cache._seal(b"image", self._ad(self._blocks), bytes(plain)))
        self._blocks += 1

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._finished:
            raise ValueError("the image is finished")
        self._pending += data
        self.size += len(data)
        if len(self._pending) >= BLOCK:
            whole = len(self._pending) - len(self._pending) % BLOCK
            view = memoryview(self._pending)
            for at in range(0, whole, BLOCK):
                self._seal_block(view[at : at + BLOCK])
            view.release()
            del self._pending[:whole]

    def finish(self) -> None:
        """The image is complete: its last (short) block is sealed and it becomes readable."""
        if not self._finished:
            if self._pending:
                self._seal_block(self._pending)
                self._pending = bytearray()
            self._file.flush()
            self._finished = True

    def _block(self, n: int) -> bytes:
        plain = self._opened.get(n)
        if plain is not None:
            self._opened.move_to_end(n)
            return plain
        length = min(BLOCK, self.size - n * BLOCK) + SEAL_OVERHEAD
        raw = os.pread(self._file.fileno(), length, n * (BLOCK + SEAL_OVERHEAD))
        plain = self._cache._open(b"image", self._ad(n), raw)
        self._opened[n] = plain
        if len(self._opened) > CACHED_BLOCKS:
            self._opened.popitem(last=False)
        return plain

    def read(self, offset: int, amount: int) -> bytes:
        """Up to `amount` bytes from `offset` (fewer at the end of the image, none past it)."""
        if not self._finished:
            raise ValueError("the image is not finished")
        end = min(offset + amount, self.size)
        out = bytearray()
        while offset < end:
            n, within = divmod(offset, BLOCK)
            piece = self._block(n)[within : within + end - offset]
            out += piece
            offset += len(piece)
        return bytes(out)

    def close(self) -> None:
        self._opened.clear()
        self._file.close()

    def __enter__(self) -> SealedImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
