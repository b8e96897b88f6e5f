"""The sync room's one parser and writer of Apple backup metadata.

Keeps: fileID naming, Info.plist / Manifest.plist / Status.plist reading, Info.plist writing (as pymobiledevice3
writes it), and Manifest.db reading/writing with real NSKeyedArchiver ``MBFile`` blobs (format: reference §4).
Everything else in phonevault reads Apple metadata only through this module.

Invariants: reading never writes next to a user's backup (SQLite opened read-only and immutable, so no -wal/-shm
appear), and a Manifest.db given as bytes (one from the vault) is parsed in memory, never written to a file;
writing Manifest.db is deterministic (same entries → same bytes), so a synthetic phone and an export produce
byte-identical folders. Plist booleans are taken only when they are booleans: any other value reads as None and
is named in the reader's `problems`. Memory: Manifest.db rows are streamed, one row at a time; a Manifest.db given
as bytes is held once more by SQLite while it is read (~400 bytes a row).
"""

from __future__ import annotations

import functools
import hashlib
import os
import plistlib
import sqlite3
import struct
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import blake3

from phonevault.sync.errors import ManifestInvalid

FLAG_FILE = 1
FLAG_DIR = 2
FLAG_SYMLINK = 4

S_IFREG = 0o100000
S_IFDIR = 0o040000
S_IFLNK = 0o120000

#: Apple's Manifest.db schema (iOS ≥ 10), statement for statement; indexes are part of it.
MANIFEST_DB_SCHEMA = (
    "CREATE TABLE Files (fileID TEXT PRIMARY KEY, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB)",
    "CREATE INDEX FilesDomainIdx ON Files(domain)",
    "CREATE INDEX FilesRelativePathIdx ON Files(relativePath)",
    "CREATE INDEX FilesFlagsIdx ON Files(flags)",
    "CREATE TABLE Properties (key TEXT PRIMARY KEY, value BLOB)",
)

# The MBFile defaults a real device writes for a user-owned file (mobile = uid/gid 501).
_MOBILE_UID = 501


def file_id(domain: str, relative_path: str) -> str:
    """The name of a file inside a backup folder: sha1("<domain>-<relativePath>"), lowercase hex."""
    return hashlib.sha1(f"{domain}-{relative_path}".encode()).hexdigest()


# --------------------------------------------------------------------------------------------------- plists


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
    d = _load_plist_dict(data, where, "Info.plist")
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
        """The BackupKeyBag TLV blob (reference §5), if present."""
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
    date = d.get("Date")
    problems: list[str] = []
    return ManifestPlist(
        is_encrypted=_flag(d, "IsEncrypted", False, where, problems),
        version=_str(d.get("Version")),
        date=date if isinstance(date, datetime) else None,
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
    date = d.get("Date")
    problems: list[str] = []
    return StatusPlist(
        snapshot_state=_str(d.get("SnapshotState")),
        is_full_backup=_flag(d, "IsFullBackup", None, where, problems),
        date=date if isinstance(date, datetime) else None,
        uuid=_str(d.get("UUID")),
        version=_str(d.get("Version")),
        backup_state=_str(d.get("BackupState")),
        problems=tuple(problems),
    )


# --------------------------------------------------------------------------------------------------- MBFile


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One row of Manifest.db: where a file lives on the phone and what its MBFile says about it."""

    file_id: str
    domain: str
    relative_path: str
    flags: int
    size: int
    mode: int
    mtime: int
    target: str | None = None
    protection_class: int | None = None
    has_encryption_key: bool = False


def encode_mbfile(mbfile: Mapping[str, Any]) -> bytes:
    """NSKeyedArchiver binary plist of an ``MBFile`` whose fields are ``mbfile``.

    str values become archived strings (RelativePath, Target), bytes become ``NSMutableData`` (EncryptionKey),
    ints stay inline — the shape devices write. Deterministic: same fields → same bytes.
    Archives of one shape (same keys, same value widths) differ only in their values' bytes, so each shape is
    serialised once and values are spliced in: a 300 000-file Manifest.db is 300 000 archives.
    """
    fields = [(k, int(v) if type(v) is bool else v) for k in sorted(mbfile) if (v := mbfile[k]) is not None]
    bodies = [_value_body(k, v) for k, v in fields]
    template = _mbfile_template(tuple((k, type(v), len(b)) for (k, v), b in zip(fields, bodies, strict=True)))
    out = bytearray(template[0])
    for offset, body in zip(template[1], bodies, strict=True):
        out[offset : offset + len(body)] = body
    return bytes(out)


def _value_body(key: str, value: Any) -> bytes:
    if type(value) is int:
        return _bplist_int(value)
    if type(value) is str:
        try:
            raw = value.encode("ascii")
            return _bplist_marker(0x50, len(raw)) + raw
        except UnicodeEncodeError:
            raw = value.encode("utf-16-be")
            return _bplist_marker(0x60, len(raw) // 2) + raw
    if isinstance(value, bytes | bytearray):
        return _bplist_marker(0x40, len(value)) + bytes(value)
    raise TypeError(f"MBFile field {key!r}: cannot archive {type(value).__name__}")


@functools.lru_cache(maxsize=4096)
def _mbfile_template(shape: tuple[tuple[str, type, int], ...]) -> tuple[bytes, tuple[int, ...]]:
    """(archive bytes, offset of each value's body) for archives of ``shape``."""
    fields = [(key, _Placeholder(kind, length)) for key, kind, length in shape]
    where: dict[int, int] = {}
    data = _archive_mbfile(fields, where)
    offsets = tuple(where[id(p)] for _, p in fields)
    return data, offsets


class _Placeholder:
    """Stands in for a value whose body is ``length`` bytes while a template is built."""

    __slots__ = ("kind", "length")

    def __init__(self, kind: type, length: int) -> None:
        self.kind = kind
        self.length = length


def _archive_mbfile(fields: list[tuple[str, Any]], where: dict[int, int]) -> bytes:
    objects: list[Any] = ["$null", None]
    top: dict[str, Any] = {}
    data_class: plistlib.UID | None = None
    for key, value in fields:
        kind = value.kind if type(value) is _Placeholder else type(value)
        if kind is str:
            top[key] = plistlib.UID(len(objects))
            objects.append(value)
        elif kind is int:
            top[key] = value
        else:
            if data_class is None:
                data_class = plistlib.UID(len(objects))
                objects.append({"$classname": "NSMutableData", "$classes": ["NSMutableData", "NSData", "NSObject"]})
            top[key] = plistlib.UID(len(objects))
            objects.append({"NS.data": value, "$class": data_class})
    top["$class"] = plistlib.UID(len(objects))
    objects.append({"$classname": "MBFile", "$classes": ["MBFile", "NSObject"]})
    objects[1] = top
    archive = {
        "$archiver": "NSKeyedArchiver",
        "$objects": objects,
        "$top": {"root": plistlib.UID(1)},
        "$version": 100000,
    }
    return _bplist(archive, where)


def _bplist(root: Any, where: dict[int, int] | None = None) -> bytes:
    """A binary plist (bplist00) of ``root``: plistlib's output is as valid but ~6x slower, and a 300 000-file
    Manifest.db is 300 000 archives. Handles what archives hold: dict (str keys, in given order), list, str,
    bytes, bool, int (< 2**63), UID; equal strings and ints are stored once, as plistlib does.
    Template placeholders become zero bodies of their length, and ``where`` gets their offsets.
    """
    placeholders: dict[int, int] = {}  # body index → id(placeholder)
    bodies: list[bytes | tuple[int, list[int]]] = []
    seen: dict[tuple[type, Any], int] = {}

    def add(value: Any) -> int:
        kind = type(value)
        if kind is str or kind is int or kind is bool:
            ref = seen.get((kind, value))
            if ref is not None:
                return ref
        ref = len(bodies)
        if kind is dict:
            bodies.append(b"")
            keys = [add(k) for k in value]
            vals = [add(v) for v in value.values()]
            bodies[ref] = (0xD0, keys + vals)
            return ref
        if kind is list:
            bodies.append(b"")
            bodies[ref] = (0xA0, [add(v) for v in value])
            return ref
        if kind is bool:
            body = b"\x09" if value else b"\x08"
        elif kind is int:
            body = _bplist_int(value)
        elif kind is str:
            try:
                raw = value.encode("ascii")
                body = _bplist_marker(0x50, len(raw)) + raw
            except UnicodeEncodeError:
                raw = value.encode("utf-16-be")
                body = _bplist_marker(0x60, len(raw) // 2) + raw
        elif kind is bytes:
            body = _bplist_marker(0x40, len(value)) + value
        elif kind is _Placeholder:
            placeholders[ref] = id(value)
            body = bytes(value.length)
        elif kind is plistlib.UID:
            n = value.data
            width = 1 if n < 1 << 8 else 2 if n < 1 << 16 else 4
            body = bytes([0x80 | (width - 1)]) + n.to_bytes(width, "big")
        else:
            raise TypeError(f"cannot write {kind.__name__} to a binary plist")
        bodies.append(body)
        if kind is str or kind is int or kind is bool:
            seen[(kind, value)] = ref
        return ref

    add(root)
    ref_size = 1 if len(bodies) < 1 << 8 else 2 if len(bodies) < 1 << 16 else 4
    out = bytearray(b"bplist00")
    offsets = []
    for index, body in enumerate(bodies):
        offsets.append(len(out))
        if where is not None and index in placeholders:
            where[placeholders[index]] = len(out)
        if isinstance(body, tuple):
            marker, refs = body
            out += _bplist_marker(marker, len(refs) // 2 if marker == 0xD0 else len(refs))
            out += b"".join(r.to_bytes(ref_size, "big") for r in refs)
        else:
            out += body
    table_at = len(out)
    off_size = 1 if table_at < 1 << 8 else 2 if table_at < 1 << 16 else 4 if table_at < 1 << 32 else 8
    out += b"".join(o.to_bytes(off_size, "big") for o in offsets)
    out += bytes(6) + bytes([off_size, ref_size]) + struct.pack(">QQQ", len(bodies), 0, table_at)
    return bytes(out)


def _bplist_int(value: int) -> bytes:
    if value < 0:
        return b"\x13" + value.to_bytes(8, "big", signed=True)
    if value < 1 << 8:
        return b"\x10" + value.to_bytes(1, "big")
    if value < 1 << 16:
        return b"\x11" + value.to_bytes(2, "big")
    if value < 1 << 32:
        return b"\x12" + value.to_bytes(4, "big")
    if value < 1 << 63:
        return b"\x13" + value.to_bytes(8, "big")
    raise OverflowError(f"{value} does not fit an MBFile integer")


def _bplist_marker(marker: int, count: int) -> bytes:
    if count < 15:
        return bytes([marker | count])
    return bytes([marker | 0xF]) + _bplist_int(count)


def decode_mbfile(blob: bytes) -> dict[str, Any]:
    """The fields of an archived ``MBFile`` with every UID resolved (strings, NSData → bytes, NSDictionary → dict).

    Raises ValueError naming what is wrong; callers turn it into ManifestInvalid with the fileID.
    """
    try:
        archive = plistlib.loads(blob)
    except Exception as exc:
        raise ValueError(f"not a binary plist ({type(exc).__name__})") from None
    if not isinstance(archive, dict) or archive.get("$archiver") != "NSKeyedArchiver":
        raise ValueError("not an NSKeyedArchiver archive")
    objects = archive.get("$objects")
    root = (archive.get("$top") or {}).get("root")
    if not isinstance(objects, list) or not isinstance(root, plistlib.UID):
        raise ValueError("archive has no $objects or $top.root")

    def resolve(value: Any, depth: int) -> Any:
        if depth > 16:  # a cyclic or absurdly nested archive; MBFiles are two levels deep
            raise ValueError("archive nests too deeply")
        if isinstance(value, plistlib.UID):
            if not 0 <= value.data < len(objects):
                raise ValueError(f"UID {value.data} outside $objects")
            value = objects[value.data]
            if value == "$null":
                return None
        if isinstance(value, dict):
            if "NS.data" in value:
                return value["NS.data"]
            if "NS.string" in value:
                return value["NS.string"]
            if "NS.keys" in value and "NS.objects" in value:
                return {
                    resolve(k, depth + 1): resolve(v, depth + 1)
                    for k, v in zip(value["NS.keys"], value["NS.objects"], strict=False)
                }
            if "NS.objects" in value:
                return [resolve(v, depth + 1) for v in value["NS.objects"]]
            return {k: resolve(v, depth + 1) for k, v in value.items() if k != "$class"}
        if isinstance(value, list):
            return [resolve(v, depth + 1) for v in value]
        return value

    top = objects[root.data] if 0 <= root.data < len(objects) else None
    if not isinstance(top, dict):
        raise ValueError("$top.root is not an object")
    class_ref = top.get("$class")
    if isinstance(class_ref, plistlib.UID) and 0 <= class_ref.data < len(objects):
        classname = (objects[class_ref.data] or {}).get("$classname")
        if classname != "MBFile":
            raise ValueError(f"root object is a {classname!r}, not an MBFile")
    return resolve(top, 0)


def mbfile_fields(entry: CatalogEntry, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The MBFile a device would write for ``entry``; ``extra`` adds or overrides fields (EncryptionKey, Birth, …)."""
    inode = int(entry.file_id[:8], 16)  # stable per path, like a real inode for an unchanged file
    fields_: dict[str, Any] = {
        "RelativePath": entry.relative_path,
        "Size": entry.size if entry.flags == FLAG_FILE else 0,
        "Mode": entry.mode,
        "UserID": _MOBILE_UID,
        "GroupID": _MOBILE_UID,
        "InodeNumber": inode,
        "LastModified": entry.mtime,
        "LastStatusChange": entry.mtime,
        "Birth": entry.mtime,
        "Flags": 0,
        "ProtectionClass": entry.protection_class,
        "Target": entry.target,
    }
    if extra:
        fields_.update(extra)
    if entry.has_encryption_key and not isinstance(fields_.get("EncryptionKey"), bytes):
        raise ValueError(f"{entry.file_id}: has_encryption_key is set but no EncryptionKey bytes were given")
    if not entry.has_encryption_key:
        fields_.pop("EncryptionKey", None)
    return fields_


def entry_from_row(fid: str, domain: str, relative_path: str, flags: int, mbfile: Mapping[str, Any]) -> CatalogEntry:
    def as_int(name: str, default: int | None = 0) -> int | None:
        value = mbfile.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"MBFile {name} is {type(value).__name__}, not a number")
        return int(value)

    target = mbfile.get("Target")
    return CatalogEntry(
        file_id=fid,
        domain=domain,
        relative_path=relative_path,
        flags=int(flags),
        size=as_int("Size") or 0,
        mode=as_int("Mode") or 0,
        mtime=as_int("LastModified") or 0,
        target=target if isinstance(target, str) else None,
        protection_class=as_int("ProtectionClass", None),
        has_encryption_key=isinstance(mbfile.get("EncryptionKey"), bytes),
    )


# --------------------------------------------------------------------------------------------------- Manifest.db


#: What `check_manifest_db`, `read_manifest_rows` and `read_manifest_db` read: a file (opened read-only and
#: immutable), or the bytes of one (a database image, parsed in memory: nothing is written anywhere). A bytearray
#: is consumed: emptied as soon as SQLite holds its own copy, so a large image is held twice only for that moment.
ManifestSource = Path | str | bytes | bytearray


@dataclass(frozen=True, slots=True)
class RowProblem:
    """A Files row that cannot be used. `domain`/`relative_path` are None where the row does not hold text."""

    file_id: str
    domain: str | None
    relative_path: str | None
    reason: str


def _open_readonly(path: Path) -> sqlite3.Connection:
    # immutable=1: SQLite neither locks nor creates -wal/-shm beside the user's backup.
    uri = Path(path).absolute().as_uri() + "?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True)


def _open_image(data: bytes | bytearray) -> sqlite3.Connection:
    """An in-memory database from a Manifest.db's bytes (sqlite3 `deserialize`: no file, no temp file).

    SQLite copies the image, so a caller's buffer is needed only for this call. A WAL-mode header (file format
    bytes 18–19 = 2) cannot be opened from memory; a Manifest.db as stored is complete without its -wal, so the
    header is switched to rollback mode (1) in the copy handed to SQLite, exactly what opening the file does."""
    if len(data) < 100:
        raise sqlite3.DatabaseError("shorter than an SQLite header")
    if data[18:20] == b"\x02\x02":
        data = bytearray(data) if isinstance(data, bytes) else data
        data[18:20] = b"\x01\x01"
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(data)
        conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    if isinstance(data, bytearray):
        data.clear()  # SQLite has its copy; the rows are read with the image in memory once
    return conn


def _where(source: ManifestSource, where: str | None) -> str:
    return where or (str(source) if isinstance(source, Path | str) else "Manifest.db")


def _open_checked(source: ManifestSource, where: str) -> sqlite3.Connection:
    """Open a Manifest.db read-only, refusing what is not one (named in ManifestInvalid)."""
    if isinstance(source, Path | str) and not Path(source).is_file():
        raise ManifestInvalid(where, "Manifest.db does not exist or is not a file")
    try:
        conn = _open_image(source) if isinstance(source, bytes | bytearray) else _open_readonly(Path(source))
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise ManifestInvalid(
            where, f"not an SQLite database ({exc}); an encrypted backup needs its password"
        ) from None
    if "Files" not in tables:
        conn.close()
        raise ManifestInvalid(where, "Manifest.db has no Files table")
    columns = {r[1] for r in conn.execute("PRAGMA table_info(Files)")}
    missing = {"fileID", "domain", "relativePath", "flags", "file"} - columns
    if missing:
        conn.close()
        raise ManifestInvalid(where, f"Files table lacks column(s) {', '.join(sorted(missing))}")
    return conn


def check_manifest_db(source: ManifestSource, where: str | None = None) -> None:
    """Raise ManifestInvalid unless `source` opens as a Manifest.db with a usable Files table."""
    _open_checked(source, _where(source, where)).close()


def read_manifest_rows(source: ManifestSource, where: str | None = None) -> Iterator[tuple[CatalogEntry, dict]]:
    """Every Files row as (entry, decoded MBFile fields), in fileID order; an undecodable row raises ManifestInvalid.
    Checks the database before returning."""
    where = _where(source, where)
    conn = _open_checked(source, where)

    def rows() -> Iterator[tuple[CatalogEntry, dict[str, Any]]]:
        for row in _raw_rows(conn, where):
            try:
                yield _decode(*row)
            except ValueError as exc:
                raise ManifestInvalid(where, f"row fileID={row[0]!r}: undecodable MBFile: {exc}") from None

    return rows()


def _raw_rows(conn: sqlite3.Connection, where: str) -> Iterator[tuple]:
    try:
        cursor = conn.execute("SELECT fileID, domain, relativePath, flags, file FROM Files ORDER BY fileID")
        while True:
            try:
                row = cursor.fetchone()
            except sqlite3.DatabaseError as exc:
                raise ManifestInvalid(where, f"Files table unreadable: {exc}") from None
            if row is None:
                return
            yield row
    finally:
        conn.close()


def _decode(fid: Any, domain: Any, relative_path: Any, flags: Any, blob: Any) -> tuple[CatalogEntry, dict[str, Any]]:
    """One Files row; ValueError names what is wrong with it."""
    if not isinstance(fid, str) or not isinstance(domain, str) or not isinstance(flags, int):
        raise ValueError("fileID/domain/flags have the wrong type")
    if not isinstance(blob, bytes):
        raise ValueError("file column is not a blob")
    mbfile = decode_mbfile(blob)
    rel = relative_path if isinstance(relative_path, str) else mbfile.get("RelativePath", "")
    if not isinstance(rel, str):
        raise ValueError("no relativePath and no RelativePath in the MBFile")
    return entry_from_row(fid, domain, rel, flags, mbfile), mbfile


def read_manifest_db(
    source: ManifestSource,
    memo: MutableMapping[bytes, list] | None = None,
    problems: list[RowProblem] | None = None,
    where: str | None = None,
) -> Iterator[CatalogEntry]:
    """Every file, directory and symlink a Manifest.db lists, in fileID order (streamed).

    An undecodable row raises ManifestInvalid naming its fileID, unless `problems` is given: then the row is
    appended there and skipped, so one bad row never hides the others.

    `memo` maps a row's MBFile archive (by BLAKE3) to its decoded fields. Decoding costs ~120 µs a row in
    pure Python, and from one backup to the next almost every row's archive is the same bytes, so a memo kept from
    the previous Manifest.db of a device turns a 300 000-row parse from ~40 s into a hash and a lookup per row.
    The memo is filled with every row read."""
    where = _where(source, where)
    conn = _open_checked(source, where)

    def entries() -> Iterator[CatalogEntry]:
        for fid, domain, relative_path, flags, blob in _raw_rows(conn, where):
            key = blake3.blake3(blob).digest()[:16] if memo is not None and isinstance(blob, bytes) else b""
            hit = memo.get(key) if key else None
            if hit is not None and isinstance(fid, str) and isinstance(domain, str) and isinstance(flags, int):
                size, mode, mtime, target, pclass, has_key, rel_fallback = hit
                rel = relative_path if isinstance(relative_path, str) else rel_fallback
                yield CatalogEntry(fid, domain, rel, flags, size, mode, mtime, target, pclass, has_key)
                continue
            try:
                entry, mbfile = _decode(fid, domain, relative_path, flags, blob)
            except ValueError as exc:
                if problems is None:
                    raise ManifestInvalid(where, f"row fileID={fid!r}: undecodable MBFile: {exc}") from None
                problems.append(
                    RowProblem(
                        str(fid),
                        domain if isinstance(domain, str) else None,
                        relative_path if isinstance(relative_path, str) else None,
                        f"undecodable MBFile: {exc}",
                    )
                )
                continue
            if key:
                rel_fallback = mbfile.get("RelativePath", "") if isinstance(mbfile.get("RelativePath"), str) else ""
                memo[key] = [entry.size, entry.mode, entry.mtime, entry.target, entry.protection_class,
                             entry.has_encryption_key, rel_fallback]  # fmt: skip
            yield entry

    return entries()


def write_manifest_db(
    path: Path,
    entries: Iterable[CatalogEntry],
    extra_mbfile_fields: Mapping[str, Mapping[str, Any]] | None = None,
    properties: Mapping[str, bytes] | None = None,
) -> None:
    """Write ``path`` as a Manifest.db in Apple's schema, atomically (temp file + rename) and deterministically.

    ``extra_mbfile_fields`` maps fileID → MBFile fields to add/override (``EncryptionKey`` bytes for encrypted
    backups, ``Birth``, ``InodeNumber``…). Rows go in fileID order in one transaction on a fresh file with a fixed
    page size and a rollback journal, so the same entries always give the same bytes.
    """
    path = Path(path)
    extra = extra_mbfile_fields or {}
    rows = sorted(entries, key=lambda e: e.file_id)
    tmp = path.with_name(path.name + ".tmp")
    for stale in (tmp, tmp.with_name(tmp.name + "-journal")):
        stale.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("BEGIN")
        for statement in MANIFEST_DB_SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO Files (fileID, domain, relativePath, flags, file) VALUES (?, ?, ?, ?, ?)",
            (
                (e.file_id, e.domain, e.relative_path, e.flags, encode_mbfile(mbfile_fields(e, extra.get(e.file_id))))
                for e in rows
            ),
        )
        conn.executemany("INSERT INTO Properties (key, value) VALUES (?, ?)", sorted((properties or {}).items()))
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise
    conn.close()
    os.replace(tmp, path)
