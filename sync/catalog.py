"""The catalog projection: a snapshot seen as the phone's files (domain + path), not as hashed backup-folder names.

A snapshot's catalog is read from the Manifest.db it contains and cached (LMDB `derived`, keyed by that
Manifest.db's blob ids: the same bytes always give the same catalog, so the cache never goes stale).
Domain paths are `<domain>/<relativePath>`, e.g. `CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC`.
A backup the phone encrypted has an encrypted Manifest.db: browsing it needs the backup password, which this
version does not take yet (`EncryptedBackup`); such snapshots can still be exported and restored as they are.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import msgpack

from phonevault.store.errors import PathNotFound, PhonevaultError
from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import Repository
from phonevault.store.trees import FileEntry, diff_trees, lookup

from .manifest import CatalogEntry, check_manifest_db, read_manifest_db

CATALOG_CACHE_FORMAT = 1


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


def _parse_packed(path: Path, packed_memo: bytes | None) -> ParsedCatalog:
    memo = _Memo(msgpack.unpackb(packed_memo) if packed_memo else {})
    rows, sizes = [], {}
    for c in read_manifest_db(path, memo):
        rows.append(_row(c))
        if c.flags == 1:
            sizes[c.file_id] = c.size
    return ParsedCatalog(msgpack.packb(rows), sizes, msgpack.packb(memo.fresh))


def _parse_in_child(path: str, packed_memo: bytes | None) -> ParsedCatalog:
    return _parse_packed(Path(path), packed_memo)


def _row(c: CatalogEntry) -> list:
    return [c.file_id, c.domain, c.relative_path, c.flags, c.size, c.mode, c.mtime, c.target, c.protection_class,
            c.has_encryption_key]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ParsedCatalog:
    """What an import needs from its Manifest.db, compact: the rows already packed for the catalog cache, and the
    size of every file row (to name missing and truncated files)."""

    packed_rows: bytes
    file_sizes: dict[str, int]
    packed_memo: bytes


class ManifestParse:
    """A Manifest.db parse in another process, started now and collected with `result()`.

    Decoding MBFile archives is pure Python and holds the GIL, so on a first import (no warm memo) it would add
    seconds to the critical path; in a second process it runs on the other core while the files are read,
    chunked and sealed. Everything crosses the process boundary packed, so the parent never holds the decoded
    memo or catalog as Python objects (~1 KB a row). The file is checked here, synchronously, so an unusable
    catalog is refused before any file is stored."""

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


def store_catalog(repo: Repository, manifest_db: FileEntry, packed_rows: bytes) -> None:
    repo.cache.derived_put(catalog_key(repo, manifest_db), packed_rows)


def load_catalog(repo: Repository, snap: SnapshotRecord) -> list[CatalogEntry]:
    if snap.meta.get("encrypted"):
        raise EncryptedBackup(snap.hex[:12])
    entry = lookup(snap.tree, "Manifest.db", repo.get_blob)
    if entry is None:
        raise PathNotFound("Manifest.db", f"snapshot {snap.hex[:12]}")
    if (cached := repo.cache.derived_get(catalog_key(repo, entry))) is not None:
        return [CatalogEntry(*row) for row in msgpack.unpackb(cached)]
    with tempfile.TemporaryDirectory(prefix="phonevault-catalog-") as tmp:
        path = Path(tmp) / "Manifest.db"
        with open(path, "wb") as f:
            for chunk in repo.read_file(entry):
                f.write(chunk)
        parsed = _parse_packed(path, repo.cache.derived_get(_memo_key(snap.device_key)))
    repo.cache.derived_put(_memo_key(snap.device_key), parsed.packed_memo)
    store_catalog(repo, entry, parsed.packed_rows)
    return [CatalogEntry(*row) for row in msgpack.unpackb(parsed.packed_rows)]


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


def select(catalog: list[CatalogEntry], path: str) -> list[tuple[CatalogEntry, str]]:
    """Files (flags 1) at or under a domain path, each with its path relative to what the user named."""
    path = path.strip("/")
    base = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    out = []
    for c in catalog:
        full = domain_path(c)
        if c.flags == 1 and (full == path or full.startswith(path + "/")):
            out.append((c, full[len(base) :]))
    if not out:
        raise PathNotFound(path, "this snapshot (no files at or under it)")
    return out


@dataclass(frozen=True, slots=True)
class Extracted:
    source: str
    path: Path
    size: int


def extract(repo: Repository, snap: SnapshotRecord, paths: list[str], dest: Path) -> list[Extracted]:
    """Write the named files (or everything under named folders) into dest with their real names. Reads only the
    chunks of those files: one photo costs one photo's worth of reads, however large the backup."""
    catalog = load_catalog(repo, snap)
    todo = [pair for p in paths for pair in select(catalog, p)]
    out = []
    for c, rel in todo:
        entry = lookup(snap.tree, backup_path(c.file_id), repo.get_blob)
        if entry is None:
            raise PathNotFound(domain_path(c), f"snapshot {snap.hex[:12]} (listed in its Manifest.db but not stored)")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".phonevault-")
        with os.fdopen(fd, "wb") as f:
            for chunk in repo.read_file(entry):
                f.write(chunk)
        os.chmod(tmp, stat.S_IMODE(c.mode) or 0o644)
        os.utime(tmp, (c.mtime, c.mtime))
        os.replace(tmp, target)
        out.append(Extracted(domain_path(c), target, entry.size))
    return out


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
