"""Folder import/export and the catalog against real folders: real SQLite Manifest.db, real plists, real files."""

import hashlib
import os
import plistlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.check import check
from phonevault.store.refs import resolve_snapshot
from phonevault.store.trees import diff_trees
from phonevault.sync.catalog import list_dir, load_catalog
from phonevault.sync.diff import diff
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.errors import BackupFolderInvalid, EncryptedBackup
from phonevault.sync.export import export_snapshot
from phonevault.sync.extract import extract
from phonevault.sync.manifest import CatalogEntry, file_id, write_manifest_db
from phonevault.sync.mobilesync import find_backup_folders, import_folder
from phonevault.sync.records import backup_meta

SIZE = 6 << 20


def tree_digest(root: Path) -> dict[str, tuple[str, int, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st_ = p.stat()
        rel = str(p.relative_to(root))
        if p.is_file():
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), st_.st_mode, st_.st_mtime_ns)
        else:
            out[rel] = ("dir", st_.st_mode, 0)
    return out


def export(repo, rec, dest: Path) -> Path:
    view = repo.view(rec.device_key, refresh=True)
    return export_snapshot(repo, view, rec, dest).path


@pytest.fixture(scope="module")
def phone():
    return SyntheticPhone(seed=7, size=SIZE)


def test_import_twice_with_changes_then_export_each_bit_for_bit(repo, phone, tmp_path):
    src = tmp_path / "src"
    dev = phone.write_backup(src, day=0)
    day0 = tree_digest(dev)
    r0 = import_folder(repo, dev)
    assert r0.problems == [] and r0.reused_files == 0
    phone.write_backup(src, day=1)
    day1 = tree_digest(dev)
    r1 = import_folder(repo, dev)
    assert r1.snapshot.parent == r0.snapshot.id
    assert r1.reused_files > 0.9 * r1.snapshot.stats.files  # stat cache: unchanged files are not read
    # only changed files cost anything, and of those only their changed chunks (SQLite pages, not whole DBs)
    changed = diff_trees(r0.snapshot.tree, r1.snapshot.tree, repo.get_blob)
    changed_bytes = sum(c.new.size for c in changed if c.new is not None)
    assert r1.snapshot.stats.new_raw < changed_bytes
    assert tree_digest(export(repo, r0.snapshot, tmp_path / "e0")) == day0
    assert tree_digest(export(repo, r1.snapshot, tmp_path / "e1")) == day1
    assert check(repo, read_data=True).ok


def test_unchanged_reimport_reads_nothing_new(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src", day=0)
    import_folder(repo, dev)
    again = import_folder(repo, dev)
    assert again.reused_files == again.snapshot.stats.files
    assert again.snapshot.stats.added == again.snapshot.stats.modified == again.snapshot.stats.removed == 0


def test_catalog_browse_extract_and_diff(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src", day=0)
    a = import_folder(repo, dev).snapshot
    phone.write_backup(tmp_path / "src", day=1)
    b = import_folder(repo, dev).snapshot
    catalog = load_catalog(repo, b)
    domains = [x.name for x in list_dir(catalog)]
    assert "CameraRollDomain" in domains and "HomeDomain" in domains
    photos = [c for c in catalog if c.relative_path.startswith("Media/DCIM/") and c.flags == 1]
    photo = photos[0]
    got = extract(repo, b, [f"CameraRollDomain/{photo.relative_path}"], tmp_path / "out")
    assert got[0].path == tmp_path / "out" / "CameraRollDomain" / photo.relative_path  # its full domain path
    assert got[0].path.read_bytes() == (dev / photo.file_id[:2] / photo.file_id).read_bytes()
    rows = diff(repo, a, b)
    kinds = {r.kind for r in rows}
    assert {"added", "modified"} <= kinds
    assert any(r.path.startswith("CameraRollDomain/Media/DCIM/") for r in rows)
    assert all(not r.path.startswith(("00/", "ff/")) for r in rows if r.kind != "removed")


def test_truncated_and_missing_files_are_named_and_everything_else_kept(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src", day=0)
    files = sorted(p for p in dev.glob("??/*") if p.stat().st_size > 10_000)
    truncated, missing = files[0], files[1]
    with open(truncated, "r+b") as f:
        f.truncate(5000)
    missing.unlink()
    r = import_folder(repo, dev)
    assert any(truncated.name in p and "truncated" in p for p in r.problems)
    assert any(missing.name in p and "missing" in p for p in r.problems)
    assert tree_digest(export(repo, r.snapshot, tmp_path / "e")) == tree_digest(dev)


def test_refused_sources(repo, phone, tmp_path):
    with pytest.raises(BackupFolderInvalid, match="does not exist"):
        find_backup_folders(tmp_path / "nope")
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(BackupFolderInvalid, match="not a folder"):
        find_backup_folders(tmp_path / "file")
    dev = phone.write_backup(tmp_path / "src", day=0)
    (dev / "Manifest.db").write_bytes(b"this is not sqlite" * 100)
    before = list(repo.backend.list(""))
    with pytest.raises(BackupFolderInvalid, match="unreadable catalog"):
        import_folder(repo, dev)
    assert list(repo.backend.list("")) == before  # nothing written
    (dev / "Manifest.db").unlink()
    with pytest.raises(BackupFolderInvalid, match="no Manifest.db"):
        import_folder(repo, dev)


def test_malformed_info_plist_is_a_problem_not_a_refusal(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src", day=0)
    (dev / "Info.plist").write_bytes(b"<?xml version='1.0'?><plist><dict><key>broken")
    r = import_folder(repo, dev)
    assert any("Info.plist" in p for p in r.problems)
    assert r.device.udid == phone.udid  # recovered from Manifest.plist's Lockdown dict
    assert tree_digest(export(repo, r.snapshot, tmp_path / "e")) == tree_digest(dev)


def test_encrypted_backup_is_stored_and_exported_as_is(repo, tmp_path):
    phone = SyntheticPhone(seed=3, size=2 << 20, password="1234", kdf_iterations=10)
    dev = phone.write_backup(tmp_path / "src", day=0)
    r = import_folder(repo, dev)
    assert backup_meta(r.snapshot).encrypted is True
    with pytest.raises(EncryptedBackup, match="password"):
        load_catalog(repo, r.snapshot)
    assert tree_digest(export(repo, r.snapshot, tmp_path / "e")) == tree_digest(dev)


def test_backup_root_with_two_devices(repo, tmp_path):
    root = tmp_path / "Backup"
    a = SyntheticPhone(seed=11, size=1 << 20).write_backup(root)
    b = SyntheticPhone(seed=12, size=1 << 20).write_backup(root)
    folders = find_backup_folders(root)
    assert sorted(folders) == sorted([a, b])
    for f in folders:
        import_folder(repo, f)
    assert len(repo.devices()) == 2
    _v, rec = resolve_snapshot(repo, f"{SyntheticPhone(seed=11, size=1 << 20).udid[:8]}@latest")
    assert rec.stats.files > 0


def test_default_location_is_searched(tmp_path, monkeypatch):
    home = tmp_path / "home"
    mac = home / "Library" / "Application Support" / "MobileSync" / "Backup"
    dev = SyntheticPhone(seed=5, size=1 << 20).write_backup(mac)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("APPDATA", raising=False)
    assert find_backup_folders(None) == [dev]


names = st.text("abcdefghij._- ", min_size=1, max_size=12)


@settings(max_examples=15)
@given(
    files=st.dictionaries(st.tuples(st.sampled_from(["HomeDomain", "MediaDomain", "AppDomain-x"]), names),
                          st.binary(max_size=3000), min_size=1, max_size=12),
    extra=st.dictionaries(names, st.binary(max_size=500), max_size=3),
    mtimes=st.integers(0, 2**31),
)  # fmt: skip
def test_import_export_round_trip_random_folders(make_repo, tmp_path_factory, files, extra, mtimes):
    """Property: import then export gives back every byte, name, mode and mtime of any backup folder."""
    root = tmp_path_factory.mktemp("rand")
    dev = root / "00008030-0000000000000001"
    dev.mkdir()
    entries = []
    for i, ((domain, rel), data) in enumerate(sorted(files.items())):
        fid = file_id(domain, rel)
        (dev / fid[:2]).mkdir(exist_ok=True)
        p = dev / fid[:2] / fid
        p.write_bytes(data)
        os.utime(p, ns=(mtimes + i, mtimes + i))
        entries.append(CatalogEntry(fid, domain, rel, 1, len(data), 0o100644, mtimes + i))
    write_manifest_db(dev / "Manifest.db", entries)
    (dev / "Info.plist").write_bytes(plistlib.dumps({"Target Identifier": dev.name, "Device Name": "R"}))
    for name, data in extra.items():
        (dev / f"x{name}").write_bytes(data)
    (dev / "Snapshot").mkdir()  # an empty leftover directory survives too
    repo = make_repo(f"v{root.name}")
    r = import_folder(repo, dev)
    assert tree_digest(export(repo, r.snapshot, root / "out")) == tree_digest(dev)


def test_manifest_db_with_missing_table_is_refused(repo, tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    con = sqlite3.connect(dev / "Manifest.db")
    con.execute("CREATE TABLE Other(x)")
    con.commit()
    con.close()
    with pytest.raises(BackupFolderInvalid, match="Files"):
        import_folder(repo, dev)


def test_row_memo_gives_the_same_catalog(phone, tmp_path):
    """The memo is an optimisation only: with it, without it, warm or cold, day 0 or day 1, the rows are equal."""
    from phonevault.sync.manifest import read_manifest_db

    dev = phone.write_backup(tmp_path / "src", day=0)
    memo: dict = {}
    day0 = list(read_manifest_db(dev / "Manifest.db"))
    assert list(read_manifest_db(dev / "Manifest.db", memo)) == day0
    assert len(memo) == len(day0)
    phone.write_backup(tmp_path / "src", day=1)
    day1 = list(read_manifest_db(dev / "Manifest.db"))
    assert list(read_manifest_db(dev / "Manifest.db", memo)) == day1 != day0


def test_import_from_a_script_without_main_guard(tmp_path):
    """The Manifest.db parse runs in a second process; a caller whose __main__ is stdin must still work."""
    import subprocess
    import sys

    dev = SyntheticPhone(seed=8, size=1 << 20).write_backup(tmp_path / "src")
    script = f"""
from pathlib import Path
from phonevault.store.backends.local import LocalBackend
from phonevault.store.repository import Repository
from phonevault.sync.mobilesync import import_folder
repo = Repository.init(LocalBackend(Path({str(tmp_path / "v")!r})), "pw", scrypt_n=2**10, cache_root=Path({str(tmp_path / "c")!r}))
print(import_folder(repo, Path({str(dev)!r})).snapshot.stats.files)
"""
    r = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.strip()) > 10
