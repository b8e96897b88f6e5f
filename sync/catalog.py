"""The catalog projection: a snapshot seen as the phone's files (domain + path), not as hashed backup-folder names.

A snapshot's catalog is read from the Manifest.db it contains and cached (LMDB `derived`, keyed by that
Manifest.db's blob ids: the same bytes always give the same catalog, so the cache never goes stale). The cached
value is msgpack `[rows, problems]` (CATALOG_CACHE_FORMAT 2): rows as `_row` packs them, problems as
`[domain path or "", message]`. A Manifest.db from the vault is parsed in memory (sqlite3 deserialize): nothing
decrypted is ever written to a file outside the extract/export target. Memory: the Manifest.db's bytes twice for
the moment SQLite copies them, then once (SQLite's copy) while the rows are read (~850 bytes a row in all).
Domain paths are `<domain>/<relativePath>`, e.g. `CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC`.

Rows that cannot be used are named, never dropped silently and never fatal: an undecodable row is left out of
the catalog and named in its problems; rows sharing one fileID (one stored file, several names: which one is its
own cannot be told) stay listed, are named, and are not extracted.

Extract writes each file at its full domain path under the target (as restic keeps full paths), through
`paths.Target` (nothing lands outside it). It plans everything first and refuses, before writing a byte, a name
that already exists (unless overwrite), two files on one name, and a file where a folder must go. Then each file
is written to a `.phonevault-*` temp file beside its final name (removed on any error), given its mode (without
set-id/sticky bits: a phone's say-so never makes a set-uid file here) and mtime, and moved into place: by hard
link when not overwriting, which fails rather than replace a file (so names that one file system folds together,
`IMG.JPG` and `img.jpg` on macOS, are caught there); by rename when overwriting. A file that cannot be extracted
(not in the snapshot, an unsafe path, an unusable row, a failed write) is named and the rest are extracted
(`ExtractIncomplete`, exit 3). A full or read-only disk stops the extract with one line.
A backup the phone encrypted has an encrypted Manifest.db: browsing it needs the backup password, which this
version does not take yet (`EncryptedBackup`); such snapshots can still be exported and restored as they are.
"""

from __future__ import annotations

import ctypes
import errno
import multiprocessing
import os
import signal
import stat
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import msgpack

from phonevault.store.errors import CorruptObject, PathNotFound, PhonevaultError, UnsafePath
from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import Repository
from phonevault.store.trees import FileEntry, diff_trees, lookup

from .errors import ExtractIncomplete, TargetConflict
from .manifest import FLAG_FILE, CatalogEntry, ManifestSource, RowProblem, check_manifest_db, read_manifest_db
from .paths import Target, relative_parts, shown

CATALOG_CACHE_FORMAT = 2


class EncryptedBackup(PhonevaultError):
    def __init__(self, snapshot: str) -> None:
        super().__init__(
            f"snapshot {snapshot}: the phone encrypted this backup; browsing its files needs the backup password, "
            "which phonevault does not support yet (export and restore work as usual)"
        )


def domain_path(c: CatalogEntry) -> str:
    return f"{c.domain}/{c.relative_path}" if c.relative_path else c.domain


def backup_path(file_id: str) -> str:
    return f"{file_id[:2]}/{file_id}"


def under(path: str, prefix: str) -> bool:
    """`path` is `prefix` or lies below it (domain paths; "" is below nothing but itself)."""
    return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True, slots=True)
class CatalogProblem:
    path: str  # the row's domain path, "" when the row does not even name one
    message: str


@dataclass(frozen=True, slots=True)
class Catalog:
    """A snapshot's files by domain path, and the Manifest.db rows that could not be used. Iterates its entries."""

    entries: tuple[CatalogEntry, ...]
    problems: tuple[CatalogProblem, ...] = ()

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def problems_under(self, path: str) -> list[str]:
        """The problems at or below a domain path ("" all), and those of rows naming no path at all."""
        path = path.strip("/")
        return [p.message for p in self.problems if not path or not p.path or under(p.path, path)]


class _Memo(dict):
    """The previous Manifest.db's decoded rows; remembers in `fresh` every row this parse used or decoded, so the
    stored memo only ever holds one Manifest.db's worth of rows."""

    def __init__(self, old: dict) -> None:
        super().__init__(old)
        self.fresh: dict[bytes, list] = {}

    def get(self, key, default=None):
        value = super().get(key, default)
        if value is not None:
            self.fresh[key] = value
        return value

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.fresh[key] = value


def _memo_key(device_key: str) -> bytes:
    return b"mbfile-memo/1/" + device_key.encode()


def _die_with_parent(parent: int) -> None:
    """The parse process must not outlive an import that was killed (SIGKILL leaves no chance to clean up)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _row_problem(p: RowProblem) -> list:
    if p.domain is not None:
        path = f"{p.domain}/{p.relative_path}" if p.relative_path else p.domain
        return [path, f"{shown(path)}: Manifest.db row {shown(p.file_id)} is unusable ({p.reason}); not listed"]
    return ["", f"Manifest.db row {shown(p.file_id)} is unusable ({p.reason}); not listed"]


def _duplicate_problems(group: list[CatalogEntry]) -> list[list]:
    names = [domain_path(c) for c in group]
    out = []
    for name in names:
        others = ", ".join(shown(n) for n in names if n != name) or "itself"
        out.append(
            [name, f"{shown(name)}: its fileID {shown(group[0].file_id)} is also listed as {others}; which name the "
                   "stored file has cannot be told, so it is not extracted (export keeps it)"]
        )  # fmt: skip
    return out


def _parse_packed(source: ManifestSource, packed_memo: bytes | None, where: str | None = None) -> ParsedCatalog:
    """The one parse of a Manifest.db (a file for an import, bytes from the vault otherwise) into what is cached."""
    memo = _Memo(msgpack.unpackb(packed_memo) if packed_memo else {})
    rows, sizes, row_problems = [], {}, []
    problems: list[list] = []
    group: list[CatalogEntry] = []  # rows are in fileID order, so rows sharing a fileID are neighbours
    for c in read_manifest_db(source, memo, row_problems, where):
        if group and group[0].file_id != c.file_id:
            if len(group) > 1:
                problems += _duplicate_problems(group)
            group = []
        group.append(c)
        rows.append(_row(c))
        if c.flags == FLAG_FILE:
            sizes[c.file_id] = c.size
    if len(group) > 1:
        problems += _duplicate_problems(group)
    problems = [_row_problem(p) for p in row_problems] + problems
    return ParsedCatalog(
        msgpack.packb([rows, problems]), sizes, msgpack.packb(memo.fresh), tuple(m for _p, m in problems)
    )


def _parse_in_child(path: str, packed_memo: bytes | None) -> ParsedCatalog:
    return _parse_packed(Path(path), packed_memo)


def _row(c: CatalogEntry) -> list:
    return [c.file_id, c.domain, c.relative_path, c.flags, c.size, c.mode, c.mtime, c.target, c.protection_class,
            c.has_encryption_key]  # fmt: skip


def _unpack(packed: bytes) -> Catalog:
    rows, problems = msgpack.unpackb(packed)
    return Catalog(tuple(CatalogEntry(*r) for r in rows), tuple(CatalogProblem(*p) for p in problems))


@dataclass(frozen=True, slots=True)
class ParsedCatalog:
    """What an import needs from its Manifest.db, compact: the catalog already packed for the cache, the size of
    every file row (to name missing and truncated files) and the rows that could not be used."""

    packed: bytes
    file_sizes: dict[str, int]
    packed_memo: bytes
    problems: tuple[str, ...] = ()


class ManifestParse:
    """A Manifest.db parse in another process, started now and collected with `result()`.

    Decoding MBFile archives is pure Python and holds the GIL, so on a first import (no warm memo) it would add
    seconds to the critical path; in a second process it runs on the other core while the files are read,
    chunked and sealed. Everything crosses the process boundary packed, so the parent never holds the decoded
    memo or catalog as Python objects (~1 KB a row). The file is checked here, synchronously, so an unusable
    catalog is refused before any file is stored. The file is the user's own backup folder's Manifest.db, read
    where it is (read-only, immutable); nothing is copied."""

    def __init__(self, repo: Repository, device_key: str, path: Path) -> None:
        check_manifest_db(path)
        self._repo, self._device_key, self._path = repo, device_key, path
        self._memo = repo.cache.derived_get(_memo_key(device_key))
        # fork: the child needs nothing but this function and its arguments, and (unlike spawn) does not re-run
        # the parent's __main__, which may be a script without a main guard.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() and sys.platform == "linux" else "spawn"
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context(method),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        self._future = self._pool.submit(_parse_in_child, str(path), self._memo)

    def result(self) -> ParsedCatalog:
        try:
            parsed = self._future.result()
        except (BrokenProcessPool, OSError):
            parsed = _parse_packed(self._path, self._memo)  # no second process to be had: slower, never wrong
        finally:
            self.close()
        self._repo.cache.derived_put(_memo_key(self._device_key), parsed.packed_memo)
        return parsed

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def catalog_key(repo: Repository, manifest_db: FileEntry) -> bytes:
    return b"catalog/%d/" % CATALOG_CACHE_FORMAT + repo.key.blob_id(b"".join(manifest_db.chunks))


def store_catalog(repo: Repository, manifest_db: FileEntry, packed: bytes) -> None:
    repo.cache.derived_put(catalog_key(repo, manifest_db), packed)


def _read_whole(repo: Repository, entry: FileEntry) -> bytearray:
    """A stored file's bytes in one buffer of its size (no list of chunks beside the joined copy)."""
    buf = bytearray(entry.size)
    view, at = memoryview(buf), 0
    for chunk in repo.read_file(entry):
        if at + len(chunk) > len(buf):
            raise CorruptObject("Manifest.db", f"longer than the {entry.size} bytes its tree entry records")
        view[at : at + len(chunk)] = chunk
        at += len(chunk)
    view.release()
    del buf[at:]
    return buf


def load_catalog(repo: Repository, snap: SnapshotRecord) -> Catalog:
    if snap.meta.get("encrypted"):
        raise EncryptedBackup(snap.hex[:12])
    entry = lookup(snap.tree, "Manifest.db", repo.get_blob)
    if entry is None:
        raise PathNotFound("Manifest.db", f"snapshot {snap.hex[:12]}")
    if (cached := repo.cache.derived_get(catalog_key(repo, entry))) is not None:
        return _unpack(cached)
    # In memory: the decrypted Manifest.db never touches a file (a killed `ls` must leave no plaintext behind).
    image = _read_whole(repo, entry)
    memo = repo.cache.derived_get(_memo_key(snap.device_key))
    parsed = _parse_packed(image, memo, f"snapshot {snap.hex[:12]}: Manifest.db")  # empties `image` once parsed
    repo.cache.derived_put(_memo_key(snap.device_key), parsed.packed_memo)
    store_catalog(repo, entry, parsed.packed)
    return _unpack(parsed.packed)


@dataclass(frozen=True, slots=True)
class Listing:
    name: str
    path: str  # full domain path
    is_dir: bool
    size: int
    mtime: int
    file_id: str | None


def list_dir(catalog: Iterable[CatalogEntry], path: str = "") -> list[Listing]:
    """Immediate children of a domain path ("" lists the domains)."""
    path = path.strip("/")
    prefix = path + "/" if path else ""
    children: dict[str, Listing] = {}
    found = not path
    for c in catalog:
        full = domain_path(c)
        if full == path:
            found = True
            if c.flags != 2:
                return [Listing(full.rsplit("/", 1)[-1], full, False, c.size, c.mtime, c.file_id)]
            continue
        if not full.startswith(prefix):
            continue
        found = True
        rest = full[len(prefix) :]
        name, sep, _ = rest.partition("/")
        child = prefix + name
        if sep or c.flags == 2:
            old = children.get(name)
            size = (old.size if old and old.is_dir else 0) + (c.size if c.flags == 1 else 0)
            children[name] = Listing(name, child, True, size, max(c.mtime, old.mtime if old else 0), None)
        else:
            children[name] = Listing(name, child, False, c.size, c.mtime, c.file_id)
    if not found:
        raise PathNotFound(path, "this snapshot")
    return sorted(children.values(), key=lambda x: (not x.is_dir, x.name))


def select(catalog: Iterable[CatalogEntry], path: str) -> list[CatalogEntry]:
    """Files (flags 1) at or under a domain path, in catalog order."""
    path = path.strip("/")
    return [c for c in catalog if c.flags == FLAG_FILE and under(domain_path(c), path)]


@dataclass(frozen=True, slots=True)
class Extracted:
    source: str  # domain path
    path: Path
    size: int


@dataclass(frozen=True, slots=True)
class _Planned:
    row: CatalogEntry
    source: str
    path: Path
    entry: FileEntry


class _NotWritten(Exception):
    """One file could not be extracted; the message names it and why."""


_STOP = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the target cannot take more files: stop, do not try each one
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV)


def extract(
    repo: Repository, snap: SnapshotRecord, paths: list[str], dest: Path, *, overwrite: bool = False
) -> list[Extracted]:
    """Write the named files (or everything under named folders) to dest/<domain path>. Reads only the chunks of
    those files: one photo costs one photo's worth of reads, however large the backup.

    Raises before writing anything: PathNotFound (a path names nothing), TargetConflict (an existing name without
    `overwrite`, two files on one name, a file where a folder must be). Raises after writing every other file:
    ExtractIncomplete naming each file that was not written."""
    catalog = load_catalog(repo, snap)
    shared = {fid for fid, n in Counter(c.file_id for c in catalog).items() if n > 1}  # named in catalog.problems
    problems: list[str] = []
    chosen: dict[str, CatalogEntry] = {}
    for p in paths:
        p = p.strip("/")
        rows, bad = select(catalog, p), catalog.problems_under(p)
        if not rows and not bad:
            raise PathNotFound(p, "this snapshot (no files at or under it)")
        problems += bad
        for c in rows:
            name = domain_path(c)
            if c.file_id in shared:
                continue
            other = chosen.setdefault(name, c)
            if other.file_id != c.file_id:
                raise TargetConflict(
                    shown(name), f"two files of the snapshot have this name (fileIDs {other.file_id} and {c.file_id})"
                )
    problems = list(dict.fromkeys(problems))  # overlapping paths name a row once
    plan = _plan(repo, snap, chosen, Target(dest), overwrite, problems)
    out: list[Extracted] = []
    written: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) of each file written -> its domain path
    for item in plan:
        try:
            out.append(_write(repo, item, overwrite, written, problems))
        except _NotWritten as e:
            problems.append(str(e))
        except OSError as e:
            if e.errno in _STOP:
                raise PhonevaultError(
                    f"{item.path}: {e.strerror}; stopped after extracting {len(out)} of {len(plan)} file(s)"
                ) from None
            problems.append(f"{shown(item.source)}: not extracted to {item.path} ({e.strerror or e})")
    if problems:
        raise ExtractIncomplete(problems, out)
    return out


def _plan(
    repo: Repository,
    snap: SnapshotRecord,
    chosen: dict[str, CatalogEntry],
    target: Target,
    overwrite: bool,
    problems: list[str],
) -> list[_Planned]:
    """Where each chosen file goes, every refusal made before a byte is written."""
    plan: list[_Planned] = []
    for name in sorted(chosen):
        c = chosen[name]
        try:
            path = target.join(name)
        except UnsafePath as e:
            problems.append(str(e))
            continue
        entry = lookup(snap.tree, backup_path(c.file_id), repo.get_blob)
        if entry is None or entry.is_dir:
            problems.append(
                f"{shown(name)}: listed in Manifest.db but its file {shown(backup_path(c.file_id))} is not in "
                f"snapshot {snap.hex[:12]}"
            )
            continue
        plan.append(_Planned(c, name, path, entry))
    files = {item.source for item in plan}
    existing: list[Path] = []
    usable: list[_Planned] = []
    for item in plan:
        parts = relative_parts(item.source, str(target.root))
        for i in range(1, len(parts)):
            if (folder := "/".join(parts[:i])) in files:
                raise TargetConflict(
                    shown(folder), f"is a file in this snapshot and also a folder of {shown(item.source)}"
                )
        try:
            st = os.lstat(item.path)
        except FileNotFoundError:
            usable.append(item)
            continue
        except NotADirectoryError:
            raise TargetConflict(str(item.path), "a folder on its way there is a file") from None
        except OSError as e:  # a name too long for this file system, a folder we may not enter: this file only
            problems.append(f"{shown(item.source)}: cannot be extracted to {item.path} ({e.strerror or e})")
            continue
        if stat.S_ISDIR(st.st_mode):
            raise TargetConflict(str(item.path), "is a folder; the snapshot has a file of that name")
        if not overwrite:
            existing.append(item.path)
        usable.append(item)
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise TargetConflict(str(existing[0]), f"already exists{more}; give --overwrite to replace")
    return usable


def _write(
    repo: Repository, item: _Planned, overwrite: bool, written: dict[tuple[int, int], str], problems: list[str]
) -> Extracted:
    item.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=item.path.parent, prefix=".phonevault-")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                for chunk in repo.read_file(item.entry):
                    f.write(chunk)
            except PhonevaultError as e:  # a damaged or missing blob: this file only
                raise _NotWritten(f"{shown(item.source)}: not extracted ({e})") from None
        os.chmod(tmp, (item.row.mode & 0o777) or 0o644)
        try:
            os.utime(tmp, (item.row.mtime, item.row.mtime))
        except (OverflowError, ValueError, OSError):
            problems.append(f"{shown(item.source)}: extracted, but its time {item.row.mtime} cannot be set here")
        _place(tmp, item, overwrite, written)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return Extracted(item.source, item.path, item.entry.size)


def _place(tmp: str, item: _Planned, overwrite: bool, written: dict[tuple[int, int], str]) -> None:
    """Move the finished temp file to its name. Never onto a file this extract wrote (a name the file system folds
    onto another one), and without `overwrite` never onto any file."""
    path = item.path
    if overwrite:
        _refuse_if_written(path, item, written)
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)  # unlike rename, fails if the name exists
        except FileExistsError:
            _refuse_if_written(path, item, written)
            raise _NotWritten(f"{shown(item.source)}: {path} appeared meanwhile; not replaced") from None
        except OSError as e:
            if e.errno not in _NO_HARD_LINKS:
                raise
            if os.path.lexists(path):  # a file system without hard links: check, then rename
                _refuse_if_written(path, item, written)
                raise _NotWritten(f"{shown(item.source)}: {path} appeared meanwhile; not replaced") from None
            os.replace(tmp, path)
    st = os.lstat(path)
    written[(st.st_dev, st.st_ino)] = item.source


def _refuse_if_written(path: Path, item: _Planned, written: dict[tuple[int, int], str]) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if (other := written.get((st.st_dev, st.st_ino))) is not None:
        raise _NotWritten(
            f"{shown(item.source)}: this file system stores it under the same name as {shown(other)} "
            "(names differing only in case or Unicode form); not extracted"
        )


@dataclass(frozen=True, slots=True)
class DiffRow:
    path: str  # a domain path where the catalog knows the file, else the backup-folder path
    kind: str
    old_size: int | None
    new_size: int | None


def diff(repo: Repository, a: SnapshotRecord, b: SnapshotRecord) -> list[DiffRow]:
    """What changed from a to b. The tree diff skips every unchanged shard; names come from the catalogs."""
    changes = list(diff_trees(a.tree, b.tree, repo.get_blob))
    names: dict[str, str] = {}
    for snap in (a, b):
        try:
            names.update({backup_path(c.file_id): domain_path(c) for c in load_catalog(repo, snap)})
        except (EncryptedBackup, PathNotFound):
            pass

    def size(e: FileEntry | None) -> int | None:
        return e.size if e is not None else None

    rows = [DiffRow(names.get(ch.path, ch.path), ch.kind, size(ch.old), size(ch.new)) for ch in changes]
    return sorted(rows, key=lambda r: r.path)
