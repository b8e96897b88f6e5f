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

A backup the phone encrypted has an encrypted Manifest.db: browsing it needs the backup password, which this
version does not take yet (`EncryptedBackup`); such snapshots can still be exported and restored as they are.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import msgpack

from phonevault.store.errors import CorruptObject, PathNotFound
from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import Repository
from phonevault.store.trees import FileEntry, diff_trees, lookup

from .errors import EncryptedBackup
from .manifest import FLAG_FILE, CatalogEntry, ManifestSource, RowProblem, check_manifest_db, read_manifest_db
from .paths import shown
from .records import backup_meta

CATALOG_CACHE_FORMAT = 2


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
    if backup_meta(snap).encrypted:
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
