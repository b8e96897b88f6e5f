"""Apple's backup plists: Info.plist (who the backup belongs to; read, and written as pymobiledevice3 writes it),
Manifest.plist (is the backup encrypted, its keybag) and Status.plist (did the last backup finish); the three dates
that say when the backup was made (Status.plist's and Manifest.plist's Date, Info.plist's Last Backup Date; which one
dates a snapshot: sync/dates.py).

Each reader takes the plist's bytes (XML or binary) and a `where` naming it in errors; a plist that does not parse,
or whose root is not a dict, raises ManifestInvalid. Missing fields read as None. Booleans are taken only when they
are booleans, and dates only when they are dates: any other value (the string "yes", 0, a date where a boolean
belongs, a string where a date does) reads as None and is named in the record's `problems`, never guessed at. Writing is deterministic except for Info.plist's GUID, which pymobiledevice3 draws at random
(pass one to fix it). Memory: one plist, decoded whole (they are kilobytes).
"""

from __future__ import annotations

import os
import plistlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar

from phonevault.sync.errors import ManifestInvalid


def _load_plist_dict(data: bytes, where: str, what: str) -> dict[str, Any]:
    try:
        value = plistlib.loads(data)
    except Exception as exc:  # plistlib raises InvalidFileException, ExpatError, ValueError, … on damage
        raise ManifestInvalid(where, f"{what} is not a plist ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise ManifestInvalid(where, f"{what} is a plist {type(value).__name__}, not a dict")
    return value


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, bytes | dict | list):
        return None
    return str(value)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Who a backup belongs to. ``udid`` is "" only when a damaged Info.plist names no device at all."""

    FORMAT: ClassVar[int] = 1  # encoded by phonevault.store.records: [FORMAT, udid, name, …] in this order

    udid: str
    name: str | None = None
    product_type: str | None = None
    ios_version: str | None = None
    build: str | None = None
    serial: str | None = None
    imei: str | None = None
    meid: str | None = None
    phone_number: str | None = None
    iccid: str | None = None

    def to_dict(self) -> dict[str, str]:
        """A plain dict of the fields that are known (None fields are left out)."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DeviceInfo:
        known = {f.name for f in fields(cls)}
        kwargs = {k: _str(v) for k, v in values.items() if k in known}
        kwargs["udid"] = kwargs.get("udid") or ""
        return cls(**kwargs)


def read_info_plist(data: bytes, where: str) -> DeviceInfo:
    """Device identity from an Info.plist (XML or binary). Missing fields become None; only a non-dict is refused."""
    return _device_info(_load_plist_dict(data, where, "Info.plist"))


@dataclass(frozen=True, slots=True)
class InfoPlist:
    device: DeviceInfo
    last_backup_date: datetime | None  # iTunes and libimobiledevice write it; pymobiledevice3 does not
    problems: tuple[str, ...] = ()


def read_info_plist_dated(data: bytes, where: str) -> InfoPlist:
    """An Info.plist's device identity and its Last Backup Date, from one parse (it can hold megabytes of apps)."""
    d = _load_plist_dict(data, where, "Info.plist")
    problems: list[str] = []
    return InfoPlist(_device_info(d), _date(d, "Last Backup Date", where, problems), tuple(problems))


def _device_info(d: dict[str, Any]) -> DeviceInfo:
    # "Target Identifier" keeps the device's own spelling; "Unique Identifier" is upper-cased by hosts.
    udid = _str(d.get("Target Identifier")) or _str(d.get("Unique Identifier")) or ""
    return DeviceInfo(
        udid=udid,
        name=_str(d.get("Device Name")) or _str(d.get("Display Name")),
        product_type=_str(d.get("Product Type")),
        ios_version=_str(d.get("Product Version")),
        build=_str(d.get("Build Version")),
        serial=_str(d.get("Serial Number")),
        imei=_str(d.get("IMEI")),
        meid=_str(d.get("MEID")),
        phone_number=_str(d.get("Phone Number")),
        iccid=_str(d.get("ICCID")),
    )


def info_plist_bytes(
    lockdown_values: Mapping[str, Any],
    *,
    guid: bytes | None = None,
    installed_applications: Iterable[str] = (),
    applications: Mapping[str, Any] | None = None,
    itunes_files: Mapping[str, bytes] | None = None,
    last_backup_date: datetime | None = None,
) -> bytes:
    """An Info.plist exactly as pymobiledevice3 11.45 writes it (``init_mobile_backup_factory_info``, XML).

    ``lockdown_values`` is lockdownd's root dict. pmd3 draws a random GUID per backup; pass one to stay deterministic.
    ``last_backup_date`` is what libimobiledevice adds; pmd3 leaves it out.
    """
    root = lockdown_values
    min_itunes = (root.get("com.apple.mobile.iTunes") or {}).get("MinITunesVersion") or "10.0.1"
    info: dict[str, Any] = {
        "iTunes Version": min_itunes,
        "iTunes Files": dict(itunes_files or {}),
        "Unique Identifier": root["UniqueDeviceID"].upper(),
        "Target Type": "Device",
        "Target Identifier": root["UniqueDeviceID"],
        "Serial Number": root["SerialNumber"],
        "Product Version": root["ProductVersion"],
        "Product Type": root["ProductType"],
        "Installed Applications": list(installed_applications),
        "GUID": guid if guid is not None else os.urandom(16),
        "Display Name": root["DeviceName"],
        "Device Name": root["DeviceName"],
        "Build Version": root["BuildVersion"],
        "Applications": dict(applications or {}),
    }
    for lockdown_key, info_key in (
        ("IntegratedCircuitCardIdentity", "ICCID"),
        ("InternationalMobileEquipmentIdentity", "IMEI"),
        ("MobileEquipmentIdentifier", "MEID"),
        ("PhoneNumber", "Phone Number"),
    ):
        if lockdown_key in root:
            info[info_key] = root[lockdown_key]
    if root.get("com.apple.iTunes"):
        info["iTunes Settings"] = root["com.apple.iTunes"]
    if last_backup_date is not None:
        info["Last Backup Date"] = last_backup_date
    return plistlib.dumps(info, fmt=plistlib.FMT_XML, sort_keys=True)


def _flag(d: Mapping[str, Any], key: str, absent: bool | None, where: str, problems: list[str]) -> bool | None:
    """A plist boolean. Anything else (the string "yes", 0, a date) is never guessed at: it reads as None (unknown)
    and is named in `problems`, so the caller decides what an unknown value means."""
    if key not in d:
        return absent
    value = d[key]
    if isinstance(value, bool):
        return value
    problems.append(f"{where}: {key} is {value!r} ({type(value).__name__}), not a boolean; taken as unknown")
    return None


def _date(d: Mapping[str, Any], key: str, where: str, problems: list[str]) -> datetime | None:
    """A plist date (naive, UTC, as plistlib reads it). Anything else reads as None and is named in `problems`."""
    value = d.get(key)
    if value is None or isinstance(value, datetime):
        return value
    problems.append(f"{where}: {key} is {value!r:.40} ({type(value).__name__}), not a date; taken as unknown")
    return None


@dataclass(frozen=True, slots=True)
class ManifestPlist:
    is_encrypted: bool | None  # None: IsEncrypted holds something other than a boolean (named in `problems`)
    version: str | None
    date: datetime | None
    product_version: str | None
    raw: dict[str, Any] = field(repr=False)
    problems: tuple[str, ...] = ()

    @property
    def keybag(self) -> bytes | None:
        """The BackupKeyBag blob (TLV records: 4-byte tag, u32be length, value), if present."""
        value = self.raw.get("BackupKeyBag")
        return value if isinstance(value, bytes) else None

    @property
    def manifest_key(self) -> bytes | None:
        """u32le protection class + 40-byte wrapped key of an encrypted Manifest.db, if present."""
        value = self.raw.get("ManifestKey")
        return value if isinstance(value, bytes) else None


def read_manifest_plist(data: bytes, where: str) -> ManifestPlist:
    d = _load_plist_dict(data, where, "Manifest.plist")
    lockdown = d.get("Lockdown") if isinstance(d.get("Lockdown"), dict) else {}
    problems: list[str] = []
    return ManifestPlist(
        is_encrypted=_flag(d, "IsEncrypted", False, where, problems),
        version=_str(d.get("Version")),
        date=_date(d, "Date", where, problems),
        product_version=_str(lockdown.get("ProductVersion")),
        raw=d,
        problems=tuple(problems),
    )


@dataclass(frozen=True, slots=True)
class StatusPlist:
    snapshot_state: str | None
    is_full_backup: bool | None
    date: datetime | None
    uuid: str | None
    version: str | None
    backup_state: str | None = None
    problems: tuple[str, ...] = ()  # fields of the wrong type, each read as unknown

    @property
    def finished(self) -> bool:
        """idevicebackup2 refuses to restore unless the last snapshot finished."""
        return self.snapshot_state == "finished"


def read_status_plist(data: bytes, where: str) -> StatusPlist:
    d = _load_plist_dict(data, where, "Status.plist")
    problems: list[str] = []
    return StatusPlist(
        snapshot_state=_str(d.get("SnapshotState")),
        is_full_backup=_flag(d, "IsFullBackup", None, where, problems),
        date=_date(d, "Date", where, problems),
        uuid=_str(d.get("UUID")),
        version=_str(d.get("Version")),
        backup_state=_str(d.get("BackupState")),
        problems=tuple(problems),
    )
