"""A Manifest.db from the vault opened by SQLite without being held in memory and without a plaintext byte on disk:
its bytes are spilled to a sealed image (store/sealedimage.py) and SQLite reads its pages from there through a
read-only VFS (apsw's; the standard library's sqlite3 has no VFS hook), a page at a time, as a query needs them.

`sealed_manifest(repo, entry)` is a source sync/manifest.py reads like a file or bytes (`connect()` gives an
sqlite3-like connection whose errors are sqlite3.DatabaseError). A WAL-mode header (bytes 18–19 = 2) is read as
rollback mode (1), as opening the stored file's bytes in memory did: a Manifest.db as stored is complete without its
-wal. Opening fires the audit event `phonevault.sealed_sqlite.open` (the moment the image is on disk, sealed).

Memory: SQLite's page cache (CACHE_KIB) and the image's opened blocks (store/sealedimage.py), whatever the size of
the Manifest.db; nothing grows with its rows. Spilling it looks up each of its chunks in the cache, whose pages
`Repository.locate_needed` unmaps by its one policy (every TRIM_LOOKUPS lookups, once they grew TRIM_GROWN,
store/repository.py): a 160 000-file phone's Manifest.db is thousands of chunks, and each lookup maps ~150 KB of
the index (the kernel's fault-around), 47 MB of it by the end of the spill without it.
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import apsw

from phonevault.store.errors import CorruptObject
from phonevault.store.repository import Repository
from phonevault.store.sealedimage import SealedImage
from phonevault.store.trees import FileEntry

VFS_NAME = "phonevault-sealed"
CACHE_KIB = 2048  # SQLite's page cache for one sealed database

_images: dict[str, SealedImage] = {}
_lock = threading.Lock()
_vfs: _SealedVFS | None = None
_names = itertools.count()


class _SealedFile:
    """One sealed image as SQLite sees a file: read-only, immutable, never locked."""

    def __init__(self, image: SealedImage) -> None:
        self._image = image

    def xRead(self, amount: int, offset: int) -> bytes:
        data = self._image.read(offset, amount)
        if offset <= 18 and offset + len(data) >= 20 and data[18 - offset : 20 - offset] == b"\x02\x02":
            data = data[: 18 - offset] + b"\x01\x01" + data[20 - offset :]  # WAL mode read as rollback
        return data

    def xFileSize(self) -> int:
        return self._image.size

    def xWrite(self, data: bytes, offset: int) -> None:
        raise apsw.ReadOnlyError("a sealed image is read-only")

    def xTruncate(self, newsize: int) -> None:
        raise apsw.ReadOnlyError("a sealed image is read-only")

    def xSync(self, flags: int) -> None:
        pass

    def xLock(self, level: int) -> None:
        pass

    def xUnlock(self, level: int) -> None:
        pass

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return 4096

    def xDeviceCharacteristics(self) -> int:
        return apsw.mapping_device_characteristics["SQLITE_IOCAP_IMMUTABLE"]

    def xClose(self) -> None:
        pass


class _SealedVFS(apsw.VFS):
    """Opens only the sealed images registered in `_images`; no other file exists for it (no journal, no -wal)."""

    def __init__(self) -> None:
        super().__init__(VFS_NAME, base="")

    def xOpen(self, name, flags):
        key = name.filename() if isinstance(name, apsw.URIFilename) else name
        image = _images.get(key)
        if image is None:
            raise apsw.CantOpenError(f"no sealed image {key!r}")
        return _SealedFile(image)

    def xAccess(self, pathname: str, flags: int) -> bool:
        return pathname in _images

    def xFullPathname(self, name: str) -> str:
        return name

    def xDelete(self, filename: str, syncdir: bool) -> None:
        raise apsw.ReadOnlyError("a sealed image is read-only")

    def xRandomness(self, numbytes: int) -> bytes:
        return os.urandom(numbytes)

    def xSleep(self, microseconds: int) -> int:
        return 0

    def xCurrentTime(self) -> float:
        import time  # noqa: PLC0415

        return 2440587.5 + time.time() / 86400.0

    def xCurrentTimeInt64(self) -> int:
        import time  # noqa: PLC0415

        return int((2440587.5 * 86400.0 + time.time()) * 1000)

    def xGetLastError(self) -> tuple[int, str]:
        return 0, ""


def _registered_vfs() -> None:
    global _vfs  # noqa: PLW0603 - one VFS per process, registered on first use
    with _lock:
        if _vfs is None:
            _vfs = _SealedVFS()


class _Cursor:
    def __init__(self, cursor: apsw.Cursor) -> None:
        self._cursor = cursor

    def fetchone(self):
        try:
            return self._cursor.fetchone()
        except apsw.Error as e:
            raise sqlite3.DatabaseError(str(e)) from None

    def __iter__(self) -> Iterator[tuple]:
        while (row := self.fetchone()) is not None:
            yield row


class _Connection:
    """The part of sqlite3.Connection sync/manifest.py uses, over apsw, with apsw's errors as sqlite3's."""

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, bindings=()) -> _Cursor:
        try:
            return _Cursor(self._conn.execute(sql, bindings))
        except apsw.Error as e:
            raise sqlite3.DatabaseError(str(e)) from None

    def close(self) -> None:
        self._conn.close()


class SealedManifest:
    """A Manifest.db's bytes in a sealed image, as a source sync/manifest.py opens (`connect`)."""

    def __init__(self, image: SealedImage) -> None:
        self._image = image
        self._name = f"/sealed-{os.getpid()}-{next(_names)}"

    def connect(self) -> _Connection:
        if self._image.size < 100:
            raise sqlite3.DatabaseError("shorter than an SQLite header")
        _registered_vfs()
        _images[self._name] = self._image
        sys.audit("phonevault.sealed_sqlite.open", self._name)
        flags = apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI
        try:
            conn = apsw.Connection(f"file:{self._name}?immutable=1", flags=flags, vfs=VFS_NAME)
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            conn.execute("PRAGMA query_only = ON")
        except apsw.Error as e:
            raise sqlite3.DatabaseError(str(e)) from None
        return _Connection(conn)

    def close(self) -> None:
        _images.pop(self._name, None)


@contextmanager
def sealed_manifest(repo: Repository, entry: FileEntry) -> Iterator[SealedManifest]:
    """A stored Manifest.db spilled to a sealed image, chunk by chunk, for the duration of the block."""
    with SealedImage(repo.cache) as image:
        for chunk in repo.read_file(entry):  # its lookups unmap the cache's pages as they go (locate_needed)
            if image.size + len(chunk) > entry.size:
                raise CorruptObject(entry.path, f"longer than the {entry.size} bytes its tree entry records")
            image.write(chunk)
        image.finish()
        repo.cache.trim()
        source = SealedManifest(image)
        try:
            yield source
        finally:
            source.close()
