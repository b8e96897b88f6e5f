"""The camera roll across versions: every photo and video any snapshot of a device holds, and which ones the
device's current backup no longer has.

A camera-roll item is a file under `CameraRollDomain/Media/DCIM/` whose name ends in a photo or video extension
(`.HEIC`, `.JPG`, `.PNG`, `.MOV`, `.MP4`, …); thumbnails under `Media/PhotoData/` are the phone's own caches, not
items. Items are told apart **by content**: a stored file's content key is the keyed hash of its chunk id list
(chunk ids are keyed hashes of the chunk bytes, and one path's bytes are always cut the same way), so the same
bytes kept under another name or in another folder are one item, and a photo edited in place is two: the old bytes
and the new. "Not on the phone any more" (`CameraRoll.gone`) is exactly the union of the other live snapshots'
items minus the current snapshot's, by content; an item's `snapshots` are exactly the live snapshots holding it.

An item's `taken` is when the photo was taken: its EXIF DateTimeOriginal read from its bytes (`photodates`: the
camera's wall-clock time), else the file's mtime (a video, a photo without EXIF). The roll is ordered and grouped by
it, so a photo edited today stays with the day it was shot. The EXIF date is read once per content: it is kept in
the snapshot's cached rows, and a snapshot read after others (`camera_roll` goes oldest first) takes the dates of
the contents they already hold from their rows, so a new backup reads only its new photos. (One cache entry per
snapshot, not per photo: each cache write is a committed LMDB transaction, ~5 ms on a disk.)

Per snapshot (`snapshot_media`): read from its catalog (sync/catalog.py) and one walk of its tree, then cached in
the LMDB cache (`derived`, sealed) under `photos/<format>/<tree id>`. The tree id names the snapshot's whole
content (the Manifest.db the catalog comes from included), so the entry never goes stale. Cached value: msgpack
list of `[domain path, backup path, size, mtime, content key, EXIF date or nil, encrypted]` (PHOTOS_CACHE_FORMAT 3).
The merged roll is cached
as well (`photo-roll/<format>/<keyed hash of the head and the live snapshots' ids and trees>`, see `_pack_roll`):
the same versions and head always give the same roll.
Snapshots the phone encrypted are read with the phone's backup password (`password`, sync/encrypted.py): their
items are marked `encrypted`, their bytes decrypted as they are read (`read_media`), and an item's content key is
that of its stored ciphertext (stable across incremental backups; a full re-encrypted backup is new content). Their
rows are cached like a plain snapshot's (names, sizes and dates, which the vault password already shows in the
cached catalog), but only after the password opened the snapshot in this process, and a roll with an encrypted
snapshot is not cached merged (whether it was opened depends on the password given). Without the password, or with
one that does not open them, they are skipped and listed in `CameraRoll.encrypted`; if the current snapshot is one
of them, `current_known` is False and nothing is called gone.

Memory: the rows of every live snapshot's camera roll (~200 bytes a row) plus one item per distinct content; on a
cache miss, one snapshot's catalog and a walk of its tree (one shard node at a time), and for a content whose date
is not cached yet the bytes `photodates` reads (a JPEG's head, a HEIC whole).
Nothing here writes a file; bytes come back through `read_media` as the vault's chunks, one at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgpack

from phonevault.store.errors import CorruptObject, MissingObject
from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.repository import Repository
from phonevault.store.trees import FileEntry, iter_tree, lookup

from .catalog import domain_path, load_catalog
from .encrypted import BackupPassword, FileKeys
from .errors import (
    EncryptedBackup,
    EncryptionUnsupported,
    FileUndecryptable,
    KeybagDamaged,
    ManifestUndecryptable,
    WrongBackupPassword,
)
from .manifest import FLAG_FILE, CatalogEntry
from .photodates import capture_time
from .records import backup_meta

PHOTOS_CACHE_FORMAT = 3
CAMERA_ROLL_DOMAIN = "CameraRollDomain"
DCIM = "Media/DCIM/"
PHOTO_EXTENSIONS = frozenset({"heic", "heif", "jpg", "jpeg", "png", "gif", "dng", "tif", "tiff", "webp", "bmp"})
VIDEO_EXTENSIONS = frozenset({"mov", "mp4", "m4v", "3gp", "avi"})


def media_kind(name: str) -> str | None:
    """ "photo", "video", or None for a name that is neither."""
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in PHOTO_EXTENSIONS:
        return "photo"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


@dataclass(frozen=True, slots=True)
class SnapshotMedia:
    """One camera-roll file of one snapshot."""

    path: str  # domain path, e.g. CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC
    backup_path: str  # where the snapshot's tree keeps its bytes (xx/<fileID>, …)
    size: int
    mtime: int  # seconds, the phone's own mtime of the file (an edit changes it)
    content: bytes  # the content key (see the module docstring)
    exif_taken: int | None  # seconds: its EXIF DateTimeOriginal (see the module docstring), None if it has none
    encrypted: bool = False  # stored as the phone encrypted it: read it through its snapshot's keys

    @property
    def taken(self) -> int:
        """When it was taken: the EXIF date, else the file's mtime."""
        return self.mtime if self.exif_taken is None else self.exif_taken


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One distinct photo or video (by content) across every live snapshot of a device."""

    content: bytes
    path: str  # its domain path in the newest snapshot holding it
    size: int
    mtime: int
    kind: str  # "photo" | "video"
    snapshots: tuple[bytes, ...]  # ids of the live snapshots holding it, oldest first
    in_current: bool
    source: bytes  # a snapshot holding it (the newest): where its bytes are read from
    backup_path: str  # its backup path in `source`
    taken: int  # when it was taken (see SnapshotMedia.taken): what the roll is ordered and grouped by
    encrypted: bool = False  # its bytes are the phone's ciphertext (see SnapshotMedia.encrypted)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def key(self) -> str:
        """The item's name in URLs: its content key in hex (a keyed hash: it tells nothing of the bytes)."""
        return self.content.hex()


@dataclass(frozen=True, slots=True)
class CameraRoll:
    items: tuple[MediaItem, ...]  # newest first (taken, then path, descending)
    snapshots: tuple[SnapshotRecord, ...]  # the live snapshots read, oldest first
    encrypted: tuple[SnapshotRecord, ...]  # live snapshots skipped: the phone encrypted them
    current: bytes | None  # the device's current snapshot
    current_known: bool  # the current snapshot was read (it exists and is not encrypted)

    def gone(self) -> list[MediaItem]:
        """Items earlier (or other) versions hold and the current backup does not: photos deleted from the phone."""
        if not self.current_known:
            return []
        return [i for i in self.items if not i.in_current]

    def find(self, key: str) -> MediaItem | None:
        for i in self.items:
            if i.key == key:
                return i
        return None


def content_key(repo: Repository, entry: FileEntry) -> bytes:
    return repo.key.blob_id(b"".join(entry.chunks))


def _cache_key(snap: SnapshotRecord) -> bytes:
    return b"photos/%d/" % PHOTOS_CACHE_FORMAT + snap.tree


def snapshot_media(
    repo: Repository,
    snap: SnapshotRecord,
    known: dict[bytes, int | None] | None = None,
    password: BackupPassword | None = None,
) -> list[SnapshotMedia]:
    """The camera-roll files of one snapshot (cached; see the module docstring). ``known``: EXIF dates by content
    key already read (from other snapshots' rows). A snapshot the phone encrypted needs ``password``: else
    EncryptedBackup (BackupPasswordNeeded), WrongBackupPassword, … as load_catalog raises them."""
    catalog = load_catalog(repo, snap, password) if backup_meta(snap).encrypted else None  # opened, or raises
    key = _cache_key(snap)
    if (cached := repo.cache.derived_get(key)) is not None:
        try:
            return [SnapshotMedia(p, b, s, m, bytes(c), t, e) for p, b, s, m, c, t, e in msgpack.unpackb(cached)]
        except (ValueError, TypeError, msgpack.UnpackException):
            pass  # a value of another shape: computed again below and replaced
    if catalog is None:
        catalog = load_catalog(repo, snap)
    wanted: dict[str, CatalogEntry] = {}  # backup path -> its row
    for c in catalog:
        if c.flags != FLAG_FILE or c.domain != CAMERA_ROLL_DOMAIN or not c.relative_path.startswith(DCIM):
            continue
        if media_kind(c.relative_path) is None:
            continue
        wanted[catalog.layout.backup_path(c.file_id)] = c
    rows: list[SnapshotMedia] = []
    if wanted:
        for entry in iter_tree(snap.tree, repo.get_blob):
            if (c := wanted.get(entry.path)) is not None and not entry.is_dir:
                path = domain_path(c)
                content = content_key(repo, entry)
                sealed = catalog.keys is not None and c.has_encryption_key
                if media_kind(path) != "photo":
                    taken = None
                elif known is not None and content in known:
                    taken = known[content]
                else:
                    taken = _capture_time(repo, catalog.keys if sealed else None, c, entry)
                size = c.size if sealed else entry.size  # the plaintext's, as the phone has it
                rows.append(SnapshotMedia(path, entry.path, size, c.mtime, content, taken, sealed))
    rows.sort(key=lambda r: r.path)
    packed = [[r.path, r.backup_path, r.size, r.mtime, r.content, r.exif_taken, r.encrypted] for r in rows]
    repo.cache.derived_put(key, msgpack.packb(packed))
    return rows


def _capture_time(repo: Repository, keys: FileKeys | None, row: CatalogEntry, entry: FileEntry) -> int | None:
    pieces = repo.read_file(entry)
    if keys is not None:
        try:
            pieces = keys.open(keys.key(row.file_id, domain_path(row)), pieces, row.size, domain_path(row))
        except FileUndecryptable:
            return None
    try:
        return capture_time(pieces)
    except FileUndecryptable:  # found at the end of a HEIC read whole: a damaged file has no date here
        return None


def merge(
    per_snapshot: Iterable[tuple[SnapshotRecord, list[SnapshotMedia]]], current: bytes | None
) -> tuple[MediaItem, ...]:
    """Items by content from each snapshot's rows (snapshots oldest first): the pure core of `camera_roll`."""
    acc: dict[bytes, tuple[SnapshotMedia, SnapshotRecord, list[bytes]]] = {}
    for snap, rows in per_snapshot:
        for r in rows:
            kind = media_kind(r.path)
            if kind is None:
                continue
            seen = acc.get(r.content)
            if seen is None:
                acc[r.content] = (r, snap, [snap.id])
            else:
                holders = seen[2]
                if holders[-1] != snap.id:
                    holders.append(snap.id)
                # the newest snapshot's name and place win: that is where the photo was last seen
                acc[r.content] = (r, snap, holders)
    items = [
        MediaItem(
            content, r.path, r.size, r.mtime, media_kind(r.path) or "photo", tuple(holders), current in holders,
            snap.id, r.backup_path, r.taken, r.encrypted,
        )
        for content, (r, snap, holders) in acc.items()
    ]  # fmt: skip
    items.sort(key=lambda i: (i.taken, i.path, i.content), reverse=True)
    return tuple(items)


def camera_roll(repo: Repository, view: DeviceView, password: BackupPassword | None = None) -> CameraRoll:
    """Every photo and video in any live snapshot of the device, by content (see the module docstring). The merged
    roll is cached too, keyed by the live snapshots (ids and trees, in order) and the head, so showing it again
    costs one cache read however many versions there are."""
    live = sorted(view.live(), key=lambda s: (s.time, s.seq))
    key = _roll_key(repo, live, view.head)
    sealed = any(backup_meta(s).encrypted for s in live)  # what it shows depends on the password: not cached merged
    if not sealed and (cached := repo.cache.derived_get(key)) is not None:
        try:
            return _unpack_roll(cached, live, view.head)
        except (ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException):
            pass  # a value of another shape: computed again below and replaced
    read: list[tuple[SnapshotRecord, list[SnapshotMedia]]] = []
    encrypted: list[SnapshotRecord] = []
    known: dict[bytes, int | None] = {}  # EXIF dates read so far, by content: each photo is read once
    for snap in live:
        try:
            rows = snapshot_media(repo, snap, known, password)
        except (EncryptedBackup, WrongBackupPassword, EncryptionUnsupported, KeybagDamaged, ManifestUndecryptable):
            encrypted.append(snap)  # not opened: no password, another one, or a keybag that cannot be read
            continue
        read.append((snap, rows))
        known.update((r.content, r.exif_taken) for r in rows if media_kind(r.path) == "photo")
    current_known = view.head is not None and any(s.id == view.head for s, _rows in read)
    roll = CameraRoll(merge(read, view.head), tuple(s for s, _ in read), tuple(encrypted), view.head, current_known)
    if not sealed:
        repo.cache.derived_put(key, _pack_roll(roll))
    return roll


def _roll_key(repo: Repository, live: list[SnapshotRecord], head: bytes | None) -> bytes:
    parts = [head or b"", [[s.id, s.tree] for s in live]]
    return b"photo-roll/%d/" % PHOTOS_CACHE_FORMAT + repo.key.blob_id(msgpack.packb(parts))


def _pack_roll(roll: CameraRoll) -> bytes:
    """Cached value: [[id…] read, [id…] encrypted, current_known, items], an item being [content, path, size,
    mtime, kind, [snapshot index…], in_current, source index, backup path, taken, encrypted]; an index is into
    read + encrypted."""
    ids = [s.id for s in roll.snapshots + roll.encrypted]
    index = {sid: k for k, sid in enumerate(ids)}
    items = [
        [i.content, i.path, i.size, i.mtime, i.kind, [index[s] for s in i.snapshots], i.in_current, index[i.source],
         i.backup_path, i.taken, i.encrypted]
        for i in roll.items
    ]  # fmt: skip
    return msgpack.packb([[s.id for s in roll.snapshots], [s.id for s in roll.encrypted], roll.current_known, items])


def _unpack_roll(packed: bytes, live: list[SnapshotRecord], head: bytes | None) -> CameraRoll:
    order, encrypted, current_known, rows = msgpack.unpackb(packed)
    by_id = {s.id: s for s in live}
    read = tuple(by_id[bytes(i)] for i in order)
    skipped = tuple(by_id[bytes(i)] for i in encrypted)
    ids = [s.id for s in read + skipped]
    items = tuple(
        MediaItem(bytes(c), p, size, mtime, kind, tuple(ids[k] for k in held), in_cur, ids[src], bp, taken, enc)
        for c, p, size, mtime, kind, held, in_cur, src, bp, taken, enc in rows
    )
    return CameraRoll(items, read, skipped, head, current_known)


def read_media(
    repo: Repository, view: DeviceView, item: MediaItem, password: BackupPassword | None = None
) -> Iterator[bytes]:
    """The item's original bytes, chunk by chunk: bit for bit as stored, or for an item the phone encrypted, as
    decrypted with ``password`` (FileUndecryptable at the end if they do not decrypt to the row's size). Raises
    MissingObject if its snapshot no longer holds it (forgotten meanwhile) and CorruptObject if the entry found is
    not the item's content."""
    entry = media_entry(repo, view, item)
    if not item.encrypted:
        return repo.read_file(entry)
    snap = view.get(item.source)
    assert snap is not None  # media_entry found it
    keys = load_catalog(repo, snap, password).keys
    if keys is None:  # the vault holds this snapshot decrypted now (sync/decrypted.py): read as stored
        return repo.read_file(entry)
    file_id = item.backup_path.rsplit("/", 1)[-1]
    return keys.open(keys.key(file_id, item.path), repo.read_file(entry), item.size, item.path)


def media_entry(repo: Repository, view: DeviceView, item: MediaItem) -> FileEntry:
    snap = view.get(item.source)
    if snap is None or snap.forgotten:
        raise MissingObject(f"snapshot {item.source.hex()[:12]}", "forgotten since the camera roll was read")
    entry = lookup(snap.tree, item.backup_path, repo.get_blob)
    if entry is None or entry.is_dir:
        raise MissingObject(item.path, f"not in snapshot {snap.hex[:12]}")
    if content_key(repo, entry) != item.content:
        raise CorruptObject(item.path, "its stored entry is not the content the camera roll listed")
    return entry
