"""Hypothesis fuzzing of MobileSync import: a phone writes its own Info.plist, Manifest.plist, Status.plist and
Manifest.db, and a backup folder may hold anything a file system can (symlinks, FIFOs, device files).

Each example builds one hostile backup folder in a private sandbox, imports it into a fresh vault (real files, real
SQLite, real LMDB) and then holds import to its contract:
- it ends in one typed `PhonevaultError` (one line; nothing committed, the vault checks clean), or in a committed
  snapshot whose problems are each one line;
- the vault checks clean; `export` writes only inside its target, and every regular file of the folder comes back
  bit for bit; no symlink, FIFO or device file is ever followed or stored;
- `ls` and `extract` of every catalog row work or fail with a typed error; extract writes only inside its target
  and what it writes is the bytes of that row's file in the folder;
- nothing is written anywhere in the sandbox but the vault, its cache and the export/extract targets: the backup
  folder itself (no -wal/-shm beside Manifest.db), the files symlinks point at and every folder a `..` could reach
  are compared byte for byte before and after.

What import skips it names, and the oracle expects exactly that: a file whose name is not UTF-8 is named and
not exported; a link (to a file, a folder or out of the folder, metadata included) is never followed. Shapes a known
bug still breaks are kept out of the fuzz (`KNOWN_BUGS`, none today: left out of `FUZZED_EXTRAS`) and pinned by
strict-xfail regression tests at the end of this file; when a fix lands the xfail turns into a failure, and the
shape goes back into the fuzz.
`PHONEVAULT_FUZZ_EXAMPLES` raises the example count for a long local run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import plistlib
import re
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from phonevault.store.backends.local import LocalBackend
from phonevault.store.check import check
from phonevault.store.errors import PhonevaultError
from phonevault.store.repository import Repository
from phonevault.sync.catalog import domain_path, list_dir, load_catalog
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.export import export_snapshot
from phonevault.sync.extract import extract
from phonevault.sync.manifest import MANIFEST_DB_SCHEMA, CatalogEntry, file_id, mbfile_fields
from phonevault.sync.mbfile import encode_mbfile
from phonevault.sync.mobilesync import import_folder
from phonevault.sync.paths import unsafe_reason
from tests.conftest import FAST_SCRYPT, PASSWORD

EXAMPLES = int(os.environ.get("PHONEVAULT_FUZZ_EXAMPLES", "60"))
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# Shapes of input that a known bug still mishandles (see the xfail tests at the end of this file).
KNOWN_BUGS: dict[str, str] = {}  # shape -> the strict-xfail test pinning it; the last five were fixed

MARKER = b"outside the backup folder: never read by an import"
DEPTH = ("a", "b", "c", "d", "e", "f", "g", "h")  # deeper than any '..' run a drawn path can hold


@functools.cache
def base_plists() -> dict:
    """The plists of a real synthetic backup, as dicts to mutate (Applications dropped: it is only bulk)."""
    with tempfile.TemporaryDirectory() as d:
        phone = SyntheticPhone(seed=29, size=64 << 10)
        dev = phone.write_backup(Path(d))
        out = {n: plistlib.loads((dev / n).read_bytes()) for n in ("Info.plist", "Manifest.plist", "Status.plist")}
    for d in out.values():
        d.pop("Applications", None)
    out["udid"] = dev.name
    return out


# --------------------------------------------------------------------------------------------------- strategies

ODD_TEXT = ["", ".", "..", "../..", "/", "a/b", "x\x00y", "é", "e\u0301", "Ｅ", "\u202e", "new\nline", "\\", "C:",
            "~", " ", "A" * 200, "B" * 250, "../../../etc"]  # fmt: skip
scalars = st.one_of(
    st.text(max_size=12),
    st.sampled_from(ODD_TEXT),
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.binary(max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
)
plist_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip

INFO_KEYS = ["Target Identifier", "Unique Identifier", "Device Name", "Display Name", "Product Type",
             "Product Version", "Build Version", "Serial Number", "IMEI", "Phone Number", "GUID", "iTunes Files"]  # fmt: skip
MANIFEST_KEYS = ["IsEncrypted", "Lockdown", "Date", "Version", "BackupKeyBag", "ManifestKey", "WasPasscodeSet"]
STATUS_KEYS = ["SnapshotState", "IsFullBackup", "Date", "UUID", "Version", "BackupState"]


def _dumps(value: object, fmt: plistlib.PlistFormat) -> bytes:
    try:
        return plistlib.dumps(value, fmt=fmt)
    except (ValueError, TypeError, OverflowError):  # XML cannot hold control characters or some integers
        return plistlib.dumps(value, fmt=plistlib.FMT_BINARY)


@st.composite
def plist_file(draw, name: str, keys: list[str]):
    """What a folder holds under one plist's name: ("bytes", data) or a special ("missing", "dir", "fifo")."""
    kind = draw(st.sampled_from(["good", "mutated", "mutated", "mutated", "non-dict", "garbage", "cut", "empty",
                                 "missing", "dir", "fifo"]))  # fmt: skip
    fmt = draw(st.sampled_from([plistlib.FMT_XML, plistlib.FMT_BINARY]))
    if kind in ("missing", "dir", "fifo"):
        return (kind, b"")
    if kind == "empty":
        return ("bytes", b"")
    if kind == "garbage":
        prefix = draw(st.sampled_from([b"", b"bplist00", b"<?xml version='1.0'?><plist><dict>"]))
        return ("bytes", prefix + draw(st.binary(max_size=48)))
    if kind == "non-dict":
        return ("bytes", _dumps(draw(st.one_of(st.lists(scalars, max_size=3), scalars)), fmt))
    value = {"__base__": name}  # replaced by the base dict when the folder is written
    if kind in ("mutated", "cut"):
        changes = draw(st.dictionaries(st.sampled_from(keys), st.none() | plist_values, min_size=1, max_size=4))
        value.update({"__changes__": changes})
    cut = draw(st.floats(0.05, 0.95)) if kind == "cut" else None
    return ("plist", (value, fmt, cut))


COMPONENTS = ["Library", "Media", "DCIM", "..", ".", "", "é", "e\u0301", "Ｅ", "IMG.JPG", "img.jpg", "a\x00b",
              "n" * 255, "x" * 300, "\\", "C:", "~", "new\nline", "\u202e", " "]  # fmt: skip
DOMAINS = ["HomeDomain", "CameraRollDomain", "AppDomain-com.example.app", "", "..", "/", "Home\x00Domain", "a/b",
           "../../HomeDomain", "MediaDomain"]  # fmt: skip

rel_paths = st.one_of(
    st.lists(st.sampled_from(COMPONENTS) | st.text(max_size=6), max_size=5).map("/".join),
    st.lists(st.sampled_from(COMPONENTS), max_size=3).map(lambda c: "/" + "/".join(c)),
    st.text(max_size=20),
    st.text(alphabet="ab./", min_size=1, max_size=12),
)


@dataclass(frozen=True)
class Row:
    fid: object
    domain: object
    rel: object
    flags: object
    blob: object  # an MBFile archive, garbage bytes, or a value of the wrong type
    content: bytes | None  # the bytes at <fid[:2]>/<fid> in the folder; None: not there


def _mbfile(domain: object, rel: object, flags: int, size: int, mode: int, mtime: int, target: str | None) -> bytes:
    entry = CatalogEntry("0" * 40, str(domain), str(rel), flags, size, mode, mtime, target)
    return encode_mbfile(mbfile_fields(entry, {"Size": size}))


@st.composite
def rows(draw):
    domain = draw(st.sampled_from(DOMAINS) | st.text(max_size=8))
    rel = draw(rel_paths)
    fid = draw(
        st.one_of(
            st.just(file_id(domain, rel)),
            st.just(file_id(domain, rel)),
            st.text(alphabet="0123456789abcdef", min_size=40, max_size=40),
            st.just(file_id(domain, rel).upper()),
            st.sampled_from(["", "ab", "..", "../../../x", "/abs", "ab/cd", "ab\x00" + "0" * 37, "x" * 300, "zz" * 20]),
            st.text(max_size=44),
        )
    )
    flags = draw(st.sampled_from([1, 1, 1, 1, 2, 4, 0, 3, -1, 99, 2**40]))
    content = draw(st.none() | st.binary(max_size=64) | st.binary(max_size=64))
    declared = (len(content) if content is not None else 0) + draw(st.sampled_from([0, 0, 0, 1, -1, 2**40, -(2**40)]))
    blob_kind = draw(st.sampled_from(["mbfile"] * 6 + ["garbage", "text", "none", "int"]))
    if blob_kind == "mbfile":
        mode = draw(st.sampled_from([0o100644, 0o100755, 0o104755, 0o40755, 0o120777, 0, -1, 2**40]))
        mtime = draw(st.sampled_from([1_700_000_000, 0, -1, 2**40, -(2**40), 2**62]))
        target = draw(st.none() | st.sampled_from(["../../etc/passwd", "/etc/shadow", "x"]))
        try:
            blob: object = _mbfile(domain, rel, flags if isinstance(flags, int) else 1, declared, mode, mtime, target)
        except (ValueError, TypeError, OverflowError):
            blob = draw(st.binary(max_size=32))
    else:
        blob = {"garbage": draw(st.binary(max_size=32)), "text": "not an archive", "none": None, "int": 7}[blob_kind]
    # SQLite's column affinities turn some wrong types into right ones; others stay wrong (a BLOB fileID, ...).
    wrong = draw(st.sampled_from([None] * 8 + ["fid-int", "fid-blob", "domain-blob", "rel-null", "flags-text"]))
    if wrong == "fid-int":
        fid = 12345
    elif wrong == "fid-blob":
        fid = str(fid).encode("utf-8", "surrogatepass")
    elif wrong == "domain-blob":
        domain = str(domain).encode()
    elif wrong == "rel-null":
        rel = None
    elif wrong == "flags-text":
        flags = "one"
    return Row(fid, domain, rel, flags, blob, content)


@dataclass(frozen=True)
class Db:
    kind: str  # rows, wal, truncated, corrupted, garbage, empty, missing, dir, fifo
    schema: str  # apple, no-pk, untyped, extra-column, missing-column, no-files-table
    rows: tuple[Row, ...]
    cut: float = 0.0
    damage: tuple[tuple[float, int], ...] = ()
    garbage: bytes = b""


@st.composite
def dbs(draw):
    kind = draw(
        st.sampled_from(["rows"] * 8 + ["wal", "truncated", "corrupted", "garbage", "empty", "missing", "dir", "fifo"])
    )
    schema = draw(st.sampled_from(["apple"] * 4 + ["no-pk", "untyped", "extra-column", "missing-column",
                                                   "no-files-table"]))  # fmt: skip
    drawn = draw(st.lists(rows(), max_size=6))
    if drawn and draw(st.booleans()):  # a fileID listed twice (only a table without a primary key can hold it)
        drawn.append(Row(drawn[0].fid, "HomeDomain", "dup/name", 1, drawn[0].blob, None))
    return Db(
        kind,
        schema,
        tuple(drawn),
        cut=draw(st.floats(0.0, 0.99)),
        damage=tuple(draw(st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(0, 255)), min_size=1, max_size=8))),
        garbage=draw(st.sampled_from([b"", b"SQLite format 3\x00"])) + draw(st.binary(max_size=200)),
    )


EXTRAS = ["fifo", "device", "symlink-to-file", "dangling-symlink", "symlink-loop", "self-symlink", "empty-dir",
          "nfc-nfd-pair", "case-pair", "newline-name", "too-deep", "symlink-to-dir", "non-utf8-name",
          "metadata-symlink"]  # fmt: skip
FUZZED_EXTRAS = [e for e in EXTRAS if e not in KNOWN_BUGS]


@dataclass(frozen=True)
class Folder:
    info: tuple
    manifest: tuple
    status: tuple
    db: Db
    extras: tuple[tuple[str, str], ...]  # (what, where: "root" or a shard)
    preload: bool  # the vault already holds a good snapshot of the same device
    reimport: bool  # import the folder twice (the second time through the stat cache)


def folders(extras: list[str] = FUZZED_EXTRAS):
    return st.builds(
        Folder,
        plist_file("Info.plist", INFO_KEYS),
        plist_file("Manifest.plist", MANIFEST_KEYS),
        plist_file("Status.plist", STATUS_KEYS),
        dbs(),
        st.lists(st.tuples(st.sampled_from(extras), st.sampled_from(["root", "ab", "00"])), max_size=3).map(tuple),
        st.booleans(),
        st.booleans(),
    )


# --------------------------------------------------------------------------------------------------- building


def _write_plist(path: Path, spec: tuple, base: dict) -> None:
    kind, payload = spec
    if kind == "missing":
        return
    if kind == "dir":
        path.mkdir()
        return
    if kind == "fifo":
        os.mkfifo(path)
        return
    if kind == "bytes":
        path.write_bytes(payload)
        return
    value, fmt, cut = payload
    d = dict(base[value["__base__"]])
    for k, v in value.get("__changes__", {}).items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    data = _dumps(d, fmt)
    path.write_bytes(data[: max(1, int(len(data) * cut))] if cut is not None else data)


FILES_COLUMNS = {
    "apple": MANIFEST_DB_SCHEMA,
    "no-pk": ("CREATE TABLE Files (fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB)",),
    "untyped": ("CREATE TABLE Files (fileID, domain, relativePath, flags, file)",),
    "extra-column": (
        "CREATE TABLE Files (extra TEXT, fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER, "
        "file BLOB, more BLOB)",
    ),  # fmt: skip
    "missing-column": ("CREATE TABLE Files (fileID TEXT PRIMARY KEY, domain TEXT, flags INTEGER, file BLOB)",),
    "no-files-table": ("CREATE TABLE Properties (key TEXT PRIMARY KEY, value BLOB)",),
}


def _write_db(path: Path, db: Db) -> None:
    if db.kind in ("missing",):
        return
    if db.kind == "dir":
        path.mkdir()
        return
    if db.kind == "fifo":
        os.mkfifo(path)
        return
    if db.kind == "empty":
        path.write_bytes(b"")
        return
    if db.kind == "garbage":
        path.write_bytes(db.garbage)
        return
    con = sqlite3.connect(path)
    for statement in FILES_COLUMNS[db.schema]:
        con.execute(statement)
    if db.schema not in ("missing-column", "no-files-table"):
        for r in db.rows:
            con.execute(
                "INSERT OR IGNORE INTO Files (fileID, domain, relativePath, flags, file) VALUES (?, ?, ?, ?, ?)",
                (r.fid, r.domain, r.rel, r.flags, r.blob),
            )
    con.commit()
    con.close()
    if db.kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * db.cut)])
    elif db.kind == "wal":  # a WAL-mode header, and a -wal beside it that an import must not replay
        data = bytearray(path.read_bytes())
        data[18:20] = b"\x02\x02"
        path.write_bytes(bytes(data))
        path.with_name("Manifest.db-wal").write_bytes(db.garbage)
    elif db.kind == "corrupted":
        data = bytearray(path.read_bytes())
        for where, value in db.damage:
            data[int(len(data) * where)] = value
        path.write_bytes(bytes(data))


def _place_contents(dev: Path, db: Db) -> None:
    """Each row's bytes at <fid[:2]>/<fid>, where that is a plain path inside the folder (a fileID is only a name)."""
    for r in db.rows:
        if r.content is None or not isinstance(r.fid, str):
            continue
        rel = f"{r.fid[:2]}/{r.fid}"
        if unsafe_reason(rel) is not None or any(len(p.encode()) > 255 for p in rel.split("/")):
            continue
        if rel.split("/")[0] in ("Info.plist", "Manifest.plist", "Status.plist", "Manifest.db"):
            continue
        try:
            (dev / rel).parent.mkdir(parents=True, exist_ok=True)
            (dev / rel).write_bytes(r.content)
        except OSError:  # one drawn fileID is a folder of another (ab/ab vs ab/ab/x): keep the first
            continue


def _place_extra(dev: Path, outside: Path, what: str, where: str, n: int) -> None:
    folder = dev if where == "root" else dev / where
    folder.mkdir(exist_ok=True)
    name = f"extra{n}"
    p = folder / name
    if what == "fifo":
        os.mkfifo(p)
    elif what == "device":
        if IS_ROOT:
            os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
        else:
            os.mkfifo(p)
    elif what == "symlink-to-file":
        p.symlink_to(outside / "secret")
    elif what == "dangling-symlink":
        p.symlink_to(outside / "does-not-exist")
    elif what == "symlink-loop":
        p.symlink_to(folder / f"{name}-b")
        (folder / f"{name}-b").symlink_to(p)
    elif what == "self-symlink":
        p.symlink_to(p)
    elif what == "empty-dir":
        p.mkdir()
    elif what == "nfc-nfd-pair":
        (folder / f"{name}-\u00e9").write_bytes(b"nfc")
        (folder / f"{name}-e\u0301").write_bytes(b"nfd")
    elif what == "case-pair":
        (folder / f"{name}-IMG.JPG").write_bytes(b"upper")
        (folder / f"{name}-img.jpg").write_bytes(b"lower")
    elif what == "newline-name":
        (folder / f"{name}\nwarning: forged line").write_bytes(b"newline")
    elif what == "too-deep":
        deep = folder.joinpath(name, *["d"] * 70)
        deep.mkdir(parents=True)
        (deep / "f").write_bytes(b"deep")
    elif what == "symlink-to-dir":
        p.symlink_to(outside, target_is_directory=True)
    elif what == "non-utf8-name":
        with open(os.path.join(os.fsencode(folder), name.encode() + b"-\xff\xfe"), "wb") as f:
            f.write(b"latin-1 name")
    elif what == "metadata-symlink":
        target = outside / "Info.plist"
        target.write_bytes(plistlib.dumps({"Target Identifier": "OUTSIDE-0000", "Device Name": "not this phone"}))
        info = dev / "Info.plist"
        if info.is_dir() and not info.is_symlink():  # the drawn Info.plist may be a folder
            shutil.rmtree(info)
        info.unlink(missing_ok=True)
        if not (dev / "Info.plist").exists():
            (dev / "Info.plist").symlink_to(target)
    else:  # pragma: no cover - a typo in EXTRAS
        raise AssertionError(what)


@dataclass
class Sandbox:
    root: Path
    dev: Path
    outside: Path
    vault: Path
    cache: Path
    targets: Path  # export and extract targets live under here

    @classmethod
    def make(cls, root: Path, udid: str) -> Sandbox:
        deep = root.joinpath(*DEPTH)
        outside = root / "outside"
        outside.mkdir()
        (outside / "secret").write_bytes(MARKER)
        (outside / "subdir").mkdir()
        (outside / "subdir" / "secret2").write_bytes(MARKER + b"2")
        dev = deep / "src" / udid
        dev.mkdir(parents=True)
        targets = deep / "out"
        targets.mkdir()
        return cls(root, dev, outside, root / "vault", root / "cache", targets)

    def allowed(self, rel: str) -> bool:
        """Where import, check, ls, export and extract may write."""
        p = self.root / rel
        return any(p == a or a in p.parents for a in (self.vault, self.cache, self.targets))


def build(sandbox: Sandbox, folder: Folder, base: dict) -> None:
    dev = sandbox.dev
    _write_plist(dev / "Info.plist", folder.info, base)
    _write_plist(dev / "Manifest.plist", folder.manifest, base)
    _write_plist(dev / "Status.plist", folder.status, base)
    _write_db(dev / "Manifest.db", folder.db)
    _place_contents(dev, folder.db)
    for n, (what, where) in enumerate(folder.extras):
        _place_extra(dev, sandbox.outside, what, where, n)


def tree_state(root: Path) -> dict[str, tuple]:
    """Every name under root (symlinks not followed): its type, and for files their size, mtime and bytes' hash."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            p = os.path.join(dirpath, name)
            st_ = os.lstat(p)
            rel = os.path.relpath(p, root)
            if stat.S_ISREG(st_.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("file", st_.st_size, st_.st_mtime_ns, digest)
            elif stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(p))
            else:
                out[rel] = (stat.S_IFMT(st_.st_mode),)
    return out


def regular_files(dev: Path) -> dict[str, bytes]:
    """What export must give back: every regular file of the folder (lstat), by its path relative to the folder."""
    out = {}
    for dirpath, _dirs, names in os.walk(dev):
        for name in names:
            p = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(p).st_mode):
                with open(p, "rb") as f:
                    out[os.path.relpath(p, dev).replace(os.sep, "/")] = f.read()
    return out


# --------------------------------------------------------------------------------------------------- the oracle


def _utf8(rel: str) -> bool:
    try:
        rel.encode()
    except UnicodeEncodeError:  # os.walk gave the bytes that are not UTF-8 as surrogates
        return False
    return True


def one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "\r" not in text


def snapshot_count(repo: Repository) -> int:
    return sum(len(v.snapshots) for v in repo.devices())


def run_example(sandbox: Sandbox, folder: Folder, base: dict) -> str:
    """Build, import, verify. Returns what happened ("error: <type>" or "snapshot"), for the statistics."""
    build(sandbox, folder, base)
    before = tree_state(sandbox.root)
    source = regular_files(sandbox.dev)
    repo = Repository.init(LocalBackend(sandbox.vault), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=sandbox.cache)
    try:
        preloaded = _preload(repo, sandbox, base) if folder.preload else None
        outcome = _import_and_verify(repo, sandbox, source, reimport=folder.reimport)
        if preloaded is not None:  # what was stored before the hostile import is still there, bit for bit
            snap, files = preloaded
            view = repo.view(snap.device_key, refresh=True)
            dest = sandbox.targets / "preloaded-export"
            result = export_snapshot(repo, view, snap, dest)
            assert regular_files(result.path) == files
        report = check(repo)
        assert report.ok, report.errors
    finally:
        repo.close()
    after = tree_state(sandbox.root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k) and not sandbox.allowed(k)}
    assert not changed, f"written outside the vault, cache and targets: {sorted(changed)[:10]}"
    return outcome


def _preload(repo: Repository, sandbox: Sandbox, base: dict):
    good = sandbox.root / "good" / sandbox.dev.name
    good.mkdir(parents=True)
    for name in ("Info.plist", "Manifest.plist", "Status.plist"):
        (good / name).write_bytes(plistlib.dumps(base[name]))
    entry = CatalogEntry(file_id("HomeDomain", "Library/good"), "HomeDomain", "Library/good", 1, 4, 0o100644, 1)
    con = sqlite3.connect(good / "Manifest.db")
    for statement in MANIFEST_DB_SCHEMA:
        con.execute(statement)
    con.execute("INSERT INTO Files VALUES (?, ?, ?, 1, ?)", (entry.file_id, entry.domain, entry.relative_path,
                                                             encode_mbfile(mbfile_fields(entry))))  # fmt: skip
    con.commit()
    con.close()
    (good / entry.file_id[:2]).mkdir()
    (good / entry.file_id[:2] / entry.file_id).write_bytes(b"good")
    files = regular_files(good)
    snap = import_folder(repo, good).snapshot
    shutil.rmtree(sandbox.root / "good")
    return snap, files


def _import_and_verify(repo: Repository, sandbox: Sandbox, source: dict[str, bytes], *, reimport: bool) -> str:
    before = snapshot_count(repo)
    results = []
    for _ in range(2 if reimport else 1):
        try:
            results.append(import_folder(repo, sandbox.dev))
        except PhonevaultError as e:
            assert one_line(str(e)), repr(str(e))
            assert snapshot_count(repo) == before + len(results), "a failed import committed a snapshot"
            assert [n for n, _ in repo.backend.list("writers/")] == []
            if results:
                raise AssertionError(f"the second import of the same folder failed: {e}") from None
            return f"error: {type(e).__name__}"
    assert snapshot_count(repo) == before + len(results)
    for i, r in enumerate(results):
        for p in r.problems:
            assert one_line(p), repr(p)
        _verify_snapshot(repo, sandbox, r, source, f"{i}")
    return "snapshot"


def _verify_snapshot(repo: Repository, sandbox: Sandbox, r, source: dict[str, bytes], tag: str) -> None:
    snap = r.snapshot
    view = repo.view(snap.device_key, refresh=True)
    result = export_snapshot(repo, view, snap, sandbox.targets / f"export-{tag}")
    assert result.problems == []
    assert result.path.parent == sandbox.targets / f"export-{tag}"
    exported = regular_files(result.path)
    not_utf8 = [rel for rel in source if not _utf8(rel)]
    named = [p for p in r.problems if p.endswith(": the name is not UTF-8, so it is no name a phone writes (skipped)")]
    assert len(named) >= len(not_utf8), r.problems  # each skipped, and named
    source = {rel: data for rel, data in source.items() if _utf8(rel)}
    assert exported == source, (
        f"export differs from the folder: missing {sorted(source.keys() - exported.keys())[:5]}, "
        f"extra {sorted(exported.keys() - source.keys())[:5]}"
    )
    skipped = {p.split(": ", 1)[0] for p in r.problems if p.endswith("not a regular file (skipped)")}
    for rel in skipped:
        assert not os.path.lexists(result.path / rel) or os.path.isdir(result.path / rel)
    _verify_catalog(repo, sandbox, snap, source, tag)


def _verify_catalog(repo: Repository, sandbox: Sandbox, snap, source: dict[str, bytes], tag: str) -> None:
    try:
        catalog = load_catalog(repo, snap)
    except PhonevaultError as e:  # encrypted, or no Manifest.db in the snapshot: typed, one line
        assert one_line(str(e)), repr(str(e))
        return
    paths = sorted({domain_path(c) for c in catalog})
    stored_at: dict[str, list[str]] = {}  # domain path -> where the folder kept each file row so named
    for c in catalog:
        if c.flags == 1:
            stored_at.setdefault(domain_path(c), []).append(f"{c.file_id[:2]}/{c.file_id}")
    for n, c in enumerate(catalog):
        path = domain_path(c)
        try:
            list_dir(catalog, path)
        except PhonevaultError as e:
            assert one_line(str(e)), repr(str(e))
        if c.flags != 1:
            continue
        dest = sandbox.targets / f"ex-{tag}-{n}"
        try:
            written = extract(repo, snap, [path], dest)
        except PhonevaultError as e:
            assert one_line(str(e)), repr(str(e))
            written = getattr(e, "extracted", [])
            for p in getattr(e, "problems", []):
                assert one_line(p), repr(p)
        for x in written:  # a path may name a folder: each file written is one of the rows at its own path
            assert x.path == dest or dest in x.path.parents
            stored = [source[k] for k in stored_at.get(x.source, ()) if k in source]
            assert x.path.read_bytes() in stored, f"{x.source} extracted as bytes of no file row so named"
    if paths:
        try:
            extract(repo, snap, paths, sandbox.targets / f"ex-{tag}-all")
        except PhonevaultError as e:
            assert one_line(str(e)), repr(str(e))


# --------------------------------------------------------------------------------------------------- the fuzz


@settings(max_examples=EXAMPLES)
@given(folder=folders())
def test_import_of_a_hostile_folder_is_a_typed_error_or_a_sound_snapshot(tmp_path_factory, folder):
    base = base_plists()
    sandbox = Sandbox.make(tmp_path_factory.mktemp("fuzz"), base["udid"])
    old_tempdir = tempfile.tempdir
    tempfile.tempdir = str(sandbox.targets)  # anything put in $TMPDIR lands where the tree check sees it
    try:
        event(run_example(sandbox, folder, base))
    finally:
        tempfile.tempdir = old_tempdir
    shutil.rmtree(sandbox.root, ignore_errors=True)


@settings(max_examples=max(4, EXAMPLES // 10))
@given(folder=folders())
def test_cli_import_of_a_hostile_folder_is_one_line(tmp_path_factory, folder, cli_env):
    """A sample through the real console script: exit 0, 3 (problems named) or 1 (refused), never a traceback, and
    the vault checks clean either way."""
    base = base_plists()
    sandbox = Sandbox.make(tmp_path_factory.mktemp("fuzz-cli"), base["udid"])
    build(sandbox, folder, base)
    exe = Path(sys.executable).with_name("phonevault")
    env = dict(cli_env, PHONEVAULT_REPO=str(sandbox.vault), PHONEVAULT_CACHE_DIR=str(sandbox.cache))

    def pv(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=300)

    assert pv("init").returncode == 0
    r = pv("import", str(sandbox.dev))
    assert r.returncode in (0, 1, 3), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    if r.returncode:
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("phonevault: "), r.stderr
    if r.returncode == 1:  # one line, besides the progress lines a non-terminal gets (`importing X: 40 % (…)`)
        said = [ln for ln in r.stderr.strip().splitlines() if not re.match(r"importing \S+: \d+ % \(", ln)]
        assert len(said) == 1, r.stderr
    c = pv("check")
    assert c.returncode == 0, c.stdout + c.stderr
    shutil.rmtree(sandbox.root, ignore_errors=True)


# --------------------------------------------------------------------------------------------------- known bugs


def _folder_with(extra: str, base: dict) -> Folder:
    good = ("plist", ({"__base__": "Info.plist"}, plistlib.FMT_XML, None))
    plist = lambda name: ("plist", ({"__base__": name}, plistlib.FMT_XML, None))  # noqa: E731
    return Folder(good, plist("Manifest.plist"), plist("Status.plist"), Db("rows", "apple", ()), ((extra, "ab"),),
                  False, False)  # fmt: skip


def test_a_symlink_to_a_folder_is_named_not_silently_dropped(tmp_path):
    base = base_plists()
    sandbox = Sandbox.make(tmp_path, base["udid"])
    build(sandbox, _folder_with("symlink-to-dir", base), base)
    repo = Repository.init(LocalBackend(sandbox.vault), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=sandbox.cache)
    r = import_folder(repo, sandbox.dev)
    assert "ab/extra0: not a regular file (skipped)" in r.problems, r.problems


def test_a_file_name_that_is_not_utf8_is_named_not_a_crash(tmp_path):
    base = base_plists()
    sandbox = Sandbox.make(tmp_path, base["udid"])
    build(sandbox, _folder_with("non-utf8-name", base), base)
    repo = Repository.init(LocalBackend(sandbox.vault), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=sandbox.cache)
    try:
        r = import_folder(repo, sandbox.dev)
    except PhonevaultError as e:
        assert one_line(str(e))
    else:
        assert any("extra0" in p for p in r.problems), r.problems


def test_metadata_symlinked_out_of_the_folder_is_not_read(tmp_path):
    base = base_plists()
    sandbox = Sandbox.make(tmp_path, base["udid"])
    build(sandbox, _folder_with("metadata-symlink", base), base)
    repo = Repository.init(LocalBackend(sandbox.vault), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=sandbox.cache)
    r = import_folder(repo, sandbox.dev)
    assert "Info.plist: not a regular file (skipped)" in r.problems
    assert r.device.udid != "OUTSIDE-0000" and r.device.name != "not this phone"


def test_a_udid_too_long_for_a_folder_name_is_refused_at_import(tmp_path):
    base = base_plists()
    sandbox = Sandbox.make(tmp_path, base["udid"])
    changes = {"Target Identifier": "x" * 250, "Unique Identifier": "x" * 250}
    folder = dataclasses.replace(
        _folder_with("empty-dir", base),
        info=("plist", ({"__base__": "Info.plist", "__changes__": changes}, plistlib.FMT_XML, None)),
    )
    build(sandbox, folder, base)
    repo = Repository.init(LocalBackend(sandbox.vault), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=sandbox.cache)
    r = import_folder(repo, sandbox.dev)
    view = repo.view(r.snapshot.device_key, refresh=True)
    try:
        export_snapshot(repo, view, r.snapshot, sandbox.targets / "export")
    except PhonevaultError:
        pass  # a typed refusal is fine; an OSError is the bug


def test_a_path_with_a_newline_is_named_on_one_line(tmp_path):
    base = base_plists()
    sandbox = Sandbox.make(tmp_path, base["udid"])
    rel = "Library/forged\nphonevault: a second line"
    row = Row(
        file_id("HomeDomain", rel), "HomeDomain", rel, 2, _mbfile("HomeDomain", rel, 2, 0, 0o40755, 1, None), None
    )
    folder = _folder_with("empty-dir", base)
    build(sandbox, Folder(folder.info, folder.manifest, folder.status, Db("rows", "apple", (row,)), (), False, False),
          base)  # fmt: skip
    repo = Repository.init(LocalBackend(sandbox.vault), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=sandbox.cache)
    snap = import_folder(repo, sandbox.dev).snapshot
    with pytest.raises(PhonevaultError) as e:
        extract(repo, snap, [f"HomeDomain/{rel}"], sandbox.targets / "ex")
    assert one_line(str(e.value)), repr(str(e.value))
