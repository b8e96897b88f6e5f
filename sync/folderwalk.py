"""Finding backup folders, and walking one for import: one shard (top-level folder) at a time, and reading ahead of
the chunker.

`walk` hands back one shard at a time (the top level last), listing the next few on a pool's threads, so an import holds
a few shards' listings (`walk_ahead`: WALKERS + 1; those not yet handed back packed, ~100 bytes a file); `Present` keeps
the walk's sizes for the comparison with the file list in ~28 bytes a file; `ReadAhead` has the kernel read the next
large files while one is chunked, `FileAhead` the local cache's file at the start; the small ones are read by a child
process, ≤ 8 MiB or 1 024 files ahead (sync/smallreads.py). Used by sync/mobilesync.py.
"""

from __future__ import annotations

import os
import stat
import threading
from array import array
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import NamedTuple

from .errors import BackupFolderInvalid


def is_utf8(name: str) -> bool:
    """os.walk hands back bytes that are not UTF-8 as lone surrogates; such a name cannot be stored or shown."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def stat_key(path: str, st: Stat) -> bytes:
    return f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}".encode()


class Stat(NamedTuple):
    """The five stat fields import needs (an os.stat_result is ~400 bytes; a folder can hold 300 000 files). A named
    tuple: made in ~0.8 us, where a frozen dataclass's __init__ (five object.__setattr__) took ~1.5 us a file."""

    st_size: int
    st_mode: int
    st_mtime_ns: int
    st_ino: int
    st_ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stat:
        return _new_tuple(cls, (st.st_size, st.st_mode, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))


_new_tuple = tuple.__new__


Listing = tuple[str, list[tuple[str, Stat]], list[tuple[str, Stat]]]  # (shard, files and other entries, empty dirs)


def walk(
    folder: Path, pool: ThreadPoolExecutor | None = None, ahead: int = 0, *, packed: bool = False
) -> Iterator[Listing]:
    """(shard, its regular files and other entries, its empty directories) per shard, paths relative to `folder`,
    sorted within a shard; shards in sorted order, the top level ("", which also holds an empty top-level folder:
    store/trees.py `shard_of`) last. Lazy: with a `pool`, the next `ahead` shards are listed on its threads while
    the caller takes this one (at most `ahead` + 1 shards' listings held); without, one at a time here. With
    `packed`, each shard's files come as the `_Packed` they were listed in, not unpacked into a list.

    Why several shards at once: on a cold page cache each lstat reads its inode from the disk, one at a time, and an
    unchanged re-import waited on those reads (~10 s of 300 000 files listed one shard at a time, 4 folders at once
    ~2/3 of that: the disk serves several reads at once). Folders are listed independently, so in any order."""
    top_files: list[tuple[str, Stat]] = []
    top_empty: list[tuple[str, Stat]] = []
    folders: list[str] = []
    for _dirpath, dirs, names in os.walk(folder):  # the top level only: its folders are listed one by one below
        _links_are_files(folder, dirs, names)
        folders = sorted(dirs)
        for name in sorted(names):
            top_files.append((name, Stat.of(os.lstat(os.path.join(folder, name)))))
        break
    if pool is None:
        listed: Iterator[tuple[Listing, tuple[str, Stat] | None] | None] = (_walk_shard(folder, n) for n in folders)
    else:
        listed = _in_order(pool, folders, folder, ahead)
    for got in listed:
        if got is not None:
            (name, files, empty_dirs), empty_top = got
            if empty_top is not None:
                top_empty.append(empty_top)
            yield name, files if packed else files.unpacked(), empty_dirs
    yield "", _Packed.of(top_files) if packed else top_files, sorted(top_empty)


def _links_are_files(dirpath: str | Path, dirs: list[str], names: list[str]) -> None:
    """os.walk lists a symbolic link to a folder among the folders and never enters it: list it as the non-regular
    file it is, so the import names it instead of dropping it without a word."""
    for link in [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
        dirs.remove(link)
        names.append(link)


class _Names:
    """Names appended one by one and kept as one run of UTF-8 bytes with their end offsets: ~50 bytes a
    `xx/<fileID>` name, where a list of str holds ~100. `surrogatepass` gives back exactly the str appended, including
    the lone surrogates os.scandir makes of bytes that are not UTF-8 (`is_utf8` names those later)."""

    __slots__ = ("_bytes", "_ends")

    def __init__(self) -> None:
        self._bytes, self._ends = bytearray(), array("I")

    def append(self, name: str) -> None:
        self._bytes += name.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._bytes))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i: int) -> str:
        ends = self._ends
        if i < 0:
            i += len(ends)
            if i < 0:
                raise IndexError(i - len(ends))
        end = ends[i]  # IndexError past the end, as a list's
        return self._bytes[ends[i - 1] if i else 0 : end].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        data, start = self._bytes, 0
        for end in self._ends:
            yield data[start:end].decode("utf-8", "surrogatepass")
            start = end


class _Packed:
    """A shard's files as listed: the names (`_Names`), and their stat fields in two arrays (size, mode, mtime, ctime;
    inode, unsigned), ~100 bytes a file where a list of (name, Stat) is ~450. The shards listed ahead (WALKERS of
    them, each ~files/256 at 1 000 000 files: ~3 900) are held this way, and so is the shard an import plans and
    stages (`walk_ahead`): `packed[i]` and iteration make file i's (name, Stat) only as it is asked for."""

    __slots__ = ("names", "fields", "inodes")

    def __init__(self, names: _Names, fields: array, inodes: array) -> None:
        self.names, self.fields, self.inodes = names, fields, inodes  # fields "q": size, mode, mtime_ns, ctime_ns

    @classmethod
    def of(cls, files: list[tuple[str, Stat]]) -> _Packed:
        packed = cls(_Names(), array("q"), array("Q"))
        for name, st in files:
            packed.names.append(name)
            packed.fields.extend((st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns))
            packed.inodes.append(st.st_ino)
        return packed

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[str, Stat]:
        f, j = self.fields, 4 * i
        return self.names[i], _new_tuple(Stat, (f[j], f[j + 1], f[j + 2], self.inodes[i], f[j + 3]))

    def __iter__(self) -> Iterator[tuple[str, Stat]]:
        return map(self.__getitem__, range(len(self.names)))

    def sizes_at(self, picked: list[int]) -> array:
        """The sizes of files `picked` (indices), in that order."""
        f = self.fields
        return array("q", [f[4 * i] for i in picked])

    def sizes(self) -> Iterator[tuple[str, int]]:
        """(name, size) of each file, in order."""
        return zip(self.names, self.fields[0::4], strict=True)

    def unpacked(self) -> list[tuple[str, Stat]]:
        f, new = self.fields.tolist(), _new_tuple
        return [
            (name, new(Stat, (f[4 * i], f[4 * i + 1], f[4 * i + 2], ino, f[4 * i + 3])))
            for i, (name, ino) in enumerate(zip(self.names, self.inodes.tolist(), strict=True))
        ]


class Paths:
    """The full paths of some of a packed shard's files (`picked`, indices into it), made as they are asked for: the
    reads of a shard (sync/smallreads.py, `ReadAhead`) index them, and a list held a path string (~130 bytes) per
    file of the shard being staged and of the next one."""

    __slots__ = ("base", "_names", "_picked")

    def __init__(self, base: str, files: _Packed, picked: list[int]) -> None:
        self.base, self._names, self._picked = base, files.names, picked

    def __len__(self) -> int:
        return len(self._picked)

    def __getitem__(self, i: int) -> str:
        return self.of(self._names[self._picked[i]])

    def of(self, rel: str) -> str:
        """The full path of the shard's file `rel` (a path relative to the folder)."""
        return self.base + rel.replace("/", os.sep)


def _walk_shard(folder: Path, name: str) -> tuple[Listing, tuple[str, Stat] | None] | None:
    """One top-level folder's listing (its files `_Packed`), and the folder itself if it is empty (the top level's
    empty folder); None if it cannot be listed (os.walk skips such a folder, as the whole-folder walk did)."""
    files = _Packed(_Names(), array("q"), array("Q"))
    empty_dirs: list[tuple[str, Stat]] = []
    top = os.path.join(folder, name)
    empty = _list_dir(top, name, files, empty_dirs)
    if empty is None:
        return None
    return (name, files, empty_dirs), ((name, Stat.of(os.stat(top))) if empty else None)


def _list_dir(path: str, rel: str, files: _Packed, empty_dirs: list[tuple[str, Stat]]) -> bool | None:
    """Append the files under one folder (`rel` below the backup folder) to `files` in os.walk's top-down order (this
    folder's entries sorted, then each subfolder's), and its empty subfolders to `empty_dirs`. Whether the folder is
    empty; None if it cannot be listed (skipped, as os.walk skips it). A link to a folder is listed as the non-regular
    file it is (as `_links_are_files`). One scandir a folder and one lstat a file: os.walk's lists and a relpath a
    folder made the re-import's walk ~6 us a file, this ~4 us."""
    try:
        with os.scandir(path) as it:
            entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
    except OSError:
        return None
    if not entries:
        return True
    base, prefix, lstat = path + os.sep, rel + "/", os.lstat
    names, fields, inodes = files.names, files.fields, files.inodes
    for n, is_dir in entries:
        if not is_dir:
            st = lstat(base + n)
            names.append(prefix + n)
            fields.extend((st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns))
            inodes.append(st.st_ino)
    for n, is_dir in entries:
        if is_dir and _list_dir(base + n, prefix + n, files, empty_dirs):
            empty_dirs.append((prefix + n, Stat.of(os.stat(base + n))))
    return False


def _in_order(pool: ThreadPoolExecutor, folders: list[str], folder: Path, ahead: int) -> Iterator:
    """`_walk_shard` of each folder on `pool`, `ahead` submitted beyond the one taken, handed back in order."""
    pending: deque = deque()
    names = iter(folders)
    try:
        while True:
            while len(pending) < max(ahead, 1) and (name := next(names, None)) is not None:
                pending.append(pool.submit(_walk_shard, folder, name))
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


class Total:
    """The import's progress total without a walk of its own: the top level's files are looked at once (one scandir,
    no recursion), each top-level folder's bytes are added as the walk lists it (`add`), and the folders not listed
    yet are taken at the mean of those listed (MobileSync names files by hash, so its 256 folders hold alike). Exact
    (the regular files' bytes under the folder, as the walk found them) once every folder is listed; an estimate
    before, which the progress bar shows growing or shrinking. None until the first folder is listed, if any.

    Why not count it exactly first: a second walk of the folder (every file lstat'ed again) cost 8-16 s before the
    first read on a cold disk, and walked beside the reads in the reader process it competed with them for the GIL."""

    def __init__(self, folder: Path) -> None:
        self.top = self.folders = self.listed = self.bytes = 0
        with suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                with suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        self.folders += 1
                    elif entry.is_file(follow_symlinks=False):
                        self.top += entry.stat(follow_symlinks=False).st_size

    def add(self, shard: str, files: list[tuple[str, Stat]]) -> None:
        """One listed shard (`walk`'s); the top level ("") was counted at the start."""
        if shard:
            self.listed += 1
            self.bytes += sum(st.st_size for _rel, st in files if stat.S_ISREG(st.st_mode))

    def value(self) -> int | None:
        if not self.listed:
            return None if self.folders else self.top
        return self.top + self.bytes + self.bytes * max(self.folders - self.listed, 0) // self.listed


class Present(Mapping[str, int]):
    """path -> size of every file the walk found, for the comparison with the file list, in ~28 bytes a file
    rather than ~150: a name `xx/<fileID>` (40 hex digits starting with xx, as MobileSync names every file) is
    kept as 20 bytes in its shard's sorted table; any other name in a plain dict."""

    def __init__(self) -> None:
        self._tables: dict[str, tuple[bytes, array]] = {}  # shard -> (sorted ids, sizes)
        self._other: dict[str, int] = {}

    @staticmethod
    def _split(rel: str) -> tuple[str, bytes] | None:
        shard, _, name = rel.partition("/")
        if len(shard) == 2 and len(name) == 40 and name.startswith(shard) and name == name.lower():
            with suppress(ValueError):
                return shard, bytes.fromhex(name)
        return None

    def add_shard(self, items: list[tuple[str, int]]) -> None:
        """The files of one shard; rows with a MobileSync name must come sorted (a walk's order)."""
        ids, sizes, shard = bytearray(), array("q"), None
        for rel, size in items:
            got = self._split(rel)
            if got is None or (shard is not None and got[0] != shard) or (ids and bytes(ids[-20:]) >= got[1]):
                self._other[rel] = size
                continue
            shard = got[0]
            ids += got[1]
            sizes.append(size)
        if shard is not None:
            self._tables[shard] = (bytes(ids), sizes)

    def __getitem__(self, rel: str) -> int:
        got = self._split(rel)
        table = self._tables.get(got[0]) if got else None
        if table is not None:
            ids, sizes = table
            lo, hi = 0, len(sizes)
            while lo < hi:
                mid = (lo + hi) // 2
                if ids[mid * 20 : mid * 20 + 20] < got[1]:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < len(sizes) and ids[lo * 20 : lo * 20 + 20] == got[1]:
                return sizes[lo]
        return self._other[rel]

    def __iter__(self) -> Iterator[str]:
        for shard, (ids, _sizes) in self._tables.items():
            for i in range(0, len(ids), 20):
                yield f"{shard}/{ids[i : i + 20].hex()}"
        yield from self._other

    def __len__(self) -> int:
        return sum(len(sizes) for _ids, sizes in self._tables.values()) + len(self._other)


class ReadAhead:
    """Asks the kernel to start reading the next files (up to WINDOW bytes ahead) while this one is chunked and
    sealed, so disk and CPU overlap without a reader thread. A no-op where posix_fadvise does not exist."""

    WINDOW = 64 << 20
    MIN_SIZE = 256 << 10

    def __init__(self, paths: list[str], sizes: list[int]) -> None:
        self.paths, self.sizes = paths, sizes
        self.next = 0  # first file not yet advised
        self.advised = 0  # bytes advised beyond the file being read

    def advance(self, current: int) -> None:
        if not hasattr(os, "posix_fadvise"):
            return
        if self.next <= current:
            self.next, self.advised = current, 0
        else:
            self.advised -= self.sizes[current]
        while self.next < len(self.paths) and self.advised < self.WINDOW:
            # Small files are not worth an extra open and close: the kernel reads them in one go anyway.
            if self.sizes[self.next] >= self.MIN_SIZE:
                try:
                    fd = os.open(self.paths[self.next], os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                    finally:
                        os.close(fd)
                except OSError:
                    pass
            self.advised += self.sizes[self.next]
            self.next += 1


class FileAhead:
    """Has the kernel read a file into the page cache in the background, from a thread of its own (posix_fadvise
    WILLNEED queues the reads, and can wait for room in the disk's queue meanwhile), up to LIMIT bytes.

    For the local cache's data.mdb at the start of an import: LMDB maps it with MADV_RANDOM (store/cache.py opens it
    without readahead), so on a cold page cache every 4 KiB page of a value faults alone, and py-lmdb copies a value
    out of the map holding the GIL: an unchanged re-import's stat-cache folders and cached catalog shards (~100-250
    KB each at 300 000 files) cost one synchronous disk read per page while no other thread of the import ran,
    about half the main thread's time on the cold 300 000-file folder (py-spy --idle). Read ahead, the file's pages
    come in large sequential reads and the faults find them. Costs the disk one read of the file (its first LIMIT
    bytes) and no memory of this process (page cache, not mapped). A no-op where posix_fadvise does not exist."""

    LIMIT = 2 << 30
    STEP = 2 << 20  # Linux reads at most its read-ahead size (here 2 MiB) per advice, so the file is advised in steps

    def __init__(self, path: Path) -> None:
        self._thread: threading.Thread | None = None
        if hasattr(os, "posix_fadvise"):
            self._thread = threading.Thread(target=self._advise, args=(path,), name="file-ahead", daemon=True)
            self._thread.start()

    def _advise(self, path: Path) -> None:
        with suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                for at in range(0, min(os.fstat(fd).st_size, self.LIMIT), self.STEP):
                    os.posix_fadvise(fd, at, self.STEP, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FileAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


WALKERS = 4  # shards listed at once by an import (its walker pool's threads)


def walk_ahead(folder: Path, pool: ThreadPoolExecutor, ahead: int = WALKERS) -> Iterator[Listing]:
    """`walk`, listing the next shards on the threads of `pool` (one shard each) while the caller stages this one:
    their lstat calls then do not give up the caller's hold on the GIL (each took longer to get back than to run: 2
    of 20 s of a 120 000-file import), and a cold disk reads several folders' inodes at once. Holds at most
    `ahead` + 1 shards' listings (`pool` should have `ahead` threads), each packed (`_Packed`)."""
    return walk(folder, pool, ahead, packed=True)


def default_locations() -> list[Path]:
    """Where Finder/iTunes keep backups: macOS, Windows (Microsoft Store and classic iTunes, and the older path)."""
    home = Path.home()
    out = [home / "Library" / "Application Support" / "MobileSync" / "Backup"]
    if appdata := os.environ.get("APPDATA"):
        out.append(Path(appdata) / "Apple Computer" / "MobileSync" / "Backup")
    out.append(home / "Apple" / "MobileSync" / "Backup")
    out.append(home / "Application Data" / "Apple Computer" / "MobileSync" / "Backup")
    return out


def looks_like_backup(path: Path) -> bool:
    names = ("Manifest.db", "Manifest.mbdb", "Manifest.plist", "Info.plist")
    return path.is_dir() and any((path / m).exists() for m in names)


def find_backup_folders(path: Path | None) -> list[Path]:
    """A `<UDID>/` folder -> [it]; a `Backup/` folder -> its device folders; None -> the default locations."""
    if path is None:
        found = [
            d for loc in default_locations() if loc.is_dir() for d in sorted(loc.iterdir()) if looks_like_backup(d)
        ]
        if not found:
            where = ", ".join(str(p) for p in default_locations())
            raise BackupFolderInvalid(where, "no backup folders in the default locations; give a PATH")
        return found
    if not path.exists():
        raise BackupFolderInvalid(str(path), "does not exist")
    if not path.is_dir():
        raise BackupFolderInvalid(str(path), "is not a folder")
    if looks_like_backup(path):
        return [path]
    found = [d for d in sorted(path.iterdir()) if looks_like_backup(d)]
    if not found:
        raise BackupFolderInvalid(str(path), "holds no Manifest.db/.mbdb/Info.plist and no device backup folders")
    return found
