"""Backup folders as hosts held them before iOS 10, written byte by byte from the published layouts (test rig).

`write_ios8_backup(phone, root, day)` makes `root/<udid>/` as iTunes 12 left it after backing up an iPhone 6 on iOS
8.4: Info.plist (XML), Manifest.plist and Status.plist (binary), Manifest.mbdb, and every regular file's bytes flat
in the folder named by its fileID (no `xx/` subfolders). Manifest.mbdb lists files, directories and symlinks in the
phone's (domain, path) order; a file's record carries the SHA-1 of its bytes as digest, inode = the first 32 bits
of its fileID (stable per path, as `manifest.mbfile_fields`), uid = gid = 501, ctime = btime = mtime.

`write_ios3_backup(phone, root, day)` makes it as iTunes 9 left it after backing up an iPhone 3GS on iPhone OS 3.1.3:
Info.plist and Manifest.plist (XML), no Status.plist, and per regular file `<fileID>.mddata` (its bytes) and
`<fileID>.mdinfo` (binary plist {AuthVersion "1.0", IsEncrypted false, Metadata = binary plist {Domain, Path,
Version, Greylist}}). Manifest.plist is {AuthVersion "2.0", AuthSignature = SHA-1 of Data, Data, IsEncrypted false}
with Data a binary plist {Applications, Files: {fileID: {DataHash, Domain, FileLength, ModificationTime}}}; DataHash
is computed as libimobiledevice's idevicebackup checks it (see `datahash`). Directories and symlinks are not
written: these backups carried regular files only.

Both are deterministic (same phone, day → same bytes and mtimes: each data file gets its entry's mtime, metadata
files the backup's time) and replace whatever the folder held before. The encoder of Manifest.mbdb lives here, not
in the product: phonevault never writes one (an export gives back the stored bytes), and an encoder written apart
from `phonevault.sync.mbdb`'s reader lets each check the other.

    encode_mbdb(records) -> bytes          header "mbdb\\x05\\x00" then each record (format: phonevault.sync.mbdb)
    encode_record(record) -> bytes
    ios8_records(phone, day) -> list[MbdbRecord]       what Manifest.mbdb of that day holds
    ios8_plan(phone, day) / ios3_plan(phone, day) -> list[CatalogEntry]   the catalog a reader must find, by fileID
"""

from __future__ import annotations

import hashlib
import os
import plistlib
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phonevault.sync.manifest import FLAG_FILE, CatalogEntry
from phonevault.sync.mbdb import ABSENT, MAGIC, MbdbRecord

from .days import PhoneFile
from .folder import status_plist
from .seeds import BUNDLES, backup_time, derive, plist_date

if TYPE_CHECKING:
    from .phone import SyntheticPhone

#: (ProductType, ProductVersion, BuildVersion) of the phones these folders come from.
IOS8 = ("iPhone7,2", "8.4", "12H143")
IOS3 = ("iPhone2,1", "3.1.3", "7E18")
_MOBILE = 501
_MDINFO_VERSION = "4.0"  # Metadata's Version string; its value in iTunes-made folders is not published

# --------------------------------------------------------------------------------------------------- mbdb encoder


def encode_string(value: bytes | None) -> bytes:
    """u16be length then the bytes; None (absent) is the length 0xFFFF alone."""
    if value is None:
        return b"\xff\xff"
    if len(value) >= ABSENT:
        raise ValueError(f"a Manifest.mbdb string holds at most {ABSENT - 1} bytes, not {len(value)}")
    return len(value).to_bytes(2, "big") + value


def _text(value: str | None) -> bytes | None:
    return None if value is None else value.encode("utf-8")


def encode_record(r: MbdbRecord) -> bytes:
    if len(r.properties) > 0xFF:
        raise ValueError(f"a record holds at most 255 properties, not {len(r.properties)}")
    out = [encode_string(_text(s)) for s in (r.domain, r.path, r.target)]
    out += [encode_string(r.digest), encode_string(r.key)]
    out.append(r.mode.to_bytes(2, "big") + r.inode.to_bytes(8, "big"))
    out += [v.to_bytes(4, "big") for v in (r.uid, r.gid, r.mtime, r.ctime, r.btime)]
    out.append(r.size.to_bytes(8, "big") + bytes([r.protection_class, len(r.properties)]))
    for name, value in r.properties:
        out += [encode_string(name), encode_string(value)]
    return b"".join(out)


def encode_mbdb(records: Iterable[MbdbRecord]) -> bytes:
    return MAGIC + b"".join(encode_record(r) for r in records)


# --------------------------------------------------------------------------------------------------- iOS 8


def _record(f: PhoneFile, digest: bytes | None) -> MbdbRecord:
    e = f.entry
    return MbdbRecord(
        domain=e.domain,
        path=e.relative_path,
        target=e.target,
        digest=digest,
        key=None,
        mode=e.mode,
        inode=int(e.file_id[:8], 16),
        uid=_MOBILE,
        gid=_MOBILE,
        mtime=e.mtime,
        ctime=e.mtime,
        btime=e.mtime,
        size=e.size if e.flags == FLAG_FILE else 0,
        protection_class=e.protection_class or 0,
    )


def _files(phone: SyntheticPhone, day: int) -> list[PhoneFile]:
    if phone.password is not None:
        raise ValueError("legacy folders are generated for phones without a backup password only")
    return phone.files(day)


def _sha1(pieces: Iterator[bytes]) -> bytes:
    h = hashlib.sha1()
    for piece in pieces:
        h.update(piece)
    return h.digest()


def ios8_records(phone: SyntheticPhone, day: int = 0) -> list[MbdbRecord]:
    files = _files(phone, day)
    return [_record(f, _sha1(phone.open(f)) if f.entry.flags == FLAG_FILE else None) for f in files]


def ios8_plan(phone: SyntheticPhone, day: int = 0) -> list[CatalogEntry]:
    return sorted((f.entry for f in _files(phone, day)), key=lambda e: e.file_id)


def _lockdown(phone: SyntheticPhone, profile: tuple[str, str, str]) -> dict[str, Any]:
    product_type, version, build = profile
    return phone.lockdown_values() | {"ProductType": product_type, "ProductVersion": version, "BuildVersion": build}


def _ios8_info_plist(phone: SyntheticPhone, day: int) -> bytes:
    """Info.plist as iTunes 12 wrote it (XML): the device's identity, its apps, and the date of this backup."""
    v = _lockdown(phone, IOS8)
    d = {
        "Applications": {},
        "Build Version": v["BuildVersion"],
        "Device Name": v["DeviceName"],
        "Display Name": v["DeviceName"],
        "GUID": derive(phone.seed, "guid")[:16],
        "ICCID": v["IntegratedCircuitCardIdentity"],
        "IMEI": v["InternationalMobileEquipmentIdentity"],
        "Installed Applications": list(BUNDLES),
        "Last Backup Date": plist_date(backup_time(day)),
        "MEID": v["MobileEquipmentIdentifier"],
        "Phone Number": v["PhoneNumber"],
        "Product Type": v["ProductType"],
        "Product Version": v["ProductVersion"],
        "Serial Number": v["SerialNumber"],
        "Target Identifier": v["UniqueDeviceID"],
        "Target Type": "Device",
        "Unique Identifier": v["UniqueDeviceID"].upper(),
        "iTunes Files": {},
        "iTunes Version": "12.2.1",
    }
    return plistlib.dumps(d, fmt=plistlib.FMT_XML, sort_keys=True)


def _ios8_manifest_plist(phone: SyntheticPhone, day: int) -> bytes:
    v = _lockdown(phone, IOS8)
    keys = ("BuildVersion", "DeviceName", "ProductType", "ProductVersion", "SerialNumber", "UniqueDeviceID")
    d = {
        "BackupKeyBag": phone.keybag(),
        "Version": "9.1",
        "Date": plist_date(backup_time(day)),
        "SystemDomainsVersion": "20.0",
        "WasPasscodeSet": True,
        "IsEncrypted": False,
        "Lockdown": {k: v[k] for k in keys} | {"com.apple.mobile.data_sync": {}},
        "Applications": {
            b: {
                "CFBundleIdentifier": b,
                "CFBundleVersion": f"{derive(b)[0] % 20}.{derive(b)[1] % 10}",
                "Path": "/var/mobile/Containers/Bundle/Application/"
                + str(uuid.UUID(bytes=derive(phone.seed, b)[:16])).upper()
                + "/App.app",
            }
            for b in BUNDLES
        },
    }
    return plistlib.dumps(d, fmt=plistlib.FMT_BINARY, sort_keys=True)


def _ios8_status_plist(phone: SyntheticPhone, day: int) -> bytes:
    return status_plist(phone, day, version="2.4")  # what iOS 8 wrote; everything else as today


def _fresh(dest: Path, keep: set[str]) -> None:
    """Remove what the folder holds beyond `keep` (another day's files, a later iOS's xx/ folders)."""
    dest.mkdir(parents=True, exist_ok=True)
    with os.scandir(dest) as it:
        for entry in it:
            if entry.name in keep and entry.is_file(follow_symlinks=False):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _write(path: Path, pieces: Iterable[bytes], mtime: int) -> bytes:
    """Write the file, set its mtime, return the SHA-1 of its bytes."""
    h = hashlib.sha1()
    with open(path, "wb") as out:
        for piece in pieces:
            h.update(piece)
            out.write(piece)
    os.utime(path, ns=(mtime * 10**9, mtime * 10**9))
    return h.digest()


def _stamp(dest: Path, names: Iterable[str], day: int) -> None:
    ns = backup_time(day) * 10**9
    for name in names:
        os.utime(dest / name, ns=(ns, ns))


def write_ios8_backup(phone: SyntheticPhone, root: Path, day: int = 0) -> Path:
    """Make `root/<udid>/` the folder iTunes 12 held after backing the phone up on `day` as an iOS 8.4 iPhone 6."""
    files = _files(phone, day)
    dest = Path(root) / phone.udid
    metadata = ("Info.plist", "Manifest.plist", "Status.plist", "Manifest.mbdb")
    _fresh(dest, {f.entry.file_id for f in files if f.entry.flags == FLAG_FILE} | set(metadata))
    records = []
    for f in files:
        digest = None
        if f.entry.flags == FLAG_FILE:
            digest = _write(dest / f.entry.file_id, phone.open(f), f.entry.mtime)
        records.append(_record(f, digest))
    for name, data in zip(
        metadata,
        (
            _ios8_info_plist(phone, day),
            _ios8_manifest_plist(phone, day),
            _ios8_status_plist(phone, day),
            encode_mbdb(records),
        ),
        strict=True,
    ):
        (dest / name).write_bytes(data)
    _stamp(dest, metadata, day)
    return dest


# --------------------------------------------------------------------------------------------------- iPhone OS 3


def datahash(content: bytes, path: str, domain: str, version: str | None, greylist: bool = False) -> bytes:
    """Manifest.plist's DataHash of a file as libimobiledevice's idevicebackup verifies it (AuthVersion 1.0):
    SHA-1 of the bytes, then the path, ";", "true"/"false" (Greylist), ";", the domain, ";", the app id ("(null)":
    idevicebackup always passes none), ";", the Metadata Version ("(null)" if none)."""
    h = hashlib.sha1(content)
    for part in (path, ";", "true" if greylist else "false", ";", domain, ";", "(null)", ";", version or "(null)"):
        h.update(part.encode())
    return h.digest()


def ios3_plan(phone: SyntheticPhone, day: int = 0) -> list[CatalogEntry]:
    """Regular files only, without protection classes (iPhone OS 3 had none)."""
    entries = (replace(f.entry, protection_class=None) for f in _files(phone, day) if f.entry.flags == FLAG_FILE)
    return sorted(entries, key=lambda e: e.file_id)


def _ios3_info_plist(phone: SyntheticPhone, day: int) -> bytes:
    v = _lockdown(phone, IOS3)
    d = {
        "Build Version": v["BuildVersion"],
        "Device Name": v["DeviceName"],
        "Display Name": v["DeviceName"],
        "GUID": derive(phone.seed, "guid")[:16].hex().upper(),
        "ICCID": v["IntegratedCircuitCardIdentity"],
        "IMEI": v["InternationalMobileEquipmentIdentity"],
        "Last Backup Date": plist_date(backup_time(day)),
        "Phone Number": v["PhoneNumber"],
        "Product Type": v["ProductType"],
        "Product Version": v["ProductVersion"],
        "Serial Number": v["SerialNumber"],
        "Target Identifier": v["UniqueDeviceID"],
        "Unique Identifier": v["UniqueDeviceID"].upper(),
        "iTunes Files": {},
        "iTunes Version": "9.0.2",
    }
    return plistlib.dumps(d, fmt=plistlib.FMT_XML, sort_keys=True)


def _mdinfo(domain: str, path: str) -> bytes:
    meta = {"Domain": domain, "Greylist": False, "Path": path, "Version": _MDINFO_VERSION}
    outer = {
        "AuthVersion": "1.0",
        "IsEncrypted": False,
        "Metadata": plistlib.dumps(meta, fmt=plistlib.FMT_BINARY, sort_keys=True),
    }
    return plistlib.dumps(outer, fmt=plistlib.FMT_BINARY, sort_keys=True)


def write_ios3_backup(phone: SyntheticPhone, root: Path, day: int = 0) -> Path:
    """Make `root/<udid>/` the folder iTunes 9 held after backing the phone up on `day` as an iPhone OS 3.1.3
    iPhone 3GS."""
    files = [f for f in _files(phone, day) if f.entry.flags == FLAG_FILE]
    dest = Path(root) / phone.udid
    metadata = ("Info.plist", "Manifest.plist")
    keep = {f"{f.entry.file_id}.{ext}" for f in files for ext in ("mddata", "mdinfo")} | set(metadata)
    _fresh(dest, keep)
    listed: dict[str, dict[str, Any]] = {}
    for f in files:
        e = f.entry
        content = b"".join(phone.open(f))  # small phones only: DataHash needs the bytes and the path together
        _write(dest / f"{e.file_id}.mddata", (content,), e.mtime)
        (dest / f"{e.file_id}.mdinfo").write_bytes(_mdinfo(e.domain, e.relative_path))
        os.utime(dest / f"{e.file_id}.mdinfo", ns=(e.mtime * 10**9, e.mtime * 10**9))
        listed[e.file_id] = {
            "DataHash": datahash(content, e.relative_path, e.domain, _MDINFO_VERSION),
            "Domain": e.domain,
            "FileLength": e.size,
            "ModificationTime": plist_date(e.mtime),
        }
    apps = {
        b: {
            "AppInfo": {"CFBundleIdentifier": b, "CFBundleVersion": f"{derive(b)[0] % 20}.{derive(b)[1] % 10}"},
            "Files": sorted(f.entry.file_id for f in files if f.entry.domain == f"AppDomain-{b}"),
        }
        for b in BUNDLES
    }
    data = plistlib.dumps({"Applications": apps, "Files": listed}, fmt=plistlib.FMT_BINARY, sort_keys=True)
    manifest = {
        "AuthSignature": hashlib.sha1(data).digest(),
        "AuthVersion": "2.0",
        "Data": data,
        "IsEncrypted": False,
    }
    (dest / "Info.plist").write_bytes(_ios3_info_plist(phone, day))
    (dest / "Manifest.plist").write_bytes(plistlib.dumps(manifest, fmt=plistlib.FMT_XML, sort_keys=True))
    _stamp(dest, metadata, day)
    return dest
