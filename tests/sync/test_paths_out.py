"""Nothing leaves the vault outside its target, extract never loses a file, bad rows are named, no plaintext in $TMPDIR.

Each test is a hostile tester's reproduction against real folders, real SQLite, real files: a phone writes its own
Manifest.db and Info.plist, so every domain, relativePath, fileID, UDID and plist flag here is what a compromised
phone could send.
"""

from __future__ import annotations

import os
import plistlib
import sqlite3
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.errors import UnsafePath
from phonevault.store.packs import pack_name
from phonevault.store.records import DeviceRecord
from phonevault.store.trees import lookup
from phonevault.store.writer import SnapshotWriter
from phonevault.sync.catalog import backup_path, load_catalog
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.errors import EncryptedBackup, ExtractIncomplete, TargetConflict
from phonevault.sync.export import export_snapshot
from phonevault.sync.extract import extract
from phonevault.sync.manifest import CatalogEntry, file_id, mbfile_fields
from phonevault.sync.mbfile import encode_mbfile
from phonevault.sync.mobilesync import import_folder
from phonevault.sync.paths import Target, safe_component
from phonevault.sync.records import backup_meta
from phonevault.sync.restore import restore_device
from tests.conftest import reopen

THUMBS = "Media/PhotoData/Thumbnails/V2/DCIM/100APPLE"


@pytest.fixture(scope="module")
def phone():
    return SyntheticPhone(seed=41, size=1 << 20)


def add_rows(dev: Path, rows: list[tuple[str, str, str, bytes | None]], *, unique_file_ids: bool = True) -> None:
    """Add Files rows (fileID, domain, relativePath, content) as a phone would write them; content None leaves the
    file out of the folder. Without `unique_file_ids` the table loses its PRIMARY KEY, as a hand-made one may."""
    con = sqlite3.connect(dev / "Manifest.db")
    if not unique_file_ids:
        con.execute("ALTER TABLE Files RENAME TO Files0")
        con.execute("CREATE TABLE Files (fileID TEXT, domain TEXT, relativePath TEXT, flags INTEGER, file BLOB)")
        con.execute("INSERT INTO Files SELECT * FROM Files0")
        con.execute("DROP TABLE Files0")
    for fid, domain, rel, data in rows:
        entry = CatalogEntry(fid, domain, rel, 1, len(data or b""), 0o100644, 1_700_000_000)
        con.execute("INSERT INTO Files VALUES (?, ?, ?, 1, ?)", (fid, domain, rel, encode_mbfile(mbfile_fields(entry))))
        if data is not None:
            (dev / fid[:2]).mkdir(exist_ok=True)
            (dev / fid[:2] / fid).write_bytes(data)
    con.commit()
    con.close()


def set_plist(path: Path, **values) -> None:
    d = plistlib.loads(path.read_bytes())
    d.update({k.replace("_", " "): v for k, v in values.items()})
    path.write_bytes(plistlib.dumps(d))


def everything_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- 1 + 3: nothing written outside the target; one bad row never fails the whole extract ---------------------


def test_extract_refuses_rows_that_leave_the_target_and_extracts_the_rest(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    hostile = [
        ("HomeDomain", "../../escaped-1.txt"),
        ("HomeDomain", "Library/../../../escaped-2.txt"),
        ("HomeDomain", "/tmp/escaped-3.txt"),
        ("HomeDomain", "Library/nul\x00.txt"),
    ]
    add_rows(dev, [(file_id(d, r), d, r, b"hostile") for d, r in hostile])
    snap = import_folder(repo, dev).snapshot
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(ExtractIncomplete) as info:
        extract(repo, snap, ["HomeDomain"], work / "ex1")
    e = info.value
    assert len(e.problems) == len(hostile)
    for (_d, rel), problem in zip(sorted(hostile, key=lambda h: "HomeDomain/" + h[1]), e.problems, strict=True):
        assert repr("HomeDomain/" + rel) in problem and "refusing" in problem
    assert all(p == "ex1" or p.startswith("ex1/") for p in everything_under(work))
    home = [c for c in load_catalog(repo, snap) if c.domain == "HomeDomain" and c.flags == 1]
    assert len(e.extracted) == len(home) - len(hostile) > 5
    for x in e.extracted:
        assert x.path.is_relative_to(work / "ex1" / "HomeDomain")
        c = next(c for c in home if f"HomeDomain/{c.relative_path}" == x.source)
        assert x.path.read_bytes() == (dev / backup_path(c.file_id)).read_bytes()
    assert not any(p.name.startswith("escaped") for p in tmp_path.rglob("*") if "src" not in p.parts)


def test_a_symlink_already_in_the_target_is_not_followed_out(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    snap = import_folder(repo, dev).snapshot
    outside = tmp_path / "outside"
    outside.mkdir()
    ex = tmp_path / "ex"
    (ex / "HomeDomain" / "Library").mkdir(parents=True)
    (ex / "HomeDomain" / "Library" / "Preferences").symlink_to(outside)
    with pytest.raises(ExtractIncomplete) as info:
        extract(repo, snap, ["HomeDomain"], ex)
    assert info.value.problems and all("leads outside" in p for p in info.value.problems)
    assert list(outside.iterdir()) == []
    assert info.value.extracted  # HomeDomain files outside Library/Preferences were extracted


def test_export_refuses_a_udid_that_is_not_one_folder_name(repo, tmp_path):
    """A vault may already hold such a device (stored before imports checked it): export and restore refuse it."""
    with SnapshotWriter(repo, "./../../elsewhere", DeviceRecord(), incremental=False) as w:
        fw = w.open_file("Manifest.db")
        fw.write(b"x")
        fw.close()
        snap = w.commit("test")
    view = repo.view(snap.device_key, refresh=True)
    dest = tmp_path / "a" / "b" / "out"
    with pytest.raises(UnsafePath, match="one folder name"):
        export_snapshot(repo, view, snap, dest)
    with pytest.raises(UnsafePath, match="one folder name"):
        restore_device(repo, view, snap, usbmux_address="127.0.0.1:9")  # refused before any connection
    assert not (tmp_path / "a").exists()
    assert not [p for p in tmp_path.parent.rglob("elsewhere*")]


def test_import_names_a_udid_that_cannot_name_a_folder_and_export_stays_inside(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    set_plist(dev / "Info.plist", Target_Identifier="./../../../elsewhere", Unique_Identifier="../../x")
    r = import_folder(repo, dev)
    assert any("'./../../../elsewhere'" in p and "cannot name a folder" in p for p in r.problems)
    assert r.device.udid == dev.name  # the folder's own name, as for a backup naming no UDID at all
    view = repo.view(r.snapshot.device_key, refresh=True)
    out = tmp_path / "w" / "exp"
    result = export_snapshot(repo, view, r.snapshot, out)
    assert result.path == out / dev.name and result.problems == []
    assert everything_under(tmp_path / "w") == {"exp", *(f"exp/{p}" for p in everything_under(out))}
    assert result.files == sum(1 for p in dev.rglob("*") if p.is_file())


def test_target_joins_stay_inside_or_are_refused(tmp_path):
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "link-out").symlink_to(tmp_path)
    (root / "link-in").symlink_to(root / "in")
    (root / "file-out").symlink_to(tmp_path / "x")
    t = Target(root)
    assert t.join("a/b/c.jpg") == root / "a" / "b" / "c.jpg"
    assert t.join("link-in/c.jpg") == root / "link-in" / "c.jpg"
    for bad in ("", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\x00b", "link-out/x", "file-out"):
        with pytest.raises(UnsafePath):
            t.join(bad)
    assert safe_component("00008030-001A2D3C0E12802E", "t") == "00008030-001A2D3C0E12802E"
    for bad in ("", ".", "..", "a/b", "a\\b", "./../x", "x\x00"):
        with pytest.raises(UnsafePath):
            safe_component(bad, "t")


@settings(max_examples=200)
@given(st.text(st.sampled_from("ab./\\\x00"), max_size=12))
def test_target_join_property(tmp_path_factory, rel):
    """Whatever the string: refused, or a path whose real location is inside the target."""
    root = tmp_path_factory.getbasetemp() / "prop-root"
    root.mkdir(exist_ok=True)
    try:
        path = Target(root).join(rel)
    except UnsafePath:
        return
    real, base = os.path.realpath(path), os.path.realpath(root)
    assert real.startswith(base + os.sep)


# --- 2: extract never loses a file ---------------------------------------------------------------------------


def test_extract_keeps_each_files_full_domain_path(repo, phone, tmp_path):
    """Two thumbnails both named 5005.JPG used to become one file (exit 0)."""
    dev = phone.write_backup(tmp_path / "src")
    rows = [(f"{THUMBS}/IMG_{n:04d}.HEIC/5005.JPG", f"thumbnail {n}".encode()) for n in (3, 4)]
    add_rows(dev, [(file_id("CameraRollDomain", rel), "CameraRollDomain", rel, data) for rel, data in rows])
    snap = import_folder(repo, dev).snapshot
    ex = tmp_path / "ex"
    got = extract(repo, snap, [f"CameraRollDomain/{rel}" for rel, _ in rows], ex)
    assert [x.path for x in got] == [ex / "CameraRollDomain" / rel for rel, _ in rows]
    for rel, data in rows:
        assert (ex / "CameraRollDomain" / rel).read_bytes() == data
    assert not [p for p in ex.rglob(".phonevault-*")]


def test_extract_never_overwrites_without_overwrite(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    snap = import_folder(repo, dev).snapshot
    photos = sorted(
        f"CameraRollDomain/{c.relative_path}"
        for c in load_catalog(repo, snap)
        if c.relative_path.startswith("Media/DCIM/") and c.flags == 1
    )[:2]
    ex = tmp_path / "ex"
    mine = ex / photos[1]
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own file")
    with pytest.raises(TargetConflict, match="already exists.*--overwrite"):
        extract(repo, snap, photos, ex)
    assert [p for p in ex.rglob("*") if p.is_file()] == [mine]  # nothing written, not even the other photo
    assert mine.read_bytes() == b"the user's own file"
    got = extract(repo, snap, photos, ex, overwrite=True)
    assert [x.path for x in got] == [ex / p for p in photos]
    assert mine.read_bytes() != b"the user's own file"


def test_two_files_on_one_name_are_refused_before_anything_is_written(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    name = "Library/Notes/notes.sqlite"
    add_rows(
        dev,
        [
            (file_id("HomeDomain", name), "HomeDomain", name, b"one"),
            ("ff" + file_id("HomeDomain", name)[2:], "HomeDomain", name, b"two"),  # a second row, another fileID
        ],
    )
    snap = import_folder(repo, dev).snapshot
    with pytest.raises(TargetConflict, match="two files of the snapshot have this name"):
        extract(repo, snap, ["HomeDomain"], tmp_path / "ex")
    assert not (tmp_path / "ex").exists()


def test_a_file_that_is_also_a_folder_is_refused_before_anything_is_written(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    add_rows(dev, [(file_id("HomeDomain", r), "HomeDomain", r, r.encode()) for r in ("Library/x", "Library/x/y")])
    snap = import_folder(repo, dev).snapshot
    with pytest.raises(TargetConflict, match="also a folder"):
        extract(repo, snap, ["HomeDomain/Library"], tmp_path / "ex")
    assert not (tmp_path / "ex").exists()


# --- 3: missing files and unreadable blobs are named, the rest extracted, temp files removed ------------------


def test_a_file_missing_from_the_snapshot_is_named_and_the_rest_extracted(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    add_rows(dev, [(file_id(d, r), d, r, data) for d, r, data in (("MediaDomain", "gone.m4a", None),
                                                                  ("MediaDomain", "here.m4a", b"here"))])  # fmt: skip
    r = import_folder(repo, dev)
    assert any("missing" in p for p in r.problems)
    with pytest.raises(ExtractIncomplete) as info:
        extract(repo, r.snapshot, ["MediaDomain"], tmp_path / "ex")
    assert len(info.value.problems) == 1 and "MediaDomain/gone.m4a" in info.value.problems[0]
    assert (tmp_path / "ex" / "MediaDomain" / "here.m4a").read_bytes() == b"here"
    assert info.value.extracted and all(x.path.is_file() for x in info.value.extracted)


def test_an_unreadable_file_is_named_and_its_temp_file_removed(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    big = os.urandom(300_000)
    add_rows(dev, [(file_id("MediaDomain", r), "MediaDomain", r, d) for r, d in (("victim.bin", big), ("ok", b"ok"))])
    snap = import_folder(repo, dev).snapshot
    entry = lookup(snap.tree, backup_path(file_id("MediaDomain", "victim.bin")), repo.get_blob)
    loc = repo.locate(entry.chunks[-1])
    pack = Path(repo.backend.location) / pack_name(loc.pack)
    pack.chmod(0o644)
    with open(pack, "r+b") as f:  # flip one byte in the middle of that blob: it no longer authenticates
        f.seek(loc.offset + loc.length // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    fresh = reopen(repo, tmp_path / "cache2")  # no blob of it cached in memory
    with pytest.raises(ExtractIncomplete) as info:
        extract(fresh, snap, ["MediaDomain"], tmp_path / "ex")
    fresh.close()
    assert [p for p in info.value.problems if "MediaDomain/victim.bin" in p]
    assert info.value.extracted
    assert not (tmp_path / "ex" / "MediaDomain" / "victim.bin").exists()
    assert not [p for p in (tmp_path / "ex").rglob("*") if p.name.startswith(".phonevault-")]


# --- 4: duplicate fileIDs and non-boolean plist flags are problems, never silently accepted --------------------


def test_duplicate_file_ids_are_named_and_not_extracted(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    fid = file_id("HomeDomain", "Library/real.plist")
    add_rows(
        dev,
        [(fid, "HomeDomain", "Library/real.plist", b"real"), (fid, "HomeDomain", "Library/decoy.plist", b"real")],
        unique_file_ids=False,
    )
    r = import_folder(repo, dev)
    dup = [p for p in r.problems if fid in p]
    assert len(dup) == 2 and any("Library/decoy.plist" in p for p in dup)
    cold = reopen(repo, tmp_path / "cold")
    catalog = load_catalog(cold, r.snapshot)  # parsed again from the vault's Manifest.db: the same problems
    cold.close()
    assert [p.message for p in catalog.problems] == [p.message for p in load_catalog(repo, r.snapshot).problems]
    assert len(catalog.problems) == 2
    with pytest.raises(ExtractIncomplete) as info:
        extract(repo, r.snapshot, ["HomeDomain/Library"], tmp_path / "ex")
    assert len(info.value.problems) == 2
    assert not (tmp_path / "ex" / "HomeDomain" / "Library" / "real.plist").exists()
    assert info.value.extracted


def test_an_undecodable_row_is_named_and_the_rest_imported(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    con = sqlite3.connect(dev / "Manifest.db")
    con.execute("INSERT INTO Files VALUES ('ffbad', 'HomeDomain', 'Library/bad.db', 1, x'00010203')")
    con.commit()
    con.close()
    r = import_folder(repo, dev)  # used to refuse the whole folder
    assert any("HomeDomain/Library/bad.db" in p and "ffbad" in p for p in r.problems)
    with pytest.raises(ExtractIncomplete) as info:
        extract(repo, r.snapshot, ["HomeDomain/Library"], tmp_path / "ex")
    assert len(info.value.problems) == 1 and "ffbad" in info.value.problems[0]
    assert info.value.extracted


def test_a_string_is_encrypted_is_a_problem_decided_by_the_manifest_db(repo, phone, tmp_path):
    """bool("no") is True: a string flag used to be taken as a boolean without a word."""
    dev = phone.write_backup(tmp_path / "plain")
    set_plist(dev / "Manifest.plist", IsEncrypted="yes")
    set_plist(dev / "Status.plist", IsFullBackup="no")
    r = import_folder(repo, dev)
    assert any("IsEncrypted" in p and "'yes'" in p for p in r.problems)
    assert any("IsFullBackup" in p and "'no'" in p for p in r.problems)
    assert any("taken as not encrypted" in p for p in r.problems)
    assert backup_meta(r.snapshot).encrypted is False and backup_meta(r.snapshot).is_full_backup is None
    assert len(load_catalog(repo, r.snapshot)) > 10  # the Manifest.db is a plain database: browsable

    locked = SyntheticPhone(seed=3, size=1 << 20, password="1234", kdf_iterations=10).write_backup(tmp_path / "enc")
    set_plist(locked / "Manifest.plist", IsEncrypted="no")
    r = import_folder(repo, locked)
    assert any("IsEncrypted" in p and "'no'" in p for p in r.problems)
    assert backup_meta(r.snapshot).encrypted is True
    with pytest.raises(EncryptedBackup):
        load_catalog(repo, r.snapshot)


# --- 5: no plaintext in $TMPDIR -------------------------------------------------------------------------------


def test_the_catalog_is_parsed_in_memory(repo, phone, tmp_path):
    """Every file the catalog parse creates or opens for writing, seen by Python's audit hooks: there is none.
    (It used to write the decrypted Manifest.db to $TMPDIR/phonevault-catalog-*, left behind by a killed `ls`.)"""
    dev = phone.write_backup(tmp_path / "src")
    snap = import_folder(repo, dev).snapshot
    cold = reopen(repo, tmp_path / "cold")  # no cached catalog: it is parsed from the vault's Manifest.db
    seen: list[tuple] = []
    watching = [True]

    def hook(event: str, args: tuple) -> None:
        if not watching[0]:
            return
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            mode, flags = args[1], args[2] or 0
            if (mode and set(mode) & set("wax+")) or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                seen.append((event, args[0]))
        elif event in ("os.mkdir", "os.rename", "os.link") or (event == "sqlite3.connect" and args[0] != ":memory:"):
            seen.append((event, args[0]))

    sys.addaudithook(hook)
    try:
        catalog = load_catalog(cold, snap)
    finally:
        watching[0] = False  # an audit hook cannot be removed; it goes quiet
    cold.close()
    assert len(catalog) > 10
    assert [s for s in seen if not Path(os.fsdecode(s[1])).is_relative_to(tmp_path / "cold")] == []


# --- the same through the real command: one line per problem, exit codes ---------------------------------------


def test_cli_on_a_hostile_backup_folder(pv, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    set_plist(dev / "Info.plist", Target_Identifier="./../../../elsewhere")
    set_plist(dev / "Manifest.plist", IsEncrypted="yes")
    thumbs = [f"{THUMBS}/IMG_{n:04d}.HEIC/5005.JPG" for n in (3, 4)]
    rows = [
        ("HomeDomain", "../../escaped.txt", b"hostile"),
        ("MediaDomain", "gone.m4a", None),
        ("MediaDomain", "Library/[x]odd[/x].txt", b"odd"),  # rich markup in a name is shown as it is
        *(("CameraRollDomain", t, t.encode()) for t in thumbs),
    ]
    add_rows(dev, [(file_id(d, r), d, r, data) for d, r, data in rows])
    pv("init", check=True)
    r = pv("import", str(dev))
    assert r.returncode == 3 and "Traceback" not in r.stderr
    for needle in ("'./../../../elsewhere'", "IsEncrypted", "missing from the folder"):
        assert needle in r.stderr, r.stderr

    w = tmp_path / "w"
    r = pv("extract", "latest", "HomeDomain", "MediaDomain", "--to", str(w / "ex1"))
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert "../../escaped.txt" in r.stderr and "MediaDomain/gone.m4a" in r.stderr
    assert "MediaDomain/Library/[x]odd[/x].txt ->" in r.stdout
    assert (w / "ex1" / "MediaDomain" / "Library" / "[x]odd[" / "x].txt").read_bytes() == b"odd"
    assert not [p for p in tmp_path.rglob("escaped*") if "src" not in p.parts]
    assert all(p.is_relative_to(w / "ex1") for p in w.rglob("*"))

    paths = [f"CameraRollDomain/{t}" for t in thumbs]
    pv("extract", "latest", *paths, "--to", str(w / "ex2"), check=True)
    for t in thumbs:
        assert (w / "ex2" / "CameraRollDomain" / t).read_bytes() == t.encode()
    r = pv("extract", "latest", *paths, "--to", str(w / "ex2"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "already exists (and 1 more)" in r.stderr and "--overwrite" in r.stderr
    pv("extract", "latest", *paths, "--to", str(w / "ex2"), "--overwrite", check=True)

    pv("export", "latest", "--to", str(w / "exp"), check=True)
    assert os.listdir(w / "exp") == [dev.name]
    assert sorted(os.listdir(w)) == ["ex1", "ex2", "exp"]


def test_extract_reports_progress_in_bytes_up_to_the_total(repo, tmp_path):
    """extract calls its progress with (bytes done, bytes in all) before each file and once at the end."""
    folder = SyntheticPhone(seed=91, size=2 << 20).write_backup(tmp_path / "src", day=0)
    snap = import_folder(repo, folder).snapshot
    calls: list[tuple[int, int]] = []
    got = extract(repo, snap, ["CameraRollDomain"], tmp_path / "out", progress=lambda d, t: calls.append((d, t)))
    total = sum(x.size for x in got)
    assert len(got) > 1 and calls[-1] == (total, total) and len(calls) == len(got) + 1
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
