"""Manifest.db: the catalog of a MobileSync backup folder (iOS ≥ 10), read and written, and fileID naming.

Format: SQLite, `Files(fileID, domain, relativePath, flags, file)` with one row per file (flags 1), directory (2)
or symlink (4), `file` an archived MBFile (sync/mbfile.py); a file's bytes are at `<fileID[:2]>/<fileID>` in
the folder, fileID = sha1("<domain>-<relativePath>"). The backup's plists are read in sync/plists.py.

Invariants: reading never writes next to a user's backup (SQLite opened read-only and immutable, so no -wal/-shm
appear), and a Manifest.db given as bytes (one from the vault) is parsed in memory, never written to a file;
writing is deterministic (same entries → same bytes), so a synthetic phone and an export produce byte-identical
folders. Memory: rows are streamed, one row at a time; a Manifest.db given as bytes is held once more by SQLite
while it is read (~400 bytes a row).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import blake3

from phonevault.sync.errors import ManifestInvalid
from phonevault.sync.mbfile import decode_mbfile, encode_mbfile

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


# --------------------------------------------------------------------------------------------------- rows


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
#: Anything else has `connect()`, giving an sqlite3-like connection to an image it keeps (sync/sealeddb.py).
ManifestSource = Path | str | bytes | bytearray | Any


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
        if isinstance(source, bytes | bytearray):
            conn = _open_image(source)
        elif isinstance(source, Path | str):
            conn = _open_readonly(Path(source))
        else:  # an image kept elsewhere, e.g. sealed on disk (sync/sealeddb.py): its own sqlite3-like connection
            conn = source.connect()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # a name that is not UTF-8 is the file's damage too
        raise ManifestInvalid(
            where, f"not an SQLite database ({exc}); an encrypted backup needs its password"
        ) from None
    if "Files" not in tables:
        conn.close()
        raise ManifestInvalid(where, "Manifest.db has no Files table")
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(Files)")}
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        conn.close()
        raise ManifestInvalid(where, f"its Files table cannot be read ({exc})") from None
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
        try:  # the sort may read the whole table first, so damage can show here already
            cursor = conn.execute("SELECT fileID, domain, relativePath, flags, file FROM Files ORDER BY fileID")
        except sqlite3.DatabaseError as exc:
            raise ManifestInvalid(where, f"Files table unreadable: {exc}") from None
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


class ShardMemo(Protocol):
    """A memo `read_manifest_db` tells each row's fileID (`at_row`) before it looks the row's archive up."""

    def at_row(self, file_id: str) -> None: ...
    def get(self, key: bytes, default: list | None = None) -> list | None: ...
    def __setitem__(self, key: bytes, value: list) -> None: ...


def read_manifest_db(
    source: ManifestSource,
    memo: MutableMapping[bytes, list] | ShardMemo | None = None,
    problems: list[RowProblem] | None = None,
    where: str | None = None,
) -> Iterator[CatalogEntry]:
    """Every file, directory and symlink a Manifest.db lists, in fileID order (streamed).

    An undecodable row raises ManifestInvalid naming its fileID, unless `problems` is given: then the row is
    appended there and skipped, so one bad row never hides the others.

    `memo` maps a row's MBFile archive (by BLAKE3) to its decoded fields. Decoding costs ~120 µs a row in
    pure Python, and from one backup to the next almost every row's archive is the same bytes, so a memo kept from
    the previous Manifest.db of a device turns a 300 000-row parse from ~40 s into a hash and a lookup per row.
    The memo is filled with every row read; one kept a shard at a time (`ShardMemo`) is told each row's fileID
    before the row's lookup."""
    where = _where(source, where)
    conn = _open_checked(source, where)
    at_row = getattr(memo, "at_row", None)

    def entries() -> Iterator[CatalogEntry]:
        for fid, domain, relative_path, flags, blob in _raw_rows(conn, where):
            if at_row is not None and isinstance(fid, str):
                at_row(fid)
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
