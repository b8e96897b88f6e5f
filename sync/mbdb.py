"""Manifest.mbdb: the file list of every iTunes/Finder backup made by iOS 4 to 9 (Manifest.db replaced it in iOS 10).

Format (all integers big-endian; sources and where they disagree: docs/protocol.md):

    header  = "mbdb" 0x05 0x00                                 6 bytes; 5.0 is the only version iOS wrote
    record  = domain path target digest key                    5 strings
              mode u16, inode u64, uid u32, gid u32,
              mtime u32, ctime u32, btime u32, size u64,
              protection class u8, property count u8          40 bytes
              (name string, value string) × property count
    string  = u16 length, then that many bytes; length 0xFFFF means absent (no bytes follow)

Records follow the header back to back until the end of the file; there is no count and no index (iOS 4 also
wrote Manifest.mbdx, an index of fileID → record offset that iOS 5 dropped; nothing here needs it: a record's
fileID is computed from the record). domain, path and target are UTF-8 text; digest (SHA-1 of the file's bytes,
some files only), key (the wrapped per-file key of an encrypted backup) and property values are bytes. The three
times are Unix seconds: last modification, last status change, birth (the order of MBFile's LastModified,
LastStatusChange, Birth; some sources call the second and third atime and ctime). mode's top four bits give the
kind: 0x8000 file, 0x4000 directory, 0xA000 symlink.

A backup folder of iOS 4–9 holds each file's bytes flat in its root, named by its fileID: the lowercase hex
SHA-1 of "<domain>-<path>" (UTF-8), exactly as Manifest.db's fileID (`manifest.file_id`).

Public API:
    load_mbdb(path, limit) -> bytes                                      a regular file of at most `limit` bytes
    iter_records(data, where, *, max_records) -> Iterator[MbdbRecord]    records in file order, validated one by one
    read_mbdb(data, where, *, max_records) -> tuple[MbdbRecord, ...]    all of them, or ManifestInvalid
    record_entry(record) -> CatalogEntry                                 ValueError for a mode of no known kind
    mbdb_entries(data, where, problems=None, *, max_records) -> list[CatalogEntry]   sorted by fileID

Bounds: every length is checked against the bytes that remain before anything is sliced, so damaged input costs no
more memory than the input itself; a file holding more than `max_records` records (default MAX_RECORDS) is refused.
Any damage (short header, wrong magic or version, a field running past the end, text that is not UTF-8, a record
without a domain) raises LegacyManifestInvalid (a ManifestInvalid) naming the record and its byte offset (`offset`); nothing is returned partially by
`read_mbdb`/`mbdb_entries`. A file cut exactly between two records is indistinguishable from a shorter one; the
import cross-checks the records against the files present.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from phonevault.sync.errors import LegacyManifestInvalid

from .manifest import FLAG_DIR, FLAG_FILE, FLAG_SYMLINK, CatalogEntry, RowProblem, file_id

MAGIC = b"mbdb\x05\x00"
ABSENT = 0xFFFF
MAX_RECORDS = 2_000_000  # a phone with 300 000 files writes ~300 000 records; several times that is absurd
MAX_BYTES = 1 << 30  # records are ≥ 50 bytes and rarely past 300: 2 000 000 of them fit well within 1 GiB

_FIXED = struct.Struct(">HQIIIIIQBB")  # mode inode uid gid mtime ctime btime size pclass nprops: 40 bytes
_KINDS = {0x8000: FLAG_FILE, 0x4000: FLAG_DIR, 0xA000: FLAG_SYMLINK}


@dataclass(frozen=True, slots=True)
class MbdbRecord:
    """One Manifest.mbdb record, field for field. None is an absent string (length 0xFFFF)."""

    domain: str
    path: str  # "" for a domain's root directory (read from a zero length or from an absent string)
    target: str | None
    digest: bytes | None
    key: bytes | None
    mode: int
    inode: int
    uid: int
    gid: int
    mtime: int
    ctime: int
    btime: int
    size: int
    protection_class: int
    properties: tuple[tuple[bytes | None, bytes | None], ...] = ()

    @property
    def file_id(self) -> str:
        return file_id(self.domain, self.path)


class _Reader:
    """Walks the bytes of one Manifest.mbdb; every read names what it reads, so an error can say where."""

    __slots__ = ("data", "where", "at", "record", "start")

    def __init__(self, data: bytes | bytearray | memoryview, where: str) -> None:
        self.data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.where = where
        self.at = 0
        self.record = 0  # 1-based number of the record being read
        self.start = 0  # its offset

    def fail(self, reason: str, offset: int | None = None) -> LegacyManifestInvalid:
        return LegacyManifestInvalid(
            self.where,
            f"Manifest.mbdb record {self.record} (byte {self.start}): {reason}; damaged or truncated",
            self.at if offset is None else offset,
        )

    def string(self, field: str) -> bytes | None:
        left = len(self.data) - self.at
        if left < 2:
            raise self.fail(f"{field} length at byte {self.at} needs 2 bytes, {left} remain")
        length = int.from_bytes(self.data[self.at : self.at + 2], "big")
        self.at += 2
        if length == ABSENT:
            return None
        if length > left - 2:
            raise self.fail(
                f"{field} of {length} bytes at byte {self.at - 2}, but only {left - 2} bytes remain", self.at - 2
            )
        value = bytes(self.data[self.at : self.at + length])
        self.at += length
        return value

    def text(self, field: str) -> str | None:
        raw = self.string(field)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{field} is not UTF-8 text ({raw[:40]!r})", self.at - len(raw)) from None

    def fixed(self) -> tuple[int, ...]:
        left = len(self.data) - self.at
        if left < _FIXED.size:
            raise self.fail(f"its {_FIXED.size} bytes of mode … property count at byte {self.at}, {left} remain")
        values = _FIXED.unpack_from(self.data, self.at)
        self.at += _FIXED.size
        return values


def load_mbdb(path: Path, limit: int = MAX_BYTES) -> bytes:
    """The bytes of a Manifest.mbdb file, refused (ManifestInvalid) unless it is a regular file of at most `limit`
    bytes: a link to a device is never followed and nothing is read without end."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise LegacyManifestInvalid(str(path), "Manifest.mbdb is not a regular file")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise LegacyManifestInvalid(str(path), f"Manifest.mbdb is larger than {limit:,} bytes; refused as absurd")
    return data


def iter_records(
    data: bytes | bytearray | memoryview, where: str = "Manifest.mbdb", *, max_records: int = MAX_RECORDS
) -> Iterator[MbdbRecord]:
    """Every record in file order. The header is checked before the first record is yielded; damage further on
    raises ManifestInvalid when it is reached (use `read_mbdb` to have all or nothing)."""
    r = _Reader(data, where)
    n = len(r.data)
    if n < len(MAGIC):
        raise LegacyManifestInvalid(where, f"Manifest.mbdb is {n} bytes, shorter than its {len(MAGIC)}-byte header", n)
    head = bytes(r.data[:6])
    if head[:4] != MAGIC[:4]:
        raise LegacyManifestInvalid(where, f"not a Manifest.mbdb: it starts with {head[:4]!r}, not b'mbdb'", 0)
    if head[4:] != MAGIC[4:]:
        raise LegacyManifestInvalid(where, f"Manifest.mbdb version {head[4]}.{head[5]}; only 5.0 (iOS 4–9) is known", 4)
    r.at = len(MAGIC)
    while r.at < n:
        r.record += 1
        r.start = r.at
        if r.record > max_records:
            raise LegacyManifestInvalid(
                where, f"Manifest.mbdb holds more than {max_records:,} records; refused as absurd", r.start
            )
        domain = r.text("domain")
        path = r.text("path")
        target = r.text("link target")
        digest = r.string("digest")
        key = r.string("encryption key")
        mode, inode, uid, gid, mtime, ctime, btime, size, pclass, nprops = r.fixed()
        props = tuple((r.string(f"property {i + 1} name"), r.string(f"property {i + 1} value")) for i in range(nprops))
        if domain is None:
            raise r.fail("it names no domain")
        yield MbdbRecord(
            domain, path or "", target, digest, key, mode, inode, uid, gid, mtime, ctime, btime, size, pclass, props
        )


def read_mbdb(
    data: bytes | bytearray | memoryview, where: str = "Manifest.mbdb", *, max_records: int = MAX_RECORDS
) -> tuple[MbdbRecord, ...]:
    """All records, or ManifestInvalid: never a partial list."""
    return tuple(iter_records(data, where, max_records=max_records))


def record_entry(record: MbdbRecord) -> CatalogEntry:
    """The catalog row of a record. ValueError if its mode is of no kind a backup holds (file, dir, symlink)."""
    flags = _KINDS.get(record.mode & 0xF000)
    if flags is None:
        raise ValueError(f"mode {record.mode:#06x} is not a file, directory or symlink")
    return CatalogEntry(
        file_id=record.file_id,
        domain=record.domain,
        relative_path=record.path,
        flags=flags,
        size=record.size if flags == FLAG_FILE else 0,
        mode=record.mode,
        mtime=record.mtime,
        target=record.target,
        protection_class=record.protection_class,
        has_encryption_key=bool(record.key),
    )


def mbdb_entries(
    data: bytes | bytearray | memoryview,
    where: str = "Manifest.mbdb",
    problems: list[RowProblem] | None = None,
    *,
    max_records: int = MAX_RECORDS,
) -> list[CatalogEntry]:
    """The catalog of a Manifest.mbdb, sorted by fileID (as `read_manifest_db` yields Manifest.db's rows, so records
    sharing a fileID are neighbours). A damaged file raises ManifestInvalid before anything is returned. A record of
    no known kind raises too, unless `problems` is given: then it is named there and left out."""
    entries: list[CatalogEntry] = []
    for number, record in enumerate(iter_records(data, where, max_records=max_records), 1):
        try:
            entries.append(record_entry(record))
        except ValueError as exc:
            if problems is None:
                raise LegacyManifestInvalid(
                    where, f"Manifest.mbdb record {number} ({record.domain}/{record.path}): {exc}"
                ) from None
            problems.append(RowProblem(record.file_id, record.domain, record.path, str(exc)))
    entries.sort(key=lambda e: e.file_id)
    return entries
