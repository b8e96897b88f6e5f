"""What the web view's pages show, read from the library API (store/, sync/): the same calls the CLI makes.

One `Library` owns the open (read-only) repository. Repository, cache and LMDB are not safe to use from several
threads at once, so every method here runs on one thread, the vault thread (`VaultThread`): the web app's
handlers await `vault.run(library.method, …)`, and downloads pull their chunks through `vault.stream`. Thumbnail
decoding (CPU, no vault access) runs on a separate bounded pool (app.py).

Names in URLs are never paths on this machine: a device is its keyed device key, a snapshot its id, a file its
domain path looked up in the snapshot's catalog, a camera-roll item its content key looked up in the roll. What
the catalog does not list is PathNotFound, so no URL can name anything else.
Device logs and the blob index are re-read (listings, and a 12-byte read per segment) when a page is shown, so
backups made while the server runs appear and read; the camera roll is kept per device until its live snapshots or
head change.
"""

from __future__ import annotations

import asyncio
import functools
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from phonevault.store.errors import DeviceNotFound, PathNotFound, SnapshotNotFound
from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.repository import Repository, format_time
from phonevault.store.trees import FileEntry, iter_tree, lookup
from phonevault.sync.catalog import Catalog, Listing, domain_path, list_dir, load_catalog, select
from phonevault.sync.diff import DiffRow
from phonevault.sync.diff import diff as catalog_diff
from phonevault.sync.encrypted import BackupPassword
from phonevault.sync.errors import EncryptedBackup, FileUndecryptable
from phonevault.sync.find import FindResult
from phonevault.sync.find import find as find_paths
from phonevault.sync.manifest import FLAG_FILE, CatalogEntry
from phonevault.sync.photos import CameraRoll, MediaItem, camera_roll, read_media
from phonevault.sync.records import backup_meta

from ..snapshot_cmds import device_json, snapshot_json

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry
WALK_TREE_OVER = 64  # files in a zip past which its entries come from one walk of the tree, not a lookup each


class VaultThread:
    """The one thread that touches the repository."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phonevault-vault")

    async def run(self, fn: Callable, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def stream(self, make: Callable[[], Iterator[bytes]]) -> AsyncIterator[bytes]:
        """A response body pulled from an iterator that lives on the vault thread (each piece read there)."""
        it = await self.run(make)
        try:
            while (piece := await self.run(next, it, None)) is not None:
                yield piece
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                await self.run(close)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    """A snapshot as the timeline shows it: snapshot_json's fields plus what the page needs."""

    doc: dict
    record: SnapshotRecord
    encrypted: bool


class Library:
    """What the web view reads, over one open vault. ``password``: the phone's backup password(s), which open the
    snapshots the phone encrypted (their files, downloads, zips and camera roll) as the CLI's --backup-password
    does; None, and those snapshots say that they need it. It never comes from a request."""

    def __init__(self, repo: Repository, password: BackupPassword | None = None) -> None:
        self.repo = repo
        self.password = password
        self._rolls: dict[str, tuple[tuple, CameraRoll, dict[str, MediaItem]]] = {}

    # --- devices and snapshots ---------------------------------------------------------------------------------
    def devices(self) -> list[tuple[DeviceView, dict, list[SnapshotRow]]]:
        self.repo.sync_index()
        out = []
        for key in self.repo.device_keys():
            view = self.repo.view(key, refresh=True)
            out.append((view, device_json(view), self._rows(view)))
        return out

    def device(self, key: str, *, refresh: bool = False) -> DeviceView:
        if key not in self.repo.device_keys():
            raise DeviceNotFound(key[:12])
        if refresh:  # a backup made while the server runs: its snapshots, and the blobs they need
            self.repo.sync_index()
        return self.repo.view(key, refresh=refresh)

    def timeline(self, key: str) -> tuple[DeviceView, dict, list[SnapshotRow]]:
        view = self.device(key, refresh=True)
        return view, device_json(view), self._rows(view)

    def _rows(self, view: DeviceView) -> list[SnapshotRow]:
        live = sorted(view.live(), key=lambda s: (s.time, s.committed))
        return [SnapshotRow(snapshot_json(view, s), s, backup_meta(s).encrypted) for s in live]

    def snapshot(self, key: str, snap_id: str) -> tuple[DeviceView, SnapshotRecord]:
        view = self.device(key)
        try:
            rec = view.get(bytes.fromhex(snap_id))
        except ValueError:
            rec = None
        if rec is None or rec.forgotten:
            raise SnapshotNotFound(snap_id[:12])
        return view, rec

    # --- files -------------------------------------------------------------------------------------------------
    def catalog(self, key: str, snap_id: str) -> tuple[DeviceView, SnapshotRecord, Catalog]:
        view, snap = self.snapshot(key, snap_id)
        # One the phone encrypted: BackupPasswordNeeded (an EncryptedBackup) without the password, else opened.
        return view, snap, load_catalog(self.repo, snap, self.password)

    def listing(self, key: str, snap_id: str, path: str) -> tuple[DeviceView, SnapshotRecord, list[Listing], list[str]]:
        view, snap, catalog = self.catalog(key, snap_id)
        return view, snap, list_dir(catalog, path), catalog.problems_under(path)

    def file_entry(self, key: str, snap_id: str, path: str) -> tuple[CatalogEntry, FileEntry]:
        """A file of a snapshot by its domain path: the catalog row, and the tree entry its bytes are in."""
        _view, snap, catalog = self.catalog(key, snap_id)
        return self._file_in(snap, catalog, path)

    def _file_in(self, snap: SnapshotRecord, catalog: Catalog, path: str) -> tuple[CatalogEntry, FileEntry]:
        path = path.strip("/")
        rows = [c for c in catalog if c.flags == FLAG_FILE and domain_path(c) == path]
        if len(rows) != 1:  # none, or a name two rows share (which stored file it is cannot be told)
            raise PathNotFound(path, "this snapshot's files" if not rows else "this snapshot: the name is ambiguous")
        entry = lookup(snap.tree, catalog.layout.backup_path(rows[0].file_id), self.repo.get_blob)
        if entry is None or entry.is_dir:
            raise PathNotFound(path, f"snapshot {snap.hex[:12]} (listed, but its bytes are not stored)")
        return rows[0], entry

    def file_size(self, key: str, snap_id: str, path: str) -> int:
        """The size of what `file_bytes` sends (a file the phone encrypted: its plaintext's)."""
        _view, snap, catalog = self.catalog(key, snap_id)
        row, entry = self._file_in(snap, catalog, path)
        return row.size if _sealed(catalog, row) else entry.size

    def file_bytes(self, key: str, snap_id: str, path: str) -> Iterator[bytes]:
        _view, snap, catalog = self.catalog(key, snap_id)
        row, entry = self._file_in(snap, catalog, path)
        return _plain(self.repo, catalog, row, entry)

    def zip_plan(self, key: str, snap_id: str, path: str) -> list[tuple[str, CatalogEntry, FileEntry]]:
        """The files at or under a domain path, with their entries, in name order. Rows the phone encrypted the
        bytes of are left out unless the snapshot was opened with its password (ciphertext would pass for the file);
        the zip then holds their plaintext."""
        return self._zip_plan(key, snap_id, path)[0]

    def _zip_plan(self, key: str, snap_id: str, path: str) -> tuple[list[tuple[str, CatalogEntry, FileEntry]], Catalog]:
        _view, snap, catalog = self.catalog(key, snap_id)
        rows = select(catalog, path)
        if not rows:
            raise PathNotFound(path.strip("/"), "this snapshot (no files at or under it)")
        rows = sorted((c for c in rows if not c.has_encryption_key or catalog.keys is not None), key=domain_path)
        wanted = {catalog.layout.backup_path(c.file_id) for c in rows}
        if len(wanted) > WALK_TREE_OVER:  # one walk of the tree rather than a shard node read per file
            entries = {e.path: e for e in iter_tree(snap.tree, self.repo.get_blob) if e.path in wanted}
        else:
            entries = {p: e for p in wanted if (e := lookup(snap.tree, p, self.repo.get_blob)) is not None}
        plan = []
        for c in rows:
            entry = entries.get(catalog.layout.backup_path(c.file_id))
            if entry is not None and not entry.is_dir:
                plan.append((domain_path(c), c, entry))
        return plan, catalog

    def zip_stream(self, key: str, snap_id: str, path: str) -> Iterator[bytes]:
        """A zip of the files at or under `path`, produced as it is read: never more than one chunk in memory.
        Entries are stored (photos and videos do not compress) and named by domain path below `path`'s parent."""
        plan, catalog = self._zip_plan(key, snap_id, path)
        base = path.strip("/").rpartition("/")[0]
        return _zip(self.repo, catalog, [(name[len(base) :].lstrip("/"), c, e) for name, c, e in plan])

    # --- camera roll -------------------------------------------------------------------------------------------
    def roll(self, key: str, *, refresh: bool = False) -> tuple[DeviceView, CameraRoll]:
        """The device's camera roll; `refresh` re-reads its log first (a page load), thumbnails do not."""
        view = self.device(key, refresh=refresh)
        sig = (view.head, tuple(s.id for s in view.live()))
        cached = self._rolls.get(key)
        if cached is None or cached[0] != sig:
            roll = camera_roll(self.repo, view, self.password)
            cached = (sig, roll, {i.key: i for i in roll.items})
            self._rolls[key] = cached
        return view, cached[1]

    def media(self, key: str, content: str) -> tuple[DeviceView, MediaItem]:
        view, _roll = self.roll(key)
        item = self._rolls[key][2].get(content)
        if item is None:
            raise PathNotFound(content[:16], "this device's camera roll")
        return view, item

    def media_bytes(self, key: str, content: str) -> Iterator[bytes]:
        view, item = self.media(key, content)
        return read_media(self.repo, view, item, self.password)

    def media_whole(self, key: str, content: str, limit: int) -> bytes | None:
        """The item's bytes in one piece for decoding, or None when it is larger than `limit` or does not decrypt."""
        view, item = self.media(key, content)
        if item.size > limit:
            return None
        try:
            return b"".join(read_media(self.repo, view, item, self.password))
        except FileUndecryptable:
            return None

    def derived_get(self, k: bytes) -> bytes | None:
        return self.repo.cache.derived_get(k)

    def derived_put(self, k: bytes, v: bytes) -> None:
        self.repo.cache.derived_put(k, v)

    # --- diff and find -----------------------------------------------------------------------------------------
    def diff(self, key: str, a: str, b: str) -> tuple[DeviceView, SnapshotRecord, SnapshotRecord, list[DiffRow]]:
        view, sa = self.snapshot(key, a)
        _view, sb = self.snapshot(key, b)
        return view, sa, sb, catalog_diff(self.repo, sa, sb)

    def find(self, pattern: str, device: str | None, limit: int) -> tuple[FindResult, dict[str, DeviceView]]:
        views = [self.device(device)] if device else [self.repo.view(k) for k in self.repo.device_keys()]
        return find_paths(self.repo, views, pattern, limit=limit, password=self.password), {v.key: v for v in views}


def is_encrypted(snap: SnapshotRecord) -> bool:
    return backup_meta(snap).encrypted


def iso(us: int) -> str:
    return format_time(us)


def day_of(seconds: int) -> str:
    if seconds <= 0:
        return "unknown date"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d")


class _Sink:
    """A write-only, unseekable file for zipfile: it collects what is written until it is drained."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


def _sealed(catalog: Catalog, row: CatalogEntry) -> bool:
    return catalog.keys is not None and row.has_encryption_key


def _plain(repo: Repository, catalog: Catalog, row: CatalogEntry, entry: FileEntry) -> Iterator[bytes]:
    """A file's bytes as the phone has them: decrypted for a row the phone encrypted (its snapshot opened)."""
    if not _sealed(catalog, row):
        return repo.read_file(entry)
    assert catalog.keys is not None
    name = domain_path(row)
    return catalog.keys.open(catalog.keys.key(row.file_id, name), repo.read_file(entry), row.size, name)


def _zip(repo: Repository, catalog: Catalog, plan: list[tuple[str, CatalogEntry, FileEntry]]) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, row, entry in plan:
            info = zipfile.ZipInfo(name, _zip_time(row.mtime))
            info.external_attr = ((row.mode & 0o777) or 0o644) << 16
            with zf.open(info, "w", force_zip64=max(entry.size, row.size) >= 2**31) as f:
                for chunk in _plain(repo, catalog, row, entry):
                    f.write(chunk)
                    if (piece := sink.drain()) != b"":
                        yield piece
            if piece := sink.drain():
                yield piece
    if piece := sink.drain():
        yield piece


def _zip_time(mtime: int) -> tuple[int, int, int, int, int, int]:
    try:
        t = datetime.fromtimestamp(mtime, UTC)
    except (OverflowError, OSError, ValueError):
        return ZIP_EPOCH
    if t.year < 1980 or t.year > 2107:
        return ZIP_EPOCH
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


__all__ = ["EncryptedBackup", "Library", "VaultThread", "day_of", "is_encrypted", "iso"]
