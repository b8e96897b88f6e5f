"""Local-directory backend: one file per object, names are relative paths.

Crash safety: every object is written to a temporary file in the same directory, fsynced, then published with
`os.link` (put_exclusive: fails atomically if the name exists) or `os.replace` (put), and the directory is fsynced.
A reader never sees a half-written object. A write that fails (a full disk) removes its temporary file; a crash
leaves at most a `.tmp-*` file, which `list` ignores and `sweep_temporaries` removes. A data pack is written as it fills (`spool`, store/packs.py): to a
temporary file in packs/, published by fsync and rename once complete, so a crash leaves the same. The first write through a
backend sweeps temporaries older than an hour (younger ones may belong to a writer still running): a walk of the
vault, ~50 ms warm and ~140 ms cold for 20 000 packs, which commands that only read never pay.

Privacy: directories this backend creates (the vault itself and its parents included) are 0700 and files 0600,
whatever the umask allows beyond that; existing directories keep their mode.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import MissingObject, ObjectExists
from . import check_name, check_prefix

_TMP = ".tmp-"
SWEEP_MIN_AGE = 3600.0


def mkdirs_private(path: Path, mode: int = 0o700) -> None:
    """Create `path` and its missing parents with `mode` (pathlib's `parents=True` makes parents 0o777 & ~umask)."""
    missing = []
    p = Path(path)
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            pass


class LocalBackend:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)
        self._made_dirs: set[Path] = set()
        self._fds: dict[str, int] = {}
        self._fds_lock = threading.Lock()  # guards _fds; a descriptor is read only by the thread that took it out
        self._swept = False

    OPEN_PACKS = 16
    # One pack written at a time while the next fills: a second writer only queued on the same disk and held a
    # 16 MiB buffer more (idle cold A/B, 1.1 GB phone, 3 rounds: 10.05 -> 9.53 s, 14.5 -> 13.9 CPU s, peak
    # 141 -> 127 MB; cp -r + sync 9.64 s in the same run).
    pack_writes = 1

    def close(self) -> None:
        with self._fds_lock:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # "a" of "a/b", "a/b/c" past a file
            raise MissingObject(name) from None

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        # Reading a file back is a run of small ranged reads of the same few packs: keep their descriptors open.
        # A reader takes the descriptor out of the cache while it reads, so no other thread can evict and close it
        # (its number could then be reused by another file, and the read return that file's bytes).
        if offset < 0 or length < 0:
            raise ValueError(f"invalid range of {name!r}: offset {offset}, length {length}")
        path = self._path(name)
        with self._fds_lock:
            fd = self._fds.pop(name, None)
        if fd is None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                raise MissingObject(name) from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder of names opens too, but is no object
                os.close(fd)
                raise MissingObject(name)
        try:
            data = os.pread(fd, length, offset)
        except BaseException:
            os.close(fd)
            raise
        with self._fds_lock:
            spare = [fd] if name in self._fds else []  # another thread cached its own meanwhile
            if not spare:
                self._fds[name] = fd  # most recently used last
            while len(self._fds) > self.OPEN_PACKS:
                spare.append(self._fds.pop(next(iter(self._fds))))
        for old in spare:
            os.close(old)
        if len(data) != length:
            raise MissingObject(name, f"short read: {len(data)} of {length} bytes at offset {offset}")
        return data

    def _write_temp(self, path: Path, data: bytes | memoryview) -> Path:
        if not self._swept:
            self._swept = True  # two threads may both sweep: harmless, each unlink is tried once
            self.sweep_temporaries()
        parent = path.parent
        if parent not in self._made_dirs:
            mkdirs_private(parent)
            self._made_dirs.add(parent)
        tmp = parent / f"{_TMP}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(tmp)  # a full disk must not leave the partial copy behind, taking space forever
            raise
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
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)
            raise
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

    def spool(self, folder: str) -> FileSpool:
        """An object written as it grows (store/packs.py writes a data pack so): a temporary file in `folder`, on the
        vault's own file system, published under its name by fsync and rename, never copied."""
        parent = self.root / check_name(folder)
        if not self._swept:
            self._swept = True
            self.sweep_temporaries()
        if parent not in self._made_dirs:
            mkdirs_private(parent)
            self._made_dirs.add(parent)
        tmp = parent / f"{_TMP}{secrets.token_hex(8)}"
        return FileSpool(self, tmp, os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        check_prefix(prefix)
        base = self.root / prefix if prefix.endswith("/") or not prefix else (self.root / prefix).parent
        if not base.is_dir():
            return
        root_len = len(str(self.root)) + 1
        for dirpath, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".")]  # no name has a component starting with "."
            for fn in files:
                if fn.startswith("."):  # temporaries (.tmp-*), and what else a disk holds (.DS_Store)
                    continue
                full = os.path.join(dirpath, fn)
                name = full[root_len:].replace(os.sep, "/")
                if name.startswith(prefix):
                    try:
                        yield name, os.stat(full).st_size
                    except FileNotFoundError:
                        continue

    def delete(self, name: str) -> None:
        path = self._path(name)
        with self._fds_lock:
            fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            if path.is_file():
                raise  # a real object that could not be removed (permissions, I/O)
            # else: a folder of names ("a" of "a/b", EISDIR/EPERM) or a path through a file (ENOTDIR): no object

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def free_space(self) -> int | None:
        # The vault may not exist yet (before init): ask the nearest folder that does, on the same file system.
        where = self.root
        while not where.is_dir() and where.parent != where:
            where = where.parent
        return shutil.disk_usage(where).free

    def sweep_temporaries(self, min_age: float = SWEEP_MIN_AGE) -> int:
        """Remove temp files a crashed writer left behind; returns how many.

        Only files older than `min_age` seconds: a younger one may belong to a writer that is still running. A file
        that cannot be removed (another user's, a read-only medium) is left; sweeping never fails a write."""
        n = 0
        now = time.time()
        for dirpath, _dirs, files in os.walk(self.root):
            for fn in files:
                if not fn.startswith(_TMP):
                    continue
                full = os.path.join(dirpath, fn)
                try:
                    if now - os.stat(full).st_mtime >= min_age:
                        os.unlink(full)
                        n += 1
                except OSError:
                    continue
        return n


class FileSpool:
    """An object being written to a temporary file (`LocalBackend.spool`): `append` from one thread, `pread` from
    any until `close`. `publish` makes it the object `name` as `put` would (fsync, rename, fsync the folder); a crash
    before leaves only the `.tmp-*` file, which `list` ignores and `sweep_temporaries` removes."""

    def __init__(self, backend: LocalBackend, tmp: Path, fd: int) -> None:
        self._backend, self._tmp, self._fd = backend, tmp, fd
        self._published = False

    def append(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as whole:
            view = whole
            while view:
                view = view[os.write(self._fd, view) :]

    def pread(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise MissingObject(str(self._tmp), f"short read: {len(data)} of {length} bytes at offset {offset}")
        return data

    def publish(self, name: str) -> None:
        path = self._backend._path(name)
        if path.parent not in self._backend._made_dirs:
            mkdirs_private(path.parent)
            self._backend._made_dirs.add(path.parent)
        os.fsync(self._fd)
        os.replace(self._tmp, path)
        self._published = True
        self._backend._fsync_dir(path.parent)

    def close(self) -> None:
        """Close the file; one never published is removed. Idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        if not self._published:
            self._published = True  # removed: nothing left to remove
            _unlink_quietly(self._tmp)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
