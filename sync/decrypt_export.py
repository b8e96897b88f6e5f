"""`export --decrypt`: a snapshot the phone encrypted, written out as the plain MobileSync folder of the same content.

`<root>/<UDID>/` holds what a plain backup of the same phone holds:
  xx/<fileID>     each file decrypted with its own key (sync/encrypted.py), its padding and length checked; mode and
                  mtime as stored
  Manifest.db     the decrypted database rewritten fresh in Apple's schema (sync/manifest.py MANIFEST_DB_SCHEMA), rows
                  in fileID order, as `write_manifest_db` writes one (page size 4096, rollback journal, one
                  transaction: same rows, same bytes), each row's MBFile without its `EncryptionKey` (re-archived by
                  sync/mbfile.py, which writes the shape devices write; an archive it cannot re-encode keeps its
                  shape and only loses that key), the Properties table copied
  Manifest.plist  `IsEncrypted` false, no `BackupKeyBag` and no `ManifestKey` (nothing in the folder is wrapped any
                  more); every other key as the phone wrote it
  anything else   (Info.plist, Status.plist, …) copied bit for bit
The plain `export` (sync/mobilesync.py) stays the bit-exact encrypted folder; this module only reads the vault and
uses its public pieces (the tree reader, the export file writers, the export record).

Assumed, not checked against a device: that a phone restores such a folder as a plain backup. What only an
encrypted backup restores (the keychain's items, which keychain-backup.plist keeps wrapped by the keybag's class
keys inside the file) does not come back from it: the file is decrypted, its items stay wrapped.

Like export, it is built under `.<UDID>.phonevault-partial` and renamed at the end, removed on failure; a file that
cannot be read back or decrypted is named in `damaged` and left out (with `strict`: nothing is left). A plain
snapshot is exported as export does (it is plain already). Memory: the decrypted Manifest.db and SQLite's copy of
it while the new one is written; files as export (small ones whole, large ones a chunk at a time).
"""

from __future__ import annotations

import plistlib
import sqlite3
from pathlib import Path

from phonevault.store.check import readable_tree
from phonevault.store.errors import PhonevaultError
from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.repository import Repository
from phonevault.store.trees import FileEntry

from .catalog import Catalog, domain_path, load_catalog
from .damage import describe
from .encrypted import BackupPassword, decrypt_manifest_db, unlock
from .errors import FileUndecryptable
from .export import ExportResult, Placement, Progress, export_snapshot, into_new_folder
from .manifest import FLAG_FILE, MANIFEST_DB_SCHEMA
from .mbfile import decode_mbfile, encode_mbfile
from .paths import shown
from .records import backup_meta
from .writeout import FileWriters, set_meta, write_pieces

DROPPED_PLIST_KEYS = ("BackupKeyBag", "ManifestKey")


def export_decrypted(
    repo: Repository,
    view: DeviceView,
    snap: SnapshotRecord,
    dest_root: Path,
    password: BackupPassword,
    *,
    progress: Progress | None = None,
    strict: bool = False,
) -> ExportResult:
    """Write `dest_root/<UDID>/` as the plain folder of the snapshot's content (see the module docstring)."""
    if not backup_meta(snap).encrypted:
        return export_snapshot(repo, view, snap, dest_root, progress=progress, strict=strict)
    catalog = load_catalog(repo, snap, password)  # the password is checked before anything is written
    assert catalog.keys is not None
    write = lambda tmp, target: _write_folder(repo, view, snap, catalog, password, tmp, target, progress)  # noqa: E731
    return into_new_folder(repo, view, snap, dest_root, write, strict=strict)


def _write_folder(
    repo: Repository,
    view: DeviceView,
    snap: SnapshotRecord,
    catalog: Catalog,
    password: BackupPassword,
    tmp: Path,
    target: Path,
    progress: Progress | None,
) -> ExportResult:
    assert catalog.keys is not None
    keys = catalog.keys
    rows = {catalog.layout.backup_path(c.file_id): c for c in catalog if c.flags == FLAG_FILE and c.has_encryption_key}
    entries, damaged = readable_tree(repo, view, snap)
    total = sum(e.size for e in entries)
    done = files = 0
    undecryptable: list[str] = []
    place = Placement(tmp, target)
    with FileWriters() as writers:
        for e in entries:
            if (local := place.file(e)) is None:
                continue
            try:
                if e.path == "Manifest.plist":
                    writers.submit(local, e, _plain_manifest_plist(b"".join(repo.read_file(e))))
                elif e.path == catalog.layout.listing:
                    _plain_manifest_db(repo, snap, password, e, local)
                elif (row := rows.get(e.path)) is not None:
                    name = shown(domain_path(row))
                    plain = keys.open(keys.key(row.file_id, name), repo.read_file(e), row.size, name)
                    if row.size <= FileWriters.SMALL:
                        writers.submit(local, e, b"".join(plain))
                    else:
                        write_pieces(plain, local, e)
                elif e.size <= FileWriters.SMALL:  # Info.plist, Status.plist, a file no row keys: as stored
                    writers.submit(local, e, b"".join(repo.read_file(e)))
                else:
                    write_pieces(repo.read_file(e), local, e)
            except FileUndecryptable as exc:
                undecryptable.append(f"{exc}; not exported")
                continue
            except PhonevaultError as exc:  # a chunk that is missing or damaged: this file only
                damaged[e.path] = str(exc)
                continue
            done += e.size
            files += 1
            if progress:
                progress(done, total)
    place.finish()
    lost = describe(repo, snap, damaged, "exported") if damaged else []
    return ExportResult(target, files, done, place.problems, lost + undecryptable)


def _plain_manifest_plist(data: bytes) -> bytes:
    d = plistlib.loads(data)
    d["IsEncrypted"] = False
    for key in DROPPED_PLIST_KEYS:
        d.pop(key, None)
    return plistlib.dumps(d, fmt=plistlib.FMT_BINARY, sort_keys=True)


def _plain_manifest_db(
    repo: Repository, snap: SnapshotRecord, password: BackupPassword, e: FileEntry, local: Path
) -> None:
    """Manifest.db decrypted (in memory) and written fresh at `local` without any row's EncryptionKey."""
    buf = bytearray(e.size)
    at = 0
    for chunk in repo.read_file(e):
        buf[at : at + len(chunk)] = chunk
        at += len(chunk)
    if e.cipher_key:  # stored decrypted (sync/decrypted.py): the plaintext already
        image = buf
    else:
        image = decrypt_manifest_db(unlock(repo, snap, password), buf, f"snapshot {snap.hex[:12]}")
    if image[18:20] == b"\x02\x02":  # WAL header: the file is whole without its -wal (see sync/manifest.py)
        image[18:20] = b"\x01\x01"
    src = sqlite3.connect(":memory:")
    dst = sqlite3.connect(local, isolation_level=None)
    try:
        src.deserialize(bytes(image))
        del image
        tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        dst.execute("PRAGMA page_size = 4096")
        dst.execute("PRAGMA journal_mode = DELETE")
        dst.execute("BEGIN")
        for statement in MANIFEST_DB_SCHEMA:
            dst.execute(statement)
        dst.executemany(
            "INSERT INTO Files (fileID, domain, relativePath, flags, file) VALUES (?, ?, ?, ?, ?)",
            (
                (fid, domain, rel, flags, _without_key(blob))
                for fid, domain, rel, flags, blob in src.execute(
                    "SELECT fileID, domain, relativePath, flags, file FROM Files ORDER BY fileID"
                )
            ),
        )
        if "Properties" in tables:
            dst.executemany(
                "INSERT INTO Properties (key, value) VALUES (?, ?)",
                src.execute("SELECT key, value FROM Properties ORDER BY key"),
            )
        dst.execute("COMMIT")
    finally:
        src.close()
        dst.close()
    set_meta(local, e)


def _without_key(blob: object) -> object:
    """A row's MBFile archive without its EncryptionKey (anything undecodable as it is: the catalog names it)."""
    if not isinstance(blob, bytes):
        return blob
    try:
        fields = decode_mbfile(blob)
    except ValueError:
        return blob
    if "EncryptionKey" not in fields:
        return blob
    del fields["EncryptionKey"]
    try:
        return encode_mbfile(fields)
    except (TypeError, OverflowError):  # a field of a kind devices do not write as MBFile values: edit in place
        archive = plistlib.loads(blob)
        top = archive["$objects"][archive["$top"]["root"].data]
        top.pop("EncryptionKey", None)
        return plistlib.dumps(archive, fmt=plistlib.FMT_BINARY)
