"""Backups made before iOS 10: Manifest.mbdb (iOS 4–9) and .mdinfo/.mddata pairs (iPhone OS 3), read from real
folders the test rig writes byte by byte from the published layouts, from literal bytes built by hand, and from
damaged input (every cut of a small file, absurd lengths, bad magic, a .mdinfo that is not a plist)."""

from __future__ import annotations

import hashlib
import os
import plistlib
import tracemalloc
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.records import decode_record
from phonevault.sync.catalog import list_dir, load_catalog, select
from phonevault.sync.diff import diff
from phonevault.sync.emulator.legacy import (
    datahash,
    encode_mbdb,
    encode_record,
    ios3_plan,
    ios8_plan,
    ios8_records,
    write_ios3_backup,
    write_ios8_backup,
)
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.errors import EncryptedBackup, LegacyManifestInvalid, ManifestInvalid
from phonevault.sync.layouts import MANIFEST_DB, MBDB, MDINFO, detect_layout
from phonevault.sync.manifest import FLAG_DIR, FLAG_FILE, CatalogEntry, RowProblem, file_id
from phonevault.sync.mbdb import MAGIC, MbdbRecord, iter_records, load_mbdb, mbdb_entries, read_mbdb, record_entry
from phonevault.sync.mdinfo import data_name, read_manifest_files, read_mdinfo, read_mdinfo_folder
from phonevault.sync.mobilesync import import_folder
from phonevault.sync.plists import read_info_plist, read_manifest_plist, read_status_plist
from phonevault.sync.records import BackupMeta, backup_meta
from tests.conftest import reopen


@pytest.fixture(scope="module")
def phone() -> SyntheticPhone:
    return SyntheticPhone(seed=23, size=1 << 20)


def _tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------------------------------- iOS 8 folder


def test_ios8_folder_is_flat_and_reads_back_as_planned(phone: SyntheticPhone, tmp_path: Path) -> None:
    folder = write_ios8_backup(phone, tmp_path, day=0)
    names = {p.name for p in folder.iterdir()}
    assert all(p.is_file() for p in folder.iterdir()), "iOS 4-9 folders have no xx/ subfolders"
    assert {"Info.plist", "Manifest.plist", "Status.plist", "Manifest.mbdb"} <= names
    assert "Manifest.db" not in names

    data = (folder / "Manifest.mbdb").read_bytes()
    assert data[:6] == b"mbdb\x05\x00"
    records = read_mbdb(data, "Manifest.mbdb")
    assert list(records) == ios8_records(phone, 0)
    plan = ios8_plan(phone, 0)
    assert mbdb_entries(data) == plan
    assert {e.flags for e in plan} == {1, 2, 4}  # files, directories and symlinks all travel through the mbdb

    files = {r.file_id: r for r in records if r.mode & 0xF000 == 0x8000}
    assert names - {"Info.plist", "Manifest.plist", "Status.plist", "Manifest.mbdb"} == set(files)
    for fid, r in files.items():
        content = (folder / fid).read_bytes()
        assert len(content) == r.size
        assert hashlib.sha1(content).digest() == r.digest
        assert (folder / fid).stat().st_mtime_ns == r.mtime * 10**9

    info = read_info_plist((folder / "Info.plist").read_bytes(), "Info.plist")
    assert (info.udid, info.ios_version, info.build, info.product_type) == (phone.udid, "8.4", "12H143", "iPhone7,2")
    raw_info = plistlib.loads((folder / "Info.plist").read_bytes())
    assert raw_info["Last Backup Date"] == plistlib.loads((folder / "Manifest.plist").read_bytes())["Date"]
    assert (folder / "Info.plist").read_bytes().startswith(b"<?xml")
    manifest = read_manifest_plist((folder / "Manifest.plist").read_bytes(), "Manifest.plist")
    assert (manifest.is_encrypted, manifest.product_version) == (False, "8.4")
    status = read_status_plist((folder / "Status.plist").read_bytes(), "Status.plist")
    assert status.finished and status.is_full_backup and status.version == "2.4"


def test_ios8_folder_is_deterministic_and_replaces_another_day(phone: SyntheticPhone, tmp_path: Path) -> None:
    a = write_ios8_backup(phone, tmp_path / "a", day=1)
    b = write_ios8_backup(phone, tmp_path / "b", day=0)
    (b / "stray").write_bytes(b"left by someone")
    (b / "ab").mkdir()
    b = write_ios8_backup(phone, tmp_path / "b", day=1)
    assert _tree(a) == _tree(b)
    assert mbdb_entries((b / "Manifest.mbdb").read_bytes()) == ios8_plan(phone, 1) != ios8_plan(phone, 0)


def test_the_record_of_a_file_names_its_flat_file() -> None:
    # The iPhone Wiki's example: SHA1('HomeDomain-Library/SMS/sms.db').
    assert file_id("HomeDomain", "Library/SMS/sms.db") == "3d0d7e5fb2ce288813306e4d4636395e047a3d28"


# --------------------------------------------------------------------------------------------------- iPhone OS 3


def test_ios3_folder_reads_back_as_planned(phone: SyntheticPhone, tmp_path: Path) -> None:
    folder = write_ios3_backup(phone, tmp_path, day=0)
    names = {p.name for p in folder.iterdir()}
    assert "Status.plist" not in names and "Manifest.mbdb" not in names  # iPhone OS 3 wrote neither
    catalog = read_mdinfo_folder(folder)
    assert catalog.problems == () and catalog.encrypted == 0
    plan = ios3_plan(phone, 0)
    assert list(catalog.entries) == plan
    assert {e.flags for e in plan} == {FLAG_FILE}
    assert names == {"Info.plist", "Manifest.plist"} | {f"{e.file_id}.{x}" for e in plan for x in ("mdinfo", "mddata")}

    info = read_info_plist((folder / "Info.plist").read_bytes(), "Info.plist")
    assert (info.udid, info.ios_version, info.build, info.product_type) == (phone.udid, "3.1.3", "7E18", "iPhone2,1")
    assert "Last Backup Date" in plistlib.loads((folder / "Info.plist").read_bytes())

    manifest = (folder / "Manifest.plist").read_bytes()
    assert manifest.startswith(b"<?xml")
    listed, problems = read_manifest_files(manifest, "Manifest.plist")
    assert problems == [] and set(listed) == {e.file_id for e in plan}
    for e in plan:
        content = (folder / data_name(e.file_id)).read_bytes()
        assert len(content) == e.size == listed[e.file_id]["FileLength"]
        mdinfo = read_mdinfo((folder / f"{e.file_id}.mdinfo").read_bytes(), f"{e.file_id}.mdinfo")
        assert (mdinfo.domain, mdinfo.path, mdinfo.greylist) == (e.domain, e.relative_path, False)
        assert listed[e.file_id]["DataHash"] == datahash(content, e.relative_path, e.domain, mdinfo.version)


def test_ios3_folder_is_deterministic(phone: SyntheticPhone, tmp_path: Path) -> None:
    assert _tree(write_ios3_backup(phone, tmp_path / "a", 1)) == _tree(write_ios3_backup(phone, tmp_path / "b", 1))


def test_legacy_catalogs_browse_like_modern_ones(phone: SyntheticPhone, tmp_path: Path) -> None:
    modern = ios8_plan(phone, 0)
    flat = mbdb_entries((write_ios8_backup(phone, tmp_path / "8", 0) / "Manifest.mbdb").read_bytes())
    pairs = read_mdinfo_folder(write_ios3_backup(phone, tmp_path / "3", 0)).entries
    assert list_dir(flat) == list_dir(modern)
    # iPhone OS 3 listed regular files only: a domain holding nothing but a symlink is not there.
    assert {x.name for x in list_dir(pairs)} == {e.domain for e in modern if e.flags == FLAG_FILE}
    for entries in (flat, pairs):
        assert list_dir(entries, "CameraRollDomain/Media/DCIM") == list_dir(modern, "CameraRollDomain/Media/DCIM")
        assert [(c.file_id, c.size) for c in select(entries, "CameraRollDomain/Media")] == [
            (c.file_id, c.size) for c in select(modern, "CameraRollDomain/Media")
        ]


def _pair(folder: Path, domain: str, path: str, content: bytes, **meta: object) -> str:
    fid = file_id(domain, path)
    inner = plistlib.dumps({"Domain": domain, "Path": path, **meta}, fmt=plistlib.FMT_BINARY)
    outer = {"AuthVersion": "1.0", "IsEncrypted": False, "Metadata": inner}
    (folder / f"{fid}.mdinfo").write_bytes(plistlib.dumps(outer, fmt=plistlib.FMT_BINARY))
    (folder / f"{fid}.mddata").write_bytes(content)
    return fid


def test_mdinfo_metadata_mode_and_time_are_used_when_present(tmp_path: Path) -> None:
    fid = _pair(tmp_path, "HomeDomain", "Library/Notes/notes.db", b"x" * 5, Mode=0o100600, ModificationTime=1250000000)
    (catalog_entry,) = read_mdinfo_folder(tmp_path).entries
    assert catalog_entry == CatalogEntry(
        fid, "HomeDomain", "Library/Notes/notes.db", FLAG_FILE, 5, 0o100600, 1250000000
    )


def test_mdinfo_name_beside_metadata_is_read_too(tmp_path: Path) -> None:
    outer = {"Domain": "MediaDomain", "Path": "Media/a.jpg", "Metadata": plistlib.dumps({"Version": "4.0"})}
    info = read_mdinfo(plistlib.dumps(outer, fmt=plistlib.FMT_BINARY), "x.mdinfo")
    assert (info.domain, info.path) == ("MediaDomain", "Media/a.jpg")


def test_mdinfo_folder_names_what_it_cannot_use(tmp_path: Path) -> None:
    good = _pair(tmp_path, "HomeDomain", "Library/a.plist", b"abc")
    lost = _pair(tmp_path, "HomeDomain", "Library/b.plist", b"abcd")
    os.unlink(tmp_path / data_name(lost))
    misnamed = "0" * 40
    os.rename(tmp_path / f"{_pair(tmp_path, 'HomeDomain', 'Library/c', b'')}.mdinfo", tmp_path / f"{misnamed}.mdinfo")
    secret = {"AuthVersion": "1.0", "IsEncrypted": True, "Metadata": os.urandom(80)}
    (tmp_path / f"{'1' * 40}.mdinfo").write_bytes(plistlib.dumps(secret, fmt=plistlib.FMT_BINARY))
    (tmp_path / "notes.mdinfo").write_bytes(b"whatever")
    os.symlink("/dev/zero", tmp_path / f"{'2' * 40}.mdinfo")
    (tmp_path / "Manifest.plist").write_bytes(b"\x00 not a plist")
    catalog = read_mdinfo_folder(tmp_path)
    assert [e.file_id for e in catalog.entries] == sorted([good, lost, misnamed])
    assert catalog.encrypted == 1
    text = "\n".join(catalog.problems)
    assert lost not in text  # a missing body is the import's to name (as for every layout), not the catalog's
    assert next(e.size for e in catalog.entries if e.file_id == lost) == 0  # no Manifest.plist FileLength to use
    assert f"{misnamed}.mdinfo: its name is not the SHA-1 of HomeDomain-Library/c" in text
    assert "notes.mdinfo: not named by a fileID" in text
    assert "1 .mdinfo file(s) encrypted by the phone" in text
    assert "2" * 40 not in text  # a link is not read, nor listed: the import names every file that is no regular file
    assert "Manifest.plist: Manifest.plist is not a plist" in text


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"this is not a plist at all", ".mdinfo is not a plist"),
        (plistlib.dumps(["a", "list"]), ".mdinfo is a plist list, not a dict"),
        (plistlib.dumps({"AuthVersion": "1.0"}), ".mdinfo has no Metadata data"),
        (plistlib.dumps({"Metadata": b"\x00garbage"}), ".mdinfo Metadata is not a plist"),
        (plistlib.dumps({"Metadata": plistlib.dumps({"Domain": "HomeDomain"})}), "names no Domain and Path"),
    ],
)
def test_unusable_mdinfo_is_refused_in_one_line_naming_it(tmp_path: Path, content: bytes, reason: str) -> None:
    _pair(tmp_path, "HomeDomain", "Library/fine.plist", b"fine")
    bad = tmp_path / f"{'e' * 40}.mdinfo"
    bad.write_bytes(content)
    with pytest.raises(LegacyManifestInvalid) as err:
        read_mdinfo_folder(tmp_path)
    assert err.value.path == str(bad) and err.value.offset is None
    assert reason in str(err.value) and str(bad) in str(err.value) and "\n" not in str(err.value)


def test_manifest_plist_whose_data_was_altered_is_named(phone: SyntheticPhone, tmp_path: Path) -> None:
    folder = write_ios3_backup(phone, tmp_path, 0)
    d = plistlib.loads((folder / "Manifest.plist").read_bytes())
    d["Data"] = plistlib.dumps({"Files": {}}, fmt=plistlib.FMT_BINARY)
    listed, problems = read_manifest_files(plistlib.dumps(d), "Manifest.plist")
    assert listed == {} and problems == [
        "Manifest.plist: AuthSignature is not the SHA-1 of Data (the file list was altered)"
    ]


# --------------------------------------------------------------------------------------------------- known bytes

# Two records written out by hand from the layout: a domain's root directory and one file with one property.
VECTOR = (
    b"mbdb\x05\x00"
    # record 1: HomeDomain, path "" (directory), no target/digest/key
    b"\x00\x0aHomeDomain"
    b"\x00\x00"
    b"\xff\xff"
    b"\xff\xff"
    b"\xff\xff"
    b"\x41\xed"  # mode 040755
    b"\x00\x00\x00\x00\x00\x00\x30\x39"  # inode 12345
    b"\x00\x00\x01\xf5"
    b"\x00\x00\x01\xf5"  # uid, gid 501
    b"\x4a\x8c\x5a\x00"
    b"\x4a\x8c\x5a\x01"
    b"\x4a\x8c\x5a\x02"  # mtime, ctime, btime 1250712064 …
    b"\x00\x00\x00\x00\x00\x00\x00\x00"  # size 0
    b"\x00"
    b"\x00"  # protection class 0, no properties
    # record 2: HomeDomain/Library/SMS/sms.db, a 3-byte digest, 2 bytes of key, one property
    b"\x00\x0aHomeDomain"
    b"\x00\x12Library/SMS/sms.db"
    b"\xff\xff"
    b"\x00\x03\xaa\xbb\xcc"
    b"\x00\x02\x01\x02"
    b"\x81\xa4"  # mode 0100644
    b"\x00\x00\x00\x01\x00\x00\x00\x02"  # inode 2**32 + 2
    b"\x00\x00\x01\xf5"
    b"\x00\x00\x01\xf5"
    b"\x50\x00\x00\x00"
    b"\x50\x00\x00\x01"
    b"\x50\x00\x00\x02"
    b"\x00\x00\x00\x00\x00\x01\x00\x00"  # size 65536
    b"\x04"
    b"\x01"  # protection class 4, one property
    b"\x00\x0ecom.apple.test"
    b"\x00\x03\x00\xff\x01"
)

VECTOR_RECORDS = (
    MbdbRecord("HomeDomain", "", None, None, None, 0o40755, 12345, 501, 501, 1250712064, 1250712065, 1250712066, 0, 0),
    MbdbRecord(
        "HomeDomain",
        "Library/SMS/sms.db",
        None,
        b"\xaa\xbb\xcc",
        b"\x01\x02",
        0o100644,
        2**32 + 2,
        501,
        501,
        0x50000000,
        0x50000001,
        0x50000002,
        65536,
        4,
        ((b"com.apple.test", b"\x00\xff\x01"),),
    ),
)
RECORD_ENDS = (6, 6 + 60, len(VECTOR))  # where a record ends: the only places a cut leaves a well-formed file


def test_literal_bytes_decode_field_by_field() -> None:
    assert read_mbdb(VECTOR) == VECTOR_RECORDS
    assert encode_mbdb(VECTOR_RECORDS) == VECTOR
    assert len(encode_record(VECTOR_RECORDS[0])) == RECORD_ENDS[1] - RECORD_ENDS[0]
    sms = "3d0d7e5fb2ce288813306e4d4636395e047a3d28"
    root = file_id("HomeDomain", "")
    assert mbdb_entries(VECTOR) == sorted(
        [
            CatalogEntry(root, "HomeDomain", "", FLAG_DIR, 0, 0o40755, 1250712064, None, 0, False),
            CatalogEntry(
                sms, "HomeDomain", "Library/SMS/sms.db", FLAG_FILE, 65536, 0o100644, 0x50000000, None, 4, True
            ),
        ],
        key=lambda e: e.file_id,
    )


def test_absent_path_reads_as_the_domain_root() -> None:
    data = VECTOR[:18] + b"\xff\xff" + VECTOR[20:66]
    assert read_mbdb(data)[0].path == ""


# --------------------------------------------------------------------------------------------------- damage


def test_every_cut_is_refused_in_one_line_or_is_a_shorter_file() -> None:
    for cut in range(len(VECTOR)):
        try:
            records = read_mbdb(VECTOR[:cut], "Manifest.mbdb")
        except LegacyManifestInvalid as exc:
            assert cut not in RECORD_ENDS
            assert exc.offset is not None and 0 <= exc.offset <= cut
            assert "\n" not in str(exc) and str(exc).startswith("Manifest.mbdb: ")
            assert "damaged or truncated" in str(exc) or "header" in str(exc) or "not a Manifest.mbdb" in str(exc)
        else:
            assert cut in RECORD_ENDS, f"a cut at byte {cut} was taken as a whole file"
            assert records == VECTOR_RECORDS[: RECORD_ENDS.index(cut)]


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "0 bytes, shorter than its 6-byte header"),
        (b"mbdx\x02\x00\x00\x00\x00\x00", "not a Manifest.mbdb: it starts with b'mbdx'"),
        (b"SQLite format 3\x00", "not a Manifest.mbdb"),
        (b"mbdb\x04\x00", "version 4.0; only 5.0"),
    ],
)
def test_bad_header_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(LegacyManifestInvalid, match=reason) as err:
        read_mbdb(data, "Manifest.mbdb")
    assert isinstance(err.value, ManifestInvalid)  # refused wherever an unreadable Manifest.db is


def test_an_absurd_string_length_is_refused_without_allocating_it() -> None:
    data = MAGIC + b"\xff\xfe" + b"0123456789"  # a 65 534-byte domain, 10 bytes left
    tracemalloc.start()
    try:
        with pytest.raises(ManifestInvalid) as err:
            read_mbdb(data, "Manifest.mbdb")
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "record 1 (byte 6): domain of 65534 bytes at byte 6, but only 10 bytes remain" in str(err.value)
    assert isinstance(err.value, LegacyManifestInvalid) and err.value.offset == 6
    assert peak < 64 << 10


def test_load_mbdb_reads_only_a_regular_file_of_bounded_size(tmp_path: Path) -> None:
    path = tmp_path / "Manifest.mbdb"
    path.write_bytes(VECTOR)
    assert load_mbdb(path) == VECTOR
    with pytest.raises(ManifestInvalid, match="larger than 10 bytes"):
        load_mbdb(path, limit=10)
    os.symlink("/dev/zero", tmp_path / "link")
    for odd in (tmp_path / "link", tmp_path):
        with pytest.raises(ManifestInvalid, match="not a regular file"):
            load_mbdb(odd)


def test_more_records_than_the_limit_are_refused() -> None:
    data = encode_mbdb(VECTOR_RECORDS * 2)
    assert len(read_mbdb(data, max_records=4)) == 4
    with pytest.raises(ManifestInvalid, match="more than 3 records"):
        read_mbdb(data, max_records=3)


def test_text_that_is_not_utf8_and_a_missing_domain_are_refused() -> None:
    bad_path = MAGIC + b"\x00\x01H" + b"\x00\x02\xff\xfe" + VECTOR[20:66]
    with pytest.raises(ManifestInvalid, match="path is not UTF-8"):
        read_mbdb(bad_path)
    with pytest.raises(ManifestInvalid, match="names no domain"):
        read_mbdb(MAGIC + b"\xff\xff" + VECTOR[18:66])


def test_a_record_of_no_known_kind_is_named_or_refused() -> None:
    odd = MbdbRecord("HomeDomain", "dev/fifo", None, None, None, 0o10644, 1, 501, 501, 0, 0, 0, 0, 0)
    data = encode_mbdb([*VECTOR_RECORDS, odd])
    with pytest.raises(ManifestInvalid, match=r"record 3 \(HomeDomain/dev/fifo\): mode 0x11a4 is not a file"):
        mbdb_entries(data)
    problems: list[RowProblem] = []
    assert len(mbdb_entries(data, problems=problems)) == 2
    assert problems == [
        RowProblem(odd.file_id, "HomeDomain", "dev/fifo", "mode 0x11a4 is not a file, directory or symlink")
    ]
    with pytest.raises(ValueError):
        record_entry(odd)


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_arbitrary_bytes_after_the_header_give_records_or_the_typed_error(tail: bytes) -> None:
    try:
        for _ in iter_records(MAGIC + tail):
            pass
    except ManifestInvalid as exc:
        assert "\n" not in str(exc)


@given(st.lists(st.tuples(st.integers(0, len(VECTOR) - 1), st.integers(0, 255)), min_size=1, max_size=6))
@settings(max_examples=500)
def test_damaged_bytes_of_a_real_file_give_records_or_the_typed_error(edits: list[tuple[int, int]]) -> None:
    data = bytearray(VECTOR)
    for at, value in edits:
        data[at] = value
    try:
        read_mbdb(bytes(data))
    except ManifestInvalid as exc:
        assert "\n" not in str(exc)


# --------------------------------------------------------------------------------------------------- round trips

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
_blob = st.none() | st.binary(max_size=48)
_u32 = st.integers(0, 2**32 - 1)
records = st.builds(
    MbdbRecord,
    domain=_text,
    path=_text,
    target=st.none() | _text,
    digest=_blob,
    key=_blob,
    mode=st.integers(0, 0xFFFF),
    inode=st.integers(0, 2**64 - 1),
    uid=_u32,
    gid=_u32,
    mtime=_u32,
    ctime=_u32,
    btime=_u32,
    size=st.integers(0, 2**64 - 1),
    protection_class=st.integers(0, 255),
    properties=st.lists(st.tuples(_blob, _blob), max_size=4).map(tuple),
)


@given(st.lists(records, max_size=8))
@settings(max_examples=200)
def test_encode_then_decode_is_identity(rs: list[MbdbRecord]) -> None:
    data = encode_mbdb(rs)
    assert read_mbdb(data) == tuple(rs)
    assert encode_mbdb(read_mbdb(data)) == data


# --------------------------------------------------------------------------------------------------- in the vault


def _names(catalog) -> list[tuple]:
    return [(c.file_id, c.domain, c.relative_path, c.flags, c.size, c.mode, c.mtime) for c in catalog]


@pytest.mark.parametrize("gen", ["8", "3"])
def test_an_imported_legacy_folder_lists_as_planned_from_the_cache_and_from_the_vault(repo, phone, tmp_path, gen):
    write, plan, layout = (write_ios8_backup, ios8_plan, MBDB) if gen == "8" else (write_ios3_backup, ios3_plan, MDINFO)
    folder = write(phone, tmp_path / "src", 0)
    r = import_folder(repo, folder)
    assert r.problems == []
    assert backup_meta(r.snapshot).layout == layout.name
    warm = load_catalog(repo, r.snapshot)  # what the import cached
    cold_repo = reopen(repo, tmp_path / "cold")  # no cache: read from the snapshot's own Manifest.mbdb / .mdinfo
    try:
        cold = load_catalog(cold_repo, r.snapshot)
        again = load_catalog(cold_repo, r.snapshot)  # and now from the cache it filled
    finally:
        cold_repo.close()
    expected = [(e.file_id, e.domain, e.relative_path, e.flags, e.size, e.mode, e.mtime) for e in plan(phone, 0)]
    assert _names(warm) == _names(cold) == _names(again) == expected
    assert warm.layout is cold.layout is layout and warm.problems == cold.problems == ()


def test_ios3_problems_are_the_same_from_the_folder_and_from_the_vault(repo, phone, tmp_path):
    folder = write_ios3_backup(phone, tmp_path / "src", 0)
    misnamed = sorted(folder.glob("*.mdinfo"))[0]
    os.rename(misnamed, folder / f"{'0' * 40}.mdinfo")
    os.rename(folder / data_name(misnamed.stem), folder / data_name("0" * 40))
    r = import_folder(repo, folder)
    assert any("its name is not the SHA-1" in p for p in r.problems)
    cold_repo = reopen(repo, tmp_path / "cold")
    try:
        assert load_catalog(cold_repo, r.snapshot).problems == load_catalog(repo, r.snapshot).problems != ()
    finally:
        cold_repo.close()


def test_an_ios3_diff_names_files_not_their_mdinfo(repo, phone, tmp_path):
    folder = write_ios3_backup(phone, tmp_path / "src", 0)
    a = import_folder(repo, folder).snapshot
    write_ios3_backup(phone, tmp_path / "src", 1)
    b = import_folder(repo, folder).snapshot
    rows = diff(repo, a, b)
    old = {e.file_id: e for e in ios3_plan(phone, 0)}
    new = {e.file_id: e for e in ios3_plan(phone, 1)}
    name = {k: f"{e.domain}/{e.relative_path}" for k, e in {**old, **new}.items()}
    changed = {name[k] for k in old.keys() ^ new.keys()} | {
        name[k] for k in old.keys() & new.keys() if (old[k].size, old[k].mtime) != (new[k].size, new[k].mtime)
    }
    assert {r.path for r in rows if "/" in r.path} == changed and changed
    assert not [r for r in rows if r.path.endswith(".mdinfo")]  # each is its file's own row, not a second one
    assert {r.path for r in rows if "/" not in r.path} <= {"Info.plist", "Manifest.plist"}


def test_the_layout_is_detected_newest_first_and_recorded(tmp_path):
    assert detect_layout(tmp_path) is None
    (tmp_path / f"{'a' * 40}.mdinfo").write_bytes(b"")
    assert detect_layout(tmp_path) is MDINFO
    (tmp_path / "Manifest.mbdb").write_bytes(b"")
    assert detect_layout(tmp_path) is MBDB
    (tmp_path / "Manifest.db").write_bytes(b"")
    assert detect_layout(tmp_path) is MANIFEST_DB
    # A BackupMeta of format 1 predates layouts: every such snapshot was imported from a Manifest.db.
    assert decode_record(BackupMeta, msgpack.packb([1, True, "9.3", None, None, None, None, 0]), "x").layout == (
        MANIFEST_DB.name
    )


def test_an_encrypted_ios3_backup_is_stored_but_not_browsed(repo, phone, tmp_path):
    folder = write_ios3_backup(phone, tmp_path / "src", 0)
    manifest = plistlib.loads((folder / "Manifest.plist").read_bytes())
    (folder / "Manifest.plist").write_bytes(plistlib.dumps({**manifest, "IsEncrypted": True}))
    for path in folder.glob("*.mdinfo"):  # names encrypted with the backup password: unreadable here
        outer = {"AuthVersion": "1.0", "IsEncrypted": True, "Metadata": hashlib.sha256(path.name.encode()).digest()}
        path.write_bytes(plistlib.dumps(outer, fmt=plistlib.FMT_BINARY))
    r = import_folder(repo, folder)
    assert backup_meta(r.snapshot).encrypted and r.problems == []
    with pytest.raises(EncryptedBackup):
        load_catalog(repo, r.snapshot)


@given(size=st.integers(0, 1 << 40), have=st.integers(0, 1 << 40), keyed=st.booleans())
@settings(max_examples=300)
def test_a_flat_file_is_accepted_at_its_size_or_its_padded_size_only(size: int, have: int, keyed: bool) -> None:
    fid = "c" * 40
    problems = MBDB.compare({fid: have}, {fid: size}, {fid} if keyed else set())
    padded = size + 16 - size % 16  # PKCS#7 always adds 1 to 16 bytes (iphone-dataprotection backup4.py strips them)
    assert (problems == []) == (have == (padded if keyed else size))
    assert MBDB.compare({fid: padded if keyed else size}, {fid: size}, {fid} if keyed else set()) == []
