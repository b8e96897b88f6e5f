"""The sync layer's records inside the store's events: a device's identity and a backup's properties.

The store carries both as opaque bytes (store/records.py): `DeviceSeen.info` is a `DeviceRecord(name, data)` whose
`data` is a `DeviceInfo` (sync/plists.py), and `SnapshotCommitted.meta` is a `BackupMeta`. Both are encoded with the
store's record codec, `[FORMAT, fields in declared order]`; a later format appends fields with defaults. Logs
written before records were typed hold plain maps, which decode by key into the same classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.records import DeviceRecord, decode_record, encode_record

from .plists import DeviceInfo


@dataclass(frozen=True, slots=True)
class BackupMeta:
    """What a snapshot records about the backup it holds (format 2: `layout` appended; format 3: `dated_by`;
    format 4: `decrypted`, `all_decrypted`)."""

    FORMAT: ClassVar[int] = 4

    encrypted: bool = False  # the phone encrypted the backup (IsEncrypted, or a Manifest.db that is no database)
    ios_version: str | None = None
    backup_date: str | None = None  # Status.plist's Date, ISO 8601, as the backup says
    snapshot_state: str | None = None  # Status.plist's SnapshotState ("finished" for a complete backup)
    is_full_backup: bool | None = None  # Status.plist's IsFullBackup
    full: bool | None = None  # a device backup that asked the device for every file
    problems: int = 0  # problems named when it was stored (missing files, bad rows, …)
    # How the folder lists its files and where their bytes are (sync/catalog.py LAYOUTS): "manifest-db" (iOS 10 and
    # later, xx/<fileID>), "mbdb" (iOS 4–9, <fileID> in the root), "mdinfo" (iPhone OS 3, <fileID>.mddata). Records
    # of format 1 predate the older layouts, so they are all "manifest-db".
    layout: str = "manifest-db"
    # What gave the snapshot its date (its `time`; sync/dates.py): "status-plist", "manifest-plist", "info-plist",
    # "newest-mtime", or "stored" (when it was stored: a device backup, dated when the device reports success).
    # Records before format 3 were all dated when they were stored.
    dated_by: str = "stored"
    # Files the phone encrypted that the vault holds as their plaintext plus their key (sync/decrypted.py), counted
    # over the snapshot's tree; `all_decrypted`: Manifest.db and every file with a key are among them, so the
    # snapshot is browsed without the backup password.
    decrypted: int = 0
    all_decrypted: bool = False

    def encode(self) -> bytes:
        return encode_record(self)


def device_record(info: DeviceInfo) -> DeviceRecord:
    return DeviceRecord(info.name or "", encode_record(info))


def device_info(view: DeviceView) -> DeviceInfo:
    """The identity of a device, as its latest DeviceSeen event recorded it."""
    if not view.info.data:
        return DeviceInfo(udid=view.device or "")
    return decode_record(DeviceInfo, view.info.data, f"device record of {view.key}")


def backup_meta(snap: SnapshotRecord) -> BackupMeta:
    return decode_record(BackupMeta, snap.meta, f"snapshot {snap.hex[:12]}")
