"""`diff` by content: a file is modified when its bytes differ (its chunk id lists, compared without reading data);
the same bytes with another mode or mtime — in the backup folder or in the phone's file list — are a `metadata`
change, hidden unless asked for; rows filter by domain path; a layout change pairs each file's two backup paths.
The modified set is a property against an oracle computed from the trees themselves."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.backends.memory import MemoryBackend
from phonevault.store.errors import PathNotFound
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import Repository
from phonevault.store.trees import load_tree
from phonevault.store.writer import SnapshotWriter
from phonevault.sync.catalog import domain_path, load_catalog
from phonevault.sync.diff import DomainStat, diff, per_domain
from phonevault.sync.emulator.folder import write_manifest
from phonevault.sync.emulator.legacy import write_ios8_backup
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.manifest import FLAG_FILE
from phonevault.sync.mobilesync import import_folder
from tests.conftest import FAST_SCRYPT, PASSWORD

DCIM = "CameraRollDomain/Media/DCIM"


@pytest.fixture(scope="module")
def phone() -> SyntheticPhone:
    return SyntheticPhone(seed=81, size=1 << 20)


# --------------------------------------------------------------------------------------------------- property

# A file: which bytes (one of a few contents, so two trees often share a path's bytes), its mode and its mtime.
files = st.tuples(st.integers(0, 3), st.sampled_from([0o100644, 0o100600]), st.integers(0, 2))
trees = st.dictionaries(st.sampled_from([f"{d}/f{i}" for d in ("00", "01", "ab") for i in range(4)] + ["top"]), files)


def commit(repo: Repository, tree: dict) -> object:
    w = SnapshotWriter(repo, "00008101-0000000000000DIF", DeviceRecord("Diff"), incremental=False)
    for path, (content, mode, mtime) in tree.items():
        f = w.open_file(path, mode, mtime * 10**9)
        f.write(f"content {content} ".encode() * (content * 700 + 1))  # 0 bytes to ~20 KiB: one chunk or several
        f.close()
    return w.commit("test")


@settings(max_examples=40)
@given(old=trees, new=trees)
def test_modified_is_exactly_the_paths_whose_chunks_differ(old, new, tmp_path_factory):
    repo = Repository.init(MemoryBackend(), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=tmp_path_factory.mktemp("c"))
    try:
        a, b = commit(repo, old), commit(repo, new)
        ta, tb = load_tree(a.tree, repo.get_blob), load_tree(b.tree, repo.get_blob)
        rows = diff(repo, a, b, metadata=True)
        kinds = {k: {r.path for r in rows if r.kind == k} for k in ("added", "removed", "modified", "metadata")}
        both = ta.keys() & tb.keys()
        assert kinds["modified"] == {p for p in both if ta[p].chunks != tb[p].chunks}
        assert kinds["metadata"] == {p for p in both if ta[p].chunks == tb[p].chunks and ta[p] != tb[p]}
        assert (kinds["added"], kinds["removed"]) == (tb.keys() - ta.keys(), ta.keys() - tb.keys())
        # Chunk lists stand for bytes: equal lists exactly where the contents are equal.
        assert kinds["modified"] == {p for p in both if old[p][0] != new[p][0]}
        assert [r for r in diff(repo, a, b) if r.kind == "metadata"] == []  # hidden by default
        assert diff(repo, a, b) == [r for r in rows if r.kind != "metadata"]
    finally:
        repo.close()


# --------------------------------------------------------------------------------------------------- folders


def rewrite_every_file(src: Path, dest: Path) -> Path:
    """The folder a restore and the next backup leave: every file written anew (same bytes, new mtimes)."""
    shutil.copytree(src, dest, copy_function=shutil.copyfile)
    for p in dest.rglob("*"):
        if p.is_file():
            os.utime(p, (1_800_000_000, 1_800_000_000))
    return dest


def test_the_same_bytes_after_a_restore_and_a_new_backup_are_not_modified(repo, phone, tmp_path):
    before = phone.write_backup(tmp_path / "before", day=0)
    a = import_folder(repo, before).snapshot
    b = import_folder(repo, rewrite_every_file(before, tmp_path / "after" / phone.udid)).snapshot
    assert b.stats.modified == 0  # every entry changed (its mtime), but no file's bytes: the counts agree with diff
    assert diff(repo, a, b) == []
    rows = diff(repo, a, b, metadata=True)
    catalog = load_catalog(repo, b)
    phone_files = {domain_path(c) for c in catalog if c.flags == FLAG_FILE}
    assert {r.kind for r in rows} == {"metadata"}
    assert {r.path for r in rows} == phone_files | {"Info.plist", "Manifest.plist", "Manifest.db", "Status.plist"}
    assert all(r.old_size == r.new_size for r in rows)


def test_a_phone_file_touched_on_the_phone_is_a_metadata_change_named_by_its_domain_path(repo, phone, tmp_path):
    folder = phone.write_backup(tmp_path / "src", day=0)
    a = import_folder(repo, folder).snapshot
    files = phone.files(0)
    photo = next(f for f in files if f.entry.flags == FLAG_FILE and f.entry.domain == "CameraRollDomain")
    touched = [replace(f, entry=replace(f.entry, mtime=f.entry.mtime + 3600)) if f is photo else f for f in files]
    st = (folder / "Manifest.db").stat()
    write_manifest(phone, folder / "Manifest.db", touched)  # the row says another mtime; the file's bytes are as were
    os.utime(folder / "Manifest.db", ns=(st.st_atime_ns, st.st_mtime_ns))
    b = import_folder(repo, folder).snapshot
    name = f"{photo.entry.domain}/{photo.entry.relative_path}"
    assert [r.path for r in diff(repo, a, b)] == ["Manifest.db"]  # its bytes changed; the photo's did not
    [row] = [r for r in diff(repo, a, b, metadata=True) if r.path == name]
    assert (row.kind, row.old_size, row.new_size, row.domain) == ("metadata", photo.entry.size, photo.entry.size,
                                                                  "CameraRollDomain")  # fmt: skip


def test_rows_filter_by_domain_path_and_a_path_naming_nothing_is_refused(repo, phone, tmp_path):
    folder = phone.write_backup(tmp_path / "src", day=0)
    a = import_folder(repo, folder).snapshot
    phone.write_backup(tmp_path / "src", day=2)
    b = import_folder(repo, folder).snapshot
    every = diff(repo, a, b)
    media = diff(repo, a, b, ["CameraRollDomain/Media/"])
    assert media == [r for r in every if r.path.startswith("CameraRollDomain/Media/")] and media
    two = diff(repo, a, b, [DCIM, "HomeDomain"])
    assert two == [r for r in every if r.path.startswith((DCIM + "/", "HomeDomain/"))]
    assert diff(repo, a, b, ["Manifest.db"]) == [r for r in every if r.path == "Manifest.db"]
    changed = {r.path for r in every}
    unchanged = next(domain_path(c) for c in load_catalog(repo, b) if domain_path(c) not in changed)
    assert diff(repo, a, b, [unchanged]) == []  # there, but nothing changed
    for typo in ("CameraRolDomain", "CameraRollDomain/Medi"):  # a prefix of a name is not a folder
        with pytest.raises(PathNotFound, match=typo):
            diff(repo, a, b, [typo])


def test_per_domain_counts_rows_and_bytes(repo, phone, tmp_path):
    folder = phone.write_backup(tmp_path / "src", day=0)
    a = import_folder(repo, folder).snapshot
    phone.write_backup(tmp_path / "src", day=3)
    b = import_folder(repo, folder).snapshot
    rows = diff(repo, a, b)
    stats = per_domain(rows)
    assert [s.domain for s in stats] == sorted({r.domain for r in rows if r.domain}) + [None]
    for s in stats:
        mine = [r for r in rows if r.domain == s.domain]
        assert s == DomainStat(
            s.domain,
            added=sum(r.kind == "added" for r in mine),
            removed=sum(r.kind == "removed" for r in mine),
            modified=sum(r.kind == "modified" for r in mine),
            added_bytes=sum(r.new_size for r in mine if r.kind == "added"),
            removed_bytes=sum(r.old_size for r in mine if r.kind == "removed"),
        )
    assert sum(s.added + s.removed + s.modified for s in stats) == len(rows)


def test_a_file_kept_at_another_backup_path_after_an_ios_upgrade_is_one_row(repo, phone, tmp_path):
    """iOS 9 -> 10: every file moves from <fileID> to xx/<fileID>; a file whose bytes stayed is not removed and
    added, and one whose bytes changed is modified."""
    a = import_folder(repo, write_ios8_backup(phone, tmp_path / "ios8", day=0)).snapshot
    b = import_folder(repo, phone.write_backup(tmp_path / "ios17", day=1)).snapshot
    old = {domain_path(c): c for c in load_catalog(repo, a) if c.flags == FLAG_FILE}
    new = {domain_path(c): c for c in load_catalog(repo, b) if c.flags == FLAG_FILE}
    rows = {r.path: r for r in diff(repo, a, b, metadata=True) if r.domain is not None}
    for name in old.keys() & new.keys():
        assert name in rows and rows[name].kind in ("metadata", "modified"), name  # one row, never added+removed
    assert {n for n, r in rows.items() if r.kind == "added"} == new.keys() - old.keys()
    assert {n for n, r in rows.items() if r.kind == "removed"} == old.keys() - new.keys()
    ta, tb = load_tree(a.tree, repo.get_blob), load_tree(b.tree, repo.get_blob)
    moved = {n: (ta[old[n].file_id], tb[f"{new[n].file_id[:2]}/{new[n].file_id}"]) for n in old.keys() & new.keys()}
    changed = {n for n, (was, now) in moved.items() if was.chunks != now.chunks}
    assert {n for n, r in rows.items() if r.kind == "modified"} == changed
    assert changed and changed != old.keys() & new.keys()
