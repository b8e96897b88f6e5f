"""iPhone OS 3.x backups (iTunes 8.2–9.1): one `.mdinfo`/`.mddata` pair per file, no Manifest.mbdb or Manifest.db.

Layout of such a folder (sources and where they disagree: docs/protocol.md):

    <fileID>.mddata   the file's bytes (encrypted as a whole when the backup is)
    <fileID>.mdinfo   a plist dict (binary as written) describing it:
                        Metadata     data: a binary plist dict {Domain, Path, Version, Greylist, …}
                        AuthVersion  string ("1.0")
                        IsEncrypted  bool (when true, Metadata itself is encrypted: no name without the password)
    Manifest.plist    XML plist {AuthVersion "2.0", AuthSignature = SHA-1 of Data, Data, IsEncrypted};
                      Data is a binary plist {Files: {fileID: {Domain, FileLength, ModificationTime, DataHash, …}},
                      Applications: {bundle id: {AppInfo, Files: [fileID, …]}}}
    Info.plist        as in later backups; there is no Status.plist

The fileID of a pair is its file name (40 lowercase hex digits before the extension): the device names each file
it sends, and that name is what holds the bytes. It is the SHA-1 of "<Domain>-<Path>" as in later backups; a name
that disagrees is kept (it is where the bytes are) and named in the problems. Only regular files are listed (these
backups carry no directory or symlink records; browsing derives folders from paths). A file's size is its
`.mddata`'s (Manifest.plist's FileLength when the .mddata is missing: the import names a missing body, as for every
layout); its mtime and mode come from the Metadata (ModificationTime, Mode) when present, else from Manifest.plist's
Files entry (ModificationTime), else 0 and a regular file's 0o100644. Problems name files relative to the folder, so
a folder gives the same problems at import and when its catalog is rebuilt from a snapshot.

Public API:
    read_mdinfo(data, name) -> MdInfo                    one .mdinfo; ManifestInvalid (naming it) unless a plist dict
    read_manifest_files(data, where) -> (files, problems)   Manifest.plist's Data → Files, by fileID
    mdinfo_entry(info, size, listed=None) -> CatalogEntry
    mdinfo_catalog(names, read, data_size, manifest, where) -> MdinfoCatalog   from files wherever they are
    read_mdinfo_folder(folder) -> MdinfoCatalog          every pair of a folder, sorted by fileID
    data_name(file_id) -> "<fileID>.mddata"              where the bytes of a catalog row live in the folder

Bounds: an .mdinfo larger than MAX_MDINFO_BYTES is refused after reading at most that much (real ones are a few
hundred bytes), Manifest.plist likewise past MAX_MANIFEST_BYTES; only regular files are read (a link to a device is
named, never followed); a folder with more than MAX_FILES .mdinfo is refused. Reading never writes anything.
"""

from __future__ import annotations

import hashlib
import os
import plistlib
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from phonevault.sync.errors import LegacyManifestInvalid

from .manifest import FLAG_FILE, S_IFREG, CatalogEntry, file_id

MAX_MDINFO_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 256 << 20
MAX_FILES = 2_000_000
_NAME = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True, slots=True)
class MdInfo:
    """One .mdinfo. domain/path are None when the phone encrypted the Metadata (`encrypted`)."""

    file_id: str  # from the file's name
    domain: str | None
    path: str | None
    encrypted: bool
    version: str | None = None
    greylist: bool | None = None
    mode: int | None = None
    mtime: int | None = None


@dataclass(frozen=True, slots=True)
class MdinfoCatalog:
    """A 3.x folder's files as catalog rows (sorted by fileID), what could not be used, and how many .mdinfo the
    phone encrypted (their names need the backup password)."""

    entries: tuple[CatalogEntry, ...]
    problems: tuple[str, ...] = ()
    encrypted: int = 0


def data_name(fid: str) -> str:
    return f"{fid}.mddata"


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """A regular file's bytes, at most `limit` of them: never follows a link to a device or reads without end."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise LegacyManifestInvalid(str(path), f"{what} is not a regular file")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise LegacyManifestInvalid(str(path), f"{what} is larger than {limit:,} bytes; refused as absurd")
    return data


def _load_dict(data: bytes, where: str, what: str) -> dict[str, Any]:
    try:
        value = plistlib.loads(data)
    except Exception as exc:  # InvalidFileException, ExpatError, ValueError, RecursionError, … on damage
        raise LegacyManifestInvalid(where, f"{what} is not a plist ({type(exc).__name__}: {exc})") from None
    if not isinstance(value, dict):
        raise LegacyManifestInvalid(where, f"{what} is a plist {type(value).__name__}, not a dict")
    return value


def _seconds(value: Any) -> int | None:
    """Unix seconds of a plist date or number; None for anything else."""
    if isinstance(value, datetime):
        return int((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def read_mdinfo(data: bytes, name: str, where: str | None = None) -> MdInfo:
    """Parse one .mdinfo given its bytes and its file name (`<fileID>.mdinfo`). ManifestInvalid, naming the file,
    when it or its Metadata is not a plist dict, or a readable Metadata lacks Domain or Path."""
    where = where or name
    fid = name.rsplit("/", 1)[-1].removesuffix(".mdinfo")
    if len(data) > MAX_MDINFO_BYTES:
        raise LegacyManifestInvalid(where, f".mdinfo of {len(data):,} bytes; real ones are a few hundred, refused")
    outer = _load_dict(data, where, ".mdinfo")
    encrypted = outer.get("IsEncrypted") is True
    meta = outer.get("Metadata")
    if not isinstance(meta, bytes):
        raise LegacyManifestInvalid(where, f".mdinfo has no Metadata data (found {type(meta).__name__})")
    if encrypted:
        return MdInfo(fid, None, None, True)
    inner = _load_dict(meta, where, ".mdinfo Metadata")
    # Domain and Path live in Metadata (libimobiledevice, iphone-dataprotection); one description puts them beside
    # it, so the outer dict is read when Metadata lacks them.
    domain = _str(inner.get("Domain")) or _str(outer.get("Domain"))
    path = _str(inner.get("Path")) if "Path" in inner else _str(outer.get("Path"))
    if domain is None or path is None:
        raise LegacyManifestInvalid(where, ".mdinfo Metadata names no Domain and Path strings")
    greylist = inner.get("Greylist")
    mode = inner.get("Mode")
    return MdInfo(
        fid,
        domain,
        path,
        False,
        version=_str(inner.get("Version")),
        greylist=greylist if isinstance(greylist, bool) else None,
        mode=mode if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode <= 0xFFFF else None,
        mtime=_seconds(inner.get("ModificationTime")),
    )


def read_manifest_files(data: bytes, where: str = "Manifest.plist") -> tuple[dict[str, dict[str, Any]], list[str]]:
    """A 3.x Manifest.plist's Data → Files (fileID → its dict) and what is wrong with it (never fatal: the .mdinfo
    files carry the names). ManifestInvalid only if Manifest.plist itself is not a plist dict."""
    d = _load_dict(data, where, "Manifest.plist")
    problems: list[str] = []
    blob = d.get("Data")
    if not isinstance(blob, bytes):
        return {}, [f"{where}: no Data (an iPhone OS 3 Manifest.plist carries its file list there)"]
    signature = d.get("AuthSignature")
    if d.get("AuthVersion") == "2.0" and isinstance(signature, bytes) and hashlib.sha1(blob).digest() != signature:
        problems.append(f"{where}: AuthSignature is not the SHA-1 of Data (the file list was altered)")
    try:
        inner = plistlib.loads(blob)
    except Exception as exc:
        return {}, [*problems, f"{where}: Data is not a plist ({type(exc).__name__})"]
    files = inner.get("Files") if isinstance(inner, dict) else None
    if not isinstance(files, dict):
        return {}, [*problems, f"{where}: Data holds no Files dict"]
    return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, dict)}, problems


def mdinfo_entry(info: MdInfo, size: int, listed: Mapping[str, Any] | None = None) -> CatalogEntry:
    """The catalog row of a readable .mdinfo whose .mddata is `size` bytes; `listed` is its Manifest.plist entry."""
    if info.domain is None or info.path is None:
        raise ValueError(f"{info.file_id}.mdinfo is encrypted; its name needs the backup password")
    mtime = info.mtime
    if mtime is None and listed is not None:
        mtime = _seconds(listed.get("ModificationTime"))
    mode = info.mode if info.mode is not None and info.mode & 0xF000 == S_IFREG else S_IFREG | 0o644
    return CatalogEntry(info.file_id, info.domain, info.path, FLAG_FILE, size, mode, mtime or 0)


def mdinfo_catalog(
    names: Iterable[str],
    read: Callable[[str], bytes],
    data_size: Callable[[str], int | None],
    read_manifest: Callable[[], bytes | None],
    where: Callable[[str], str] = str,
) -> MdinfoCatalog:
    """The catalog of an iPhone OS 3.x folder, wherever its files are (a folder, a snapshot). `names` are the
    `.mdinfo` file names, `read(name)` their bytes, `data_size(fileID)` the size of `<fileID>.mddata` (None when there
    is none: the row keeps Manifest.plist's FileLength; a missing body is the import's to name, as for every
    layout), `read_manifest()` Manifest.plist's bytes (None if absent) and `where(name)` how a fatal error names a
    file. Problems name files by their names in the folder, so the same folder gives the same problems wherever it
    is. A .mdinfo that is not a plist (or names no Domain/Path) raises ManifestInvalid naming it."""
    listed: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    try:  # the .mdinfo files carry the names: Manifest.plist only adds mtimes, so it is never fatal
        if (manifest := read_manifest()) is not None:
            listed, problems = read_manifest_files(manifest, "Manifest.plist")
    except LegacyManifestInvalid as exc:
        problems.append(f"Manifest.plist: {exc.reason}")
    entries: list[CatalogEntry] = []
    encrypted = 0
    for count, name in enumerate(sorted(names), 1):
        if count > MAX_FILES:
            raise LegacyManifestInvalid(where(name), f"more than {MAX_FILES:,} .mdinfo files; refused as absurd")
        fid = name.removesuffix(".mdinfo")
        if not _NAME.fullmatch(fid):
            problems.append(f"{name}: not named by a fileID (40 lowercase hex digits); not listed")
            continue
        info = read_mdinfo(read(name), name, where(name))
        if info.encrypted:
            encrypted += 1
            continue
        size = data_size(fid)
        if size is None:
            length = listed.get(fid, {}).get("FileLength")
            size = length if isinstance(length, int) and not isinstance(length, bool) and length >= 0 else 0
        if file_id(info.domain or "", info.path or "") != fid:
            problems.append(f"{name}: its name is not the SHA-1 of {info.domain}-{info.path}; kept under its name")
        entries.append(mdinfo_entry(info, size, listed.get(fid)))
    if encrypted:
        problems.append(f"{encrypted} .mdinfo file(s) encrypted by the phone: their names need the backup password")
    return MdinfoCatalog(tuple(entries), tuple(problems), encrypted)


def read_mdinfo_folder(folder: Path) -> MdinfoCatalog:
    """Every `<fileID>.mdinfo` of an iPhone OS 3.x folder as catalog rows (`mdinfo_catalog`). Only regular files are
    read: a .mdinfo that is anything else is left out (an import names every file that is not a regular file)."""
    folder = Path(folder)
    names = []
    with os.scandir(folder) as it:
        for entry in it:
            if entry.name.endswith(".mdinfo") and entry.is_file(follow_symlinks=False):
                names.append(entry.name)
                if len(names) > MAX_FILES:
                    raise LegacyManifestInvalid(
                        str(folder), f"more than {MAX_FILES:,} .mdinfo files; refused as absurd"
                    )

    def data_size(fid: str) -> int | None:
        try:
            st = os.lstat(folder / data_name(fid))
        except FileNotFoundError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def read_manifest() -> bytes | None:
        path = folder / "Manifest.plist"
        return _read_bounded(path, MAX_MANIFEST_BYTES, "Manifest.plist") if os.path.lexists(path) else None

    return mdinfo_catalog(
        names,
        lambda name: _read_bounded(folder / name, MAX_MDINFO_BYTES, ".mdinfo"),
        data_size,
        read_manifest,
        lambda name: str(folder / name),
    )
