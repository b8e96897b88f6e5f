"""Local-directory backend: one file per object, names are relative paths.

Crash safety: every object is written to a temporary file in the same directory, fsynced, then published with
`os.link` (put_exclusive: fails atomically if the name exists) or `os.replace` (put), and the directory is fsynced.
A crash leaves at most a `.tmp-*` file, which `list` ignores and `sweep_temporaries` removes; a reader never sees a
half-written object.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import MissingObject, ObjectExists

_TMP = ".tmp-"


class LocalBackend:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._made_dirs: set[Path] = set()
        self._fds: dict[str, int] = {}

    OPEN_PACKS = 16

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/") or not name:
            raise ValueError(f"invalid object name {name!r}")
        return self.root / name

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise MissingObject(name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        # Reading a file back is a run of small ranged reads of the same few packs: keep their descriptors open.
        fd = self._fds.pop(name, None)
        if fd is None:
            try:
                fd = os.open(self._path(name), os.O_RDONLY)
            except FileNotFoundError:
                raise MissingObject(name) from None
            while len(self._fds) >= self.OPEN_PACKS:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[name] = fd  # most recently used last
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise MissingObject(name, f"short read: {len(data)} of {length} bytes at offset {offset}")
        return data

    def _write_temp(self, path: Path, data: bytes | memoryview) -> Path:
        parent = path.parent
        if parent not in self._made_dirs:
            parent.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(parent)
        tmp = parent / f"{_TMP}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def put(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        tmp = self._write_temp(path, data)
        os.replace(tmp, path)
        self._fsync_dir(path.parent)

    def put_exclusive(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise ObjectExists(name) from None
        finally:
            os.unlink(tmp)
        self._fsync_dir(path.parent)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        base = self.root / prefix if prefix.endswith("/") or not prefix else (self.root / prefix).parent
        if not base.is_dir():
            return
        root_len = len(str(self.root)) + 1
        for dirpath, _dirs, files in os.walk(base):
            for fn in files:
                if fn.startswith(_TMP):
                    continue
                full = os.path.join(dirpath, fn)
                name = full[root_len:].replace(os.sep, "/")
                if name.startswith(prefix):
                    try:
                        yield name, os.stat(full).st_size
                    except FileNotFoundError:
                        continue

    def delete(self, name: str) -> None:
        if (fd := self._fds.pop(name, None)) is not None:
            os.close(fd)
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def sweep_temporaries(self, min_age: float = 3600.0) -> int:
        """Remove temp files a crashed writer left behind; returns how many.

        Only files older than `min_age` seconds: a younger one may belong to a writer that is still running."""
        n = 0
        now = time.time()
        for dirpath, _dirs, files in os.walk(self.root):
            for fn in files:
                full = os.path.join(dirpath, fn)
                try:
                    if fn.startswith(_TMP) and now - os.stat(full).st_mtime >= min_age:
                        os.unlink(full)
                        n += 1
                except FileNotFoundError:
                    continue
        return n
