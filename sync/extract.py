"""Extract: files of a snapshot, by domain path, written to a folder.

Extract writes each file at its full domain path under the target (as restic keeps full paths), through
`paths.Target` (nothing lands outside it). It plans everything first and refuses, before writing a byte, a name
that already exists (unless overwrite), two files on one name, and a file where a folder must go. Then each file
is written to a `.phonevault-*` temp file beside its final name (removed on any error), given its mode (without
set-id/sticky bits: a phone's say-so never makes a set-uid file here) and mtime, and moved into place: by hard
link when not overwriting, which fails rather than replace a file (so names that one file system folds together,
`IMG.JPG` and `img.jpg` on macOS, are caught there); by rename when overwriting. A file that cannot be extracted
(not in the snapshot, an unsafe path, an unusable row, bytes the phone encrypted, a failed write) is named and the
rest are extracted (`ExtractIncomplete`, exit 3); with `strict`, nothing is written unless every file can be, and a
file the vault cannot give back is found by reading the chosen files first. A full or read-only disk stops the
extract with one line.
A file's bytes are found where the snapshot's folder layout keeps them (xx/<fileID>, <fileID> or <fileID>.mddata:
sync/layouts.py). A backup of iOS 10.2 or later the phone encrypted is read with its backup password (`password`,
sync/encrypted.py): each file's key is unwrapped while planning (one that does not unwrap is named there, so
`strict` refuses before writing) and its bytes are decrypted as they stream into the temp file, whose padding and
length are checked before it is moved into place (a file that fails is named; nothing of it is left). An iOS 4–9
backup the phone encrypted lists its files in plaintext but keeps each file's bytes encrypted (its row has an
encryption key) under a keybag of before iOS 10.2, which phonevault does not read: such a file is named.
Memory: one shard of the snapshot's catalog at a time (see catalog.py), the chosen rows and the plan (one record per
file), and one chunk at a time of the file being written; only the chunks of the chosen files are read. Naming
files (not folders) of a catalog whose fileIDs are the phone's own names reads one cached shard per file, not the
catalog (`_named_files`); a file row that also has rows below it (a catalog no phone writes) is then extracted as
the file named, where reading the whole catalog would refuse the pair as a file that is also a folder. When a tree node is damaged, the snapshot's
entries are read whole once, its lost nodes from the fold of its deltas (store/check.py `readable_tree`).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from phonevault.store.errors import PathNotFound, PhonevaultError, UnsafePath
from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import ChunkReader, Repository
from phonevault.store.trees import FileEntry, lookup

from .catalog import Catalog, domain_path, load_catalog, under
from .catalogcache import CachedRows
from .catalogshards import phone_file_id
from .encrypted import BackupPassword
from .errors import ExtractIncomplete, FileUndecryptable, StrictRefused, TargetConflict
from .manifest import FLAG_FILE, CatalogEntry
from .paths import Target, relative_parts, shown


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
    key: bytes | None = None  # the file's own key, when the phone encrypted it


class _NotWritten(Exception):
    """One file could not be extracted; the message names it and why."""


_STOP = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the target cannot take more files: stop, do not try each one
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV)


def extract(
    repo: Repository,
    snap: SnapshotRecord,
    paths: list[str],
    dest: Path,
    *,
    overwrite: bool = False,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    password: BackupPassword | None = None,
) -> list[Extracted]:
    """Write the named files (or everything under named folders) to dest/<domain path>. Reads only the chunks of
    those files: one photo costs one photo's worth of reads, however large the backup.

    Raises before writing anything: PathNotFound (a path names nothing), TargetConflict (an existing name without
    `overwrite`, two files on one name, a file where a folder must be), and with `strict` StrictRefused if any
    file cannot be extracted (each named; the chosen files are read once to know, before the write reads them
    again). Raises after writing every other file: ExtractIncomplete naming each file that was not written.
    A snapshot the phone encrypted needs `password` (see load_catalog)."""
    catalog = load_catalog(repo, snap, password)
    paths = [p.strip("/") for p in paths]
    selected, shared = _named_files(catalog, paths) or _select_all(catalog, paths)  # shared: in catalog.problems
    problems: list[str] = []
    chosen: dict[str, CatalogEntry] = {}
    for p, rows in zip(paths, selected, strict=True):
        bad = catalog.problems_under(p)
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
    for name, c in list(chosen.items()):
        if c.has_encryption_key and catalog.keys is None:  # ciphertext written out would pass for the file
            problems.append(
                f"{shown(name)}: the phone encrypted this file; extracting it needs the backup password and a "
                "keybag of iOS 10.2 or later, which phonevault reads and this backup predates (export keeps it)"
            )
            del chosen[name]
    plan = _plan(repo, snap, catalog, chosen, Target(dest), overwrite, problems)
    if strict:  # all or nothing: every refusal and every file the vault cannot give back, before a byte is written
        from phonevault.store.check import unreadable_files  # noqa: PLC0415  (only --strict and damage need check)

        bad = unreadable_files(repo, [item.entry for item in plan])
        problems += [
            f"{shown(i.source)}: cannot be read back from the vault ({bad[i.entry.path]})"
            for i in plan
            if i.entry.path in bad
        ]
        problems += _undecryptable(repo, catalog, [i for i in plan if i.key is not None and i.entry.path not in bad])
        if problems:
            raise StrictRefused(problems, "extracted")
    out: list[Extracted] = []
    written: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) of each file written -> its domain path
    total, done = sum(item.entry.size for item in plan), 0
    with ChunkReader(repo) as chunks:
        for item in plan:
            if progress:
                progress(done, total)
            done += item.entry.size
            try:
                out.append(_write(repo, chunks, item, overwrite, written, problems, catalog))
            except _NotWritten as e:
                problems.append(str(e))
            except OSError as e:
                if e.errno in _STOP:
                    raise PhonevaultError(
                        f"{item.path}: {e.strerror}; stopped after extracting {len(out)} of {len(plan)} file(s)"
                    ) from None
                problems.append(f"{shown(item.source)}: not extracted to {item.path} ({e.strerror or e})")
    if progress:
        progress(done, total)
    if problems:
        raise ExtractIncomplete(problems, out)
    return out


def _named_files(catalog: Catalog, paths: list[str]) -> tuple[list[list[CatalogEntry]], set[str]] | None:
    """Each path's rows when every path names one file of a catalog whose fileIDs are the phone's own names
    (sync/catalogcache.py): the file's fileID is then the hash of its path, so one cached shard is read per path,
    not the catalog. None when that does not hold (a folder, a name no row has): then `_select_all`."""
    rows_of = catalog.entries
    if not isinstance(rows_of, CachedRows) or not rows_of.head.conforming:
        return None
    selected, shared = [], set()
    for p in paths:
        domain, sep, rel = p.partition("/")
        if not sep:
            return None
        fid = phone_file_id(domain, rel)
        rows = rows_of.find(fid)
        named = [c for c in rows if domain_path(c) == p]
        if not named or any(c.flags != FLAG_FILE for c in named):
            return None
        if len(rows) > 1:
            shared.add(fid)
        selected.append(named)
    return selected, shared


def _select_all(catalog: Catalog, paths: list[str]) -> tuple[list[list[CatalogEntry]], set[str]]:
    """`select` of every path and the fileIDs listed more than once, in one pass over the catalog (rows come in
    fileID order, so a fileID's rows are neighbours), holding only the rows chosen."""
    selected: list[list[CatalogEntry]] = [[] for _p in paths]
    shared: set[str] = set()
    last = None
    for c in catalog:
        if last is not None and c.file_id == last:
            shared.add(c.file_id)
        last = c.file_id
        if c.flags == FLAG_FILE:
            name = domain_path(c)
            for i, p in enumerate(paths):
                if under(name, p):
                    selected[i].append(c)
    if not isinstance(catalog.entries, CachedRows):  # an older list's rows are held, maybe not in fileID order
        shared = {fid for fid, n in Counter(c.file_id for c in catalog).items() if n > 1}
    return selected, shared


def _plan(
    repo: Repository,
    snap: SnapshotRecord,
    catalog: Catalog,
    chosen: dict[str, CatalogEntry],
    target: Target,
    overwrite: bool,
    problems: list[str],
) -> list[_Planned]:
    """Where each chosen file goes, every refusal made before a byte is written."""
    plan: list[_Planned] = []
    readable: dict[str, FileEntry] | None = None  # the whole snapshot, read only if a tree node is damaged
    for name in sorted(chosen):
        c = chosen[name]
        try:
            path = target.join(name)
        except UnsafePath as e:
            problems.append(str(e))
            continue
        stored = catalog.layout.backup_path(c.file_id)
        try:
            entry = lookup(snap.tree, stored, repo.get_blob)
        except PhonevaultError as e:  # its folder's tree node is damaged: the fold of the deltas stands in
            if readable is None:
                from phonevault.store.check import readable_tree  # noqa: PLC0415  (see unreadable_files)

                entries, _lost = readable_tree(repo, repo.view(snap.device_key), snap)
                readable = {x.path: x for x in entries}
            if (entry := readable.get(stored)) is None:
                problems.append(f"{shown(name)}: not extracted, its entry cannot be read back from the vault ({e})")
                continue
        if entry is None or entry.is_dir:
            problems.append(
                f"{shown(name)}: listed in {catalog.layout.listing} but its file {shown(stored)} is not in "
                f"snapshot {snap.hex[:12]}"
            )
            continue
        key = None
        if catalog.keys is not None and c.has_encryption_key:
            try:
                key = catalog.keys.key(c.file_id, shown(name))
            except FileUndecryptable as e:
                problems.append(f"{e}; not extracted")
                continue
        plan.append(_Planned(c, name, path, entry, key))
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


def _undecryptable(repo: Repository, catalog: Catalog, items: list[_Planned]) -> list[str]:
    """--strict: the encrypted files among `items` whose bytes do not decrypt (padding, length), read once."""
    if not items or catalog.keys is None:  # a plain snapshot: nothing to decrypt
        return []
    out = []
    for i in items:
        assert i.key is not None
        try:
            for _piece in catalog.keys.open(i.key, repo.read_file(i.entry), i.row.size, shown(i.source)):
                pass
        except FileUndecryptable as e:
            out.append(str(e))
    return out


def _write(
    repo: Repository,
    chunks: ChunkReader,
    item: _Planned,
    overwrite: bool,
    written: dict[tuple[int, int], str],
    problems: list[str],
    catalog: Catalog | None = None,
) -> Extracted:
    item.path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=item.path.parent, prefix=".phonevault-")
    try:
        with os.fdopen(fd, "wb") as f:
            if item.key is not None and catalog is not None and catalog.keys is not None:
                # Decrypted into the temp file, which is removed unless its padding and length check out.
                pieces = catalog.keys.open(item.key, repo.read_file(item.entry), item.row.size, shown(item.source))
            else:  # opened into ChunkReader's kept buffer (one view per chunk, written before the next)
                pieces = chunks.pieces(item.entry)
            try:
                for chunk in pieces:
                    f.write(chunk)
            except FileUndecryptable as e:
                raise _NotWritten(f"{e}; not extracted") from None
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
    return Extracted(item.source, item.path, item.row.size if item.key is not None else item.entry.size)


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
