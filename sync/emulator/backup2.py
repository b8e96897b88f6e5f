"""com.apple.mobilebackup2, device side: Hello, then Backup / Restore / Info / List / ChangePassword over DeviceLink.

Room: MobileBackup2. Invariant: a backup leaves the host folder equal to the device folder (every `xx/<fileID>`,
Manifest.db, Manifest.plist, Status.plist byte for byte; Info.plist is the host's) — or, when the phone has a
backup password, equal to it as the phone encrypts it (backupkeys.py: every file, Manifest.db and Manifest.plist)
— or ends with a non-zero ErrorCode / a dropped link; a restore replaces the device folder only after every file
arrived, so a failed restore leaves the phone as it was. The device folder is locked for the whole operation.

Backup follows the device side of docs/protocol.md, 'A backup, end to end': download the host's Status.plist and
Manifest.plist (and Manifest.db unless the plist is empty: pmd3 signals `--full` only by truncating
Manifest.plist, it never sends ForceFullBackup), GetFreeDiskSpace, CreateDirectory Snapshot + Snapshot/xx,
UploadFiles (changed files, then Manifest.db/Manifest.plist), MoveItems per file (moving whole directories
would nest into existing ones under pmd3's `shutil.move`), RemoveItems for files the phone no longer has and
for Snapshot, upload Status.plist (SnapshotState "finished", which idevicebackup2 checks), ProcessMessage 0.
"""

from __future__ import annotations

import logging
import plistlib
import re
import shutil
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phonevault.sync.errors import ManifestInvalid
from phonevault.sync.manifest import FLAG_FILE, CatalogEntry, read_manifest_rows
from phonevault.sync.plists import read_manifest_plist

from . import hostile
from .backupkeys import BackupKeys, RestoreRefused, decrypt_staged, open_encrypted
from .devicelink import Aborted, DeviceLink, HostRefused, Stream, Upload
from .wire import FrameError, Link, PeerClosed

if TYPE_CHECKING:
    from .device import Device

log = logging.getLogger(__name__)

SUPPORTED_PROTOCOL_VERSIONS = (2.0, 2.1)
FILE_ID = re.compile(r"[0-9a-f]{40}")
METADATA = ("Manifest.db", "Manifest.plist")
# A batch is a DL request: big enough to amortise the round trip, small enough for a modest plist.
UPLOAD_BATCH_FILES = 256
UPLOAD_BATCH_BYTES = 64 * 2**20
MOVE_BATCH = 1024
DOWNLOAD_BATCH = 256
# -[MBDriveBackupEngine _prepareFreeSpace] wants 128 MiB beyond the upload, and asks the host to purge the
# deficit + 2 GiB before giving up with MBErrorDomain 105 (pmd3 `DeviceLink.purge_disk_space`).
FREE_SPACE_HEADROOM = 128 * 2**20
PURGE_OVERSHOOT = 2 * 2**30

ERROR_NO_COMMON_VERSION = 1
ERROR_NO_SUCH_FILE = 4
ERROR_UNSUPPORTED = 22
ERROR_UPLOAD_FAILED = 104
ERROR_HOST_DISK_FULL = 105


@dataclass(frozen=True, slots=True)
class Report:
    """What one MobileBackup2 operation did, for tests and logs (counted by the device, not the host)."""

    operation: str
    kind: str = ""  # "full" / "incremental" for backups
    uploaded: tuple[str, ...] = ()  # fileIDs of data files sent
    uploaded_bytes: int = 0  # body bytes of every upload, metadata included
    removed: tuple[str, ...] = ()  # fileIDs the host was told to delete
    received: int = 0  # data files received by a restore
    error_code: int | None = None  # the final ProcessMessage ErrorCode; None if the link dropped first
    error: str = ""


def serve(link: Link, device: Device) -> None:
    """The mobilebackup2 service on one connection: handshake, then operations until Disconnect."""
    fault = device.fault
    dl = DeviceLink(link, upload_budget=fault.disconnect_after_upload_bytes if fault else None)
    try:
        if hostile.mobilebackup2(dl, device):
            return
        dl.version_exchange()
        while True:
            message = dl.receive()
            if message[0] == "DLMessageDisconnect":
                return
            if message[0] != "DLMessageProcessMessage" or len(message) < 2 or not isinstance(message[1], dict):
                raise FrameError("mobilebackup2", f"unexpected {message[0]!r} while idle")
            _dispatch(dl, device, message[1])
    except Aborted as e:
        log.warning("mobilebackup2 %s: %s", link.peer, e)
        device.record(Report("Backup", uploaded_bytes=dl.uploaded_bytes, error=str(e)))
    except (FrameError, OSError, ssl.SSLError) as e:
        if not (isinstance(e, PeerClosed) and e.clean):
            log.warning("mobilebackup2 %s: %s; closing the connection", link.peer, e)


def _dispatch(dl: DeviceLink, device: Device, request: dict[str, Any]) -> None:
    name = request.get("MessageName")
    if name == "Hello":
        offered = request.get("SupportedProtocolVersions") or []
        common = [v for v in SUPPORTED_PROTOCOL_VERSIONS if v in offered]
        if common:
            dl.process_message({"MessageName": "Response", "ErrorCode": 0, "ProtocolVersion": max(common)})
        else:
            dl.process_message({"MessageName": "Response", "ErrorCode": ERROR_NO_COMMON_VERSION})
        return
    if name in ("Backup", "Restore", "Info", "List"):
        fault = device.fault
        if fault is not None and fault.fail_with_code is not None:
            # e.g. 208: the passcode was not entered in time; real devices fail before moving any file.
            dl.finish(fault.fail_with_code, f"emulated failure {fault.fail_with_code}")
            device.record(Report(name, error_code=fault.fail_with_code, error="fault"))
            return
        target = str(request.get("TargetIdentifier") or device.udid)
        source = str(request.get("SourceIdentifier") or target)
        if name in ("Backup", "Restore") and hostile.operation(dl, device, target):
            return
        with device.content.lock:
            scratch = device.scratch_dir()
            try:
                if name == "Backup":
                    report = _backup(dl, device, target, scratch)
                elif name == "Restore":
                    options = request.get("Options")
                    report = _restore(dl, device, source, options if isinstance(options, dict) else {}, scratch)
                elif name == "Info":
                    report = _info(dl, source, scratch)
                else:
                    report = _list(dl, source, scratch)
            except HostRefused as e:
                # A host that cannot create, write or move what it was asked to: MBErrorDomain 104.
                code = e.code if e.code > 0 else ERROR_UPLOAD_FAILED
                log.warning("mobilebackup2: %s", e)
                dl.finish(code, e.reason)
                report = Report(str(name), error_code=code, error=e.reason)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        device.record(report)
        return
    if name == "ChangePassword":
        if hostile.change_password(dl, device):
            return
        fault = device.fault
        with device.content.lock:  # never in the middle of a backup or restore
            if fault is not None and fault.fail_with_code is not None:  # e.g. the passcode prompt was dismissed
                code, description = fault.fail_with_code, f"emulated failure {fault.fail_with_code}"
            else:
                old, new = request.get("OldPassword"), request.get("NewPassword")
                code, description = device.backup_keys.change_password(old, new)
        dl.finish(code, description)
        device.record(Report("ChangePassword", error_code=code, error=description))
        return
    log.info("mobilebackup2: unsupported request %r", name)
    dl.finish(ERROR_UNSUPPORTED, f"{name} is not supported by the emulator")


# --------------------------------------------------------------------------------------------------- backup


def _backup(dl: DeviceLink, device: Device, target: str, scratch: Path) -> Report:
    folder = device.content.folder
    keys = device.backup_keys
    plan = _plan(folder / "Manifest.db", _download_host_manifest(dl, target, scratch, keys))
    # An encrypted phone sends every file, Manifest.db and Manifest.plist encrypted (backupkeys.py); the folder
    # it holds stays plain.
    encrypted = keys.prepare(folder, scratch, full=plan.kind == "full") if keys.encrypts else None
    bodies: dict[str, Stream] = encrypted.bodies if encrypted is not None else {}
    metadata = {m: folder / m for m in METADATA}
    if encrypted is not None:
        metadata = {"Manifest.db": encrypted.manifest_db, "Manifest.plist": encrypted.manifest_plist}
    changed = [fid for fid, _ in plan.changed]
    uploads = [
        Upload(path, f"{target}/Snapshot/{fid[:2]}/{fid}", bodies.get(fid) or folder / fid[:2] / fid)
        for fid, path in plan.changed
    ]
    uploads += [Upload(f"/var/mobile/Library/Backup/{m}", f"{target}/Snapshot/{m}", metadata[m]) for m in METADATA]
    fault = device.fault
    if fault is not None and fault.bad_upload_path is not None:
        uploads.insert(0, Upload("/var/mobile/evil", fault.bad_upload_path, b"not yours"))
    total = sum(_size(u.source) for u in uploads)

    free = dl.free_disk_space()
    if free <= total + FREE_SPACE_HEADROOM:
        deficit = total + FREE_SPACE_HEADROOM - free
        dl.purge_disk_space(deficit + PURGE_OVERSHOOT)
        description = f"Insufficient free disk space on backup computer (need {deficit} more bytes)"
        dl.finish(ERROR_HOST_DISK_FULL, description)
        return Report("Backup", plan.kind, error_code=ERROR_HOST_DISK_FULL, error=description)

    # Neither host creates parents (docs/protocol.md, stream B), and lid renames without creating them either.
    # A full backup lays out all 256 shards as devices do (`Snapshot/00…ff`), an incremental only those it uses.
    dl.create_directory(f"{target}/Snapshot")
    shards = {f"{n:02x}" for n in range(256)} if plan.kind == "full" else {fid[:2] for fid in changed}
    for prefix in sorted(shards):
        dl.create_directory(f"{target}/Snapshot/{prefix}")
        dl.create_directory(f"{target}/{prefix}")

    sent = 0
    for batch in _batches(uploads, UPLOAD_BATCH_FILES, UPLOAD_BATCH_BYTES):
        dl.upload_files(batch, sum(_size(u.source) for u in batch), _percent(sent, total, 0, 90))
        sent += sum(_size(u.source) for u in batch)

    moves = [(f"{target}/Snapshot/{fid[:2]}/{fid}", f"{target}/{fid[:2]}/{fid}") for fid in changed]
    moves += [(f"{target}/Snapshot/{m}", f"{target}/{m}") for m in METADATA]
    for i in range(0, len(moves), MOVE_BATCH):
        dl.move_items(dict(moves[i : i + MOVE_BATCH]), _percent(i, len(moves), 90, 95))
    for i in range(0, len(plan.removed), MOVE_BATCH):
        dl.remove_items([f"{target}/{fid[:2]}/{fid}" for fid in plan.removed[i : i + MOVE_BATCH]], 96.0)
    dl.remove_items([f"{target}/Snapshot"], 98.0)
    status = folder / "Status.plist"
    dl.upload_files(
        [Upload("/var/mobile/Library/Backup/Status.plist", f"{target}/Status.plist", status)], _size(status), 99.0
    )
    dl.finish(0)
    if encrypted is not None:
        keys.sent(encrypted, folder)  # the next backup continues this one: same keys for the files it keeps
    log.info(
        "backup (%s%s): %d files uploaded, %d removed, %d bytes",
        plan.kind,
        ", encrypted" if encrypted is not None else "",
        len(changed),
        len(plan.removed),
        dl.uploaded_bytes,
    )
    return Report("Backup", plan.kind, tuple(changed), dl.uploaded_bytes, tuple(plan.removed), error_code=0)


def _download_host_manifest(dl: DeviceLink, target: str, scratch: Path, keys: BackupKeys) -> Path | None:
    """The plain catalog of the host's previous backup, or None when this must be a full backup.

    Full when Manifest.plist or Manifest.db is missing or empty: pmd3 `backup(full=True)` deletes and re-creates
    an empty Manifest.plist, which is how `--full` reaches the device. Full too when the host's backup is encrypted
    and the phone does not encrypt, or the other way round (the password was set or removed since), and, for an
    encrypted phone, unless the host holds the phone's current keybag and the Manifest.db it last sent
    (`BackupKeys.continues`).
    """
    here = scratch / "host"
    dl.download_files([f"{target}/Status.plist"], lambda p: here / Path(p).name, 0.0)
    dl.download_files([f"{target}/Manifest.plist"], lambda p: here / Path(p).name, 0.0)
    plist = here / "Manifest.plist"
    if not plist.is_file() or plist.stat().st_size == 0:
        return None
    try:
        manifest = read_manifest_plist(plist.read_bytes(), str(plist))
    except ManifestInvalid:
        return None
    if bool(manifest.is_encrypted) != keys.encrypts:
        return None
    dl.download_files([f"{target}/Manifest.db"], lambda p: here / Path(p).name, 0.0)
    db = here / "Manifest.db"
    if not db.is_file() or db.stat().st_size == 0:
        return None
    return keys.continues(manifest.keybag, db) if keys.encrypts else db


@dataclass(frozen=True, slots=True)
class _Plan:
    kind: str  # "full" / "incremental"
    changed: list[tuple[str, str]]  # (fileID, device path) of the files to upload, in fileID order
    removed: list[str]  # fileIDs the host has and the phone no longer does


def _plan(mine: Path, host: Path | None) -> _Plan:
    """What to upload, merging the phone's catalog with the host's in fileID order.

    A file changed when its MBFile differs (size, mtime, inode, ctime… all of it). Both catalogs stream in
    fileID order (`read_manifest_rows`), so memory follows the size of the change, not of the phone. An
    unreadable host Manifest.db makes the backup full.
    """
    if host is not None:
        try:
            return _merge(mine, host)
        except ManifestInvalid as e:
            log.info("host Manifest.db unreadable (%s): full backup", e)
    return _Plan("full", [(entry.file_id, _device_path(entry)) for entry, _ in _data_files(mine)], [])


def _merge(mine: Path, host: Path) -> _Plan:
    changed: list[tuple[str, str]] = []
    removed: list[str] = []
    theirs = _data_files(host)
    other = next(theirs, None)
    for row in _data_files(mine):
        entry = row[0]
        while other is not None and other[0].file_id < entry.file_id:
            removed.append(other[0].file_id)
            other = next(theirs, None)
        if other is not None and other[0].file_id == entry.file_id:
            unchanged = other == row
            other = next(theirs, None)
            if unchanged:
                continue
        changed.append((entry.file_id, _device_path(entry)))
    while other is not None:
        removed.append(other[0].file_id)
        other = next(theirs, None)
    return _Plan("incremental", changed, removed)


def _data_files(manifest_db: Path) -> Iterator[tuple[CatalogEntry, dict[str, Any]]]:
    """Rows with a body in `xx/<fileID>` (directories and symlinks live only in Manifest.db)."""
    return ((entry, mbfile) for entry, mbfile in read_manifest_rows(manifest_db) if entry.flags == FLAG_FILE)


def _device_path(entry: CatalogEntry) -> str:
    """Informational device-side path, shaped like real ones (`/var/mobile/Library/SMS/sms.db`)."""
    domain = entry.domain
    if domain.startswith("AppDomainGroup-"):
        base = f"/var/mobile/Containers/Shared/AppGroup/{domain.removeprefix('AppDomainGroup-')}"
    elif domain.startswith("AppDomain-"):
        base = f"/var/mobile/Containers/Data/Application/{domain.removeprefix('AppDomain-')}"
    elif domain in ("HomeDomain", "MediaDomain", "CameraRollDomain"):
        base = "/var/mobile"
    else:
        base = f"/var/.backup/{domain}"
    return f"{base}/{entry.relative_path}"


def _size(source: Path | bytes | Stream) -> int:
    if isinstance(source, bytes):
        return len(source)
    if isinstance(source, Stream):
        return source.size
    try:
        return source.stat().st_size
    except OSError:
        return 0


def _batches(uploads: list[Upload], max_files: int, max_bytes: int) -> Iterator[list[Upload]]:
    batch: list[Upload] = []
    size = 0
    for upload in uploads:
        if batch and (len(batch) >= max_files or size >= max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(upload)
        size += _size(upload.source)
    if batch:
        yield batch


def _percent(done: int, total: int, low: float, high: float) -> float:
    return low + (high - low) * (done / total if total else 1.0)


# --------------------------------------------------------------------------------------------------- restore


def _restore(dl: DeviceLink, device: Device, source: str, options: dict[str, Any], scratch: Path) -> Report:
    """Download the host's backup of `source` into a staging folder, then make it the phone's content. An encrypted
    backup needs Options.Password: a wrong one ends the restore with 207 before any file moves; its files are
    decrypted in the staging folder (backupkeys.py), so the phone holds them plain as it always does.

    Options (RestoreSystemFiles, RemoveItemsNotRestored, …) are logged, not modelled: the emulated phone
    becomes exactly the restored backup.
    """
    log.info("restore from %s with options %s", source, {k: v for k, v in options.items() if k != "Password"})
    staged = scratch / "restore" / device.udid
    wanted = [f"{source}/{name}" for name in ("Manifest.plist", "Manifest.db", "Status.plist")]
    errors = dl.download_files(wanted, lambda p: staged / Path(p).name, 0.0)
    if errors:
        return _fail(dl, "Restore", ERROR_NO_SUCH_FILE, f"host could not send {', '.join(sorted(errors))}")
    class_keys: dict[int, bytes] | None = None
    try:
        if read_manifest_plist((staged / "Manifest.plist").read_bytes(), source).is_encrypted:
            # The password first, before any file is asked for; Manifest.db is then staged decrypted.
            class_keys = open_encrypted(staged, options.get("Password"))
        fids = [entry.file_id for entry, _ in _data_files(staged / "Manifest.db")]
    except ManifestInvalid as e:
        return _fail(dl, "Restore", ERROR_NO_SUCH_FILE, str(e))
    except RestoreRefused as e:
        return _fail(dl, "Restore", e.code, e.description)
    # fileIDs become local paths in the staging folder: only sha1 names, never "../x" from a hostile catalog.
    bad = [fid for fid in fids if not FILE_ID.fullmatch(fid)]
    if bad:
        return _fail(dl, "Restore", ERROR_NO_SUCH_FILE, f"{len(bad)} malformed fileID(s), first {bad[0]!r}")
    for i in range(0, len(fids), DOWNLOAD_BATCH):
        batch = [f"{source}/{fid[:2]}/{fid}" for fid in fids[i : i + DOWNLOAD_BATCH]]
        errors = dl.download_files(
            batch, lambda p: staged / p.rsplit("/", 2)[-2] / p.rsplit("/", 1)[-1], _percent(i, len(fids), 5, 95)
        )
        if errors:
            missing = sorted(errors)
            return _fail(dl, "Restore", ERROR_NO_SUCH_FILE, f"{len(missing)} file(s) missing, first {missing[0]}")
    if class_keys is not None:
        try:  # the phone holds its files plain (backupkeys.py); they leave it encrypted again on the next backup
            decrypt_staged(staged, class_keys, device.phone.keybag())
        except RestoreRefused as e:
            return _fail(dl, "Restore", e.code, e.description)
    info = device.content.folder / "Info.plist"
    if info.exists():
        # Info.plist describes the phone to the host; a restore does not change which phone this is.
        shutil.copy2(info, staged / "Info.plist")
    device.content.replace(staged)
    dl.finish(0)
    log.info("restore: %d files received", len(fids))
    return Report("Restore", received=len(fids), error_code=0)


def _fail(dl: DeviceLink, operation: str, code: int, description: str) -> Report:
    log.warning("%s failed: %s", operation.lower(), description)
    dl.finish(code, description)
    return Report(operation, error_code=code, error=description)


# --------------------------------------------------------------------------------------------------- info / list


def _info(dl: DeviceLink, source: str, scratch: Path) -> Report:
    """[unverified shape] Content = the host's Info.plist for `source`, minus its bulky data blobs."""
    here = scratch / "info"
    errors = dl.download_files([f"{source}/Info.plist"], lambda p: here / Path(p).name, 0.0)
    if errors:
        return _fail(dl, "Info", ERROR_NO_SUCH_FILE, f"no Info.plist for {source}")
    try:
        info = plistlib.loads((here / "Info.plist").read_bytes())
    except Exception as e:
        return _fail(dl, "Info", ERROR_NO_SUCH_FILE, f"Info.plist unreadable: {e}")
    content = {k: v for k, v in info.items() if not isinstance(v, bytes | dict)} if isinstance(info, dict) else {}
    dl.finish(0, content=content)
    return Report("Info", error_code=0)


def _list(dl: DeviceLink, source: str, scratch: Path) -> Report:
    """[unverified shape] Content = CSV of the host's Manifest.db: domain, path, fileID, flags, size, mtime."""
    here = scratch / "list"
    errors = dl.download_files([f"{source}/Manifest.db"], lambda p: here / Path(p).name, 0.0)
    if errors:
        return _fail(dl, "List", ERROR_NO_SUCH_FILE, f"no Manifest.db for {source}")
    try:
        rows = _csv_rows(entry for entry, _ in read_manifest_rows(here / "Manifest.db"))
    except ManifestInvalid as e:
        return _fail(dl, "List", ERROR_NO_SUCH_FILE, str(e))
    dl.finish(0, content="\n".join(rows) + "\n")
    return Report("List", error_code=0)


def _csv_rows(entries: Iterable[CatalogEntry]) -> list[str]:
    def quote(text: str) -> str:
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text

    rows = ["Domain,RelativePath,FileID,Flags,Size,LastModified"]
    rows += [
        ",".join((quote(e.domain), quote(e.relative_path), e.file_id, str(e.flags), str(e.size), str(e.mtime)))
        for e in entries
    ]
    return rows
