"""Manifest.db, MBFile and the backup plists: real SQLite files in tmp_path, round trips by hypothesis."""

from __future__ import annotations

import hashlib
import plistlib
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phonevault.sync.errors import ManifestInvalid
from phonevault.sync.manifest import (
    FLAG_DIR,
    FLAG_FILE,
    FLAG_SYMLINK,
    S_IFDIR,
    S_IFLNK,
    S_IFREG,
    CatalogEntry,
    RowProblem,
    check_manifest_db,
    file_id,
    read_manifest_db,
    read_manifest_rows,
    write_manifest_db,
)
from phonevault.sync.mbfile import decode_mbfile, encode_mbfile
from phonevault.sync.plists import DeviceInfo, info_plist_bytes, read_info_plist, read_manifest_plist, read_status_plist

LOCKDOWN = {
    "UniqueDeviceID": "0123456789abcdef0123456789abcdef01234567",
    "SerialNumber": "F2LXK0QJN72R",
    "ProductVersion": "17.5.1",
    "ProductType": "iPhone15,2",
    "DeviceName": "Ada's iPhone",
    "BuildVersion": "21F90",
    "InternationalMobileEquipmentIdentity": "356789012345674",
    "PhoneNumber": "+1 (415) 555-0134",
    "IntegratedCircuitCardIdentity": "8901410123456789012",
}


def test_file_id_is_sha1_of_domain_dash_path() -> None:
    assert file_id("HomeDomain", "Library/SMS/sms.db") == "3d0d7e5fb2ce288813306e4d4636395e047a3d28"
    assert file_id("D", "p") == hashlib.sha1(b"D-p").hexdigest()


def entry(domain: str, path: str, flags: int = FLAG_FILE, **kw: object) -> CatalogEntry:
    mode = {FLAG_FILE: S_IFREG | 0o644, FLAG_DIR: S_IFDIR | 0o755, FLAG_SYMLINK: S_IFLNK | 0o755}[flags]
    values: dict = dict(size=10 if flags == FLAG_FILE else 0, mode=mode, mtime=1717236000, protection_class=3)
    values.update(kw)
    return CatalogEntry(file_id(domain, path), domain, path, flags, **values)


def test_manifest_db_has_apples_schema_and_reads_back(tmp_path: Path) -> None:
    entries = [
        entry("HomeDomain", "Library/SMS/sms.db", size=123456),
        entry("HomeDomain", "Library/SMS", FLAG_DIR),
        entry("HomeDomain", "Library/link", FLAG_SYMLINK, target="/var/mobile/elsewhere"),
        entry("CameraRollDomain", "Media/DCIM/100APPLE/IMG_0001.HEIC", size=2_000_000, protection_class=None),
    ]
    db = tmp_path / "Manifest.db"
    write_manifest_db(db, entries)
    conn = sqlite3.connect(db)
    names = {(t, n) for t, n in conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}
    assert names == {
        ("table", "Files"),
        ("table", "Properties"),
        ("index", "FilesDomainIdx"),
        ("index", "FilesRelativePathIdx"),
        ("index", "FilesFlagsIdx"),
    }
    row = conn.execute(
        "SELECT domain, relativePath, flags, file FROM Files WHERE fileID = ?", (entries[0].file_id,)
    ).fetchone()
    conn.close()
    assert row[:3] == ("HomeDomain", "Library/SMS/sms.db", 1)
    archive = plistlib.loads(row[3])
    assert archive["$archiver"] == "NSKeyedArchiver"
    top = archive["$objects"][archive["$top"]["root"].data]
    assert archive["$objects"][top["$class"].data]["$classname"] == "MBFile"
    assert archive["$objects"][top["RelativePath"].data] == "Library/SMS/sms.db"
    assert top["Size"] == 123456 and top["Mode"] == 0o100644 and top["LastModified"] == 1717236000
    assert sorted(read_manifest_db(db), key=lambda e: e.file_id) == sorted(entries, key=lambda e: e.file_id)
    assert not (tmp_path / "Manifest.db-wal").exists() and not (tmp_path / "Manifest.db-shm").exists()


def test_reading_never_writes_beside_the_backup(tmp_path: Path) -> None:
    db = tmp_path / "Manifest.db"
    write_manifest_db(db, [entry("HomeDomain", "a")])
    before = sorted(p.name for p in tmp_path.iterdir())
    db.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        assert [e.relative_path for e in read_manifest_db(db)] == ["a"]
    finally:
        tmp_path.chmod(0o755)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_write_is_deterministic(tmp_path: Path) -> None:
    entries = [entry("AppDomain-com.example", f"Library/Preferences/p{i}.plist", size=i) for i in range(500)]
    write_manifest_db(tmp_path / "a.db", entries)
    write_manifest_db(tmp_path / "b.db", reversed(entries))
    assert (tmp_path / "a.db").read_bytes() == (tmp_path / "b.db").read_bytes()
    write_manifest_db(tmp_path / "a.db", entries)  # overwriting an existing one gives the same bytes too
    assert (tmp_path / "a.db").read_bytes() == (tmp_path / "b.db").read_bytes()


def test_encryption_key_goes_into_the_mbfile(tmp_path: Path) -> None:
    e = entry("HomeDomain", "Library/SMS/sms.db", has_encryption_key=True)
    key = (3).to_bytes(4, "little") + bytes(range(40))
    db = tmp_path / "Manifest.db"
    write_manifest_db(db, [e], extra_mbfile_fields={e.file_id: {"EncryptionKey": key}})
    [(got, mbfile)] = list(read_manifest_rows(db))
    assert got == e and mbfile["EncryptionKey"] == key
    with pytest.raises(ValueError, match="EncryptionKey"):
        write_manifest_db(tmp_path / "x.db", [e])


def test_non_sqlite_file_is_refused_with_reason(tmp_path: Path) -> None:
    db = tmp_path / "Manifest.db"
    db.write_bytes(b"\x8f" * 4096)  # what an encrypted Manifest.db looks like without its key
    with pytest.raises(ManifestInvalid, match="not an SQLite database"):
        read_manifest_db(db)
    with pytest.raises(ManifestInvalid, match="does not exist"):
        read_manifest_db(tmp_path / "missing.db")


def test_missing_files_table_is_named(tmp_path: Path) -> None:
    db = tmp_path / "Manifest.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE Properties (key TEXT PRIMARY KEY, value BLOB)")
    conn.commit()
    conn.close()
    with pytest.raises(ManifestInvalid, match="no Files table"):
        read_manifest_db(db)


def test_undecodable_row_names_its_file_id(tmp_path: Path) -> None:
    db = tmp_path / "Manifest.db"
    write_manifest_db(db, [entry("HomeDomain", "good")])
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO Files VALUES ('ffbad', 'HomeDomain', 'bad', 1, x'00010203')")
    conn.commit()
    conn.close()
    rows = read_manifest_db(db)
    assert next(rows).relative_path == "good"
    with pytest.raises(ManifestInvalid, match="fileID='ffbad'"):
        next(rows)


def test_mbfile_decodes_foreign_shapes() -> None:
    # A device archive may reference NSDictionary/NSString objects and $null; they resolve to plain values.
    archive = {
        "$version": 100000,
        "$archiver": "NSKeyedArchiver",
        "$top": {"root": plistlib.UID(1)},
        "$objects": [
            "$null",
            {
                "$class": plistlib.UID(5),
                "RelativePath": plistlib.UID(2),
                "ExtendedAttributes": plistlib.UID(3),
                "Digest": plistlib.UID(0),
                "Size": 7,
            },
            "Library/x",
            {"NS.keys": [plistlib.UID(4)], "NS.objects": [plistlib.UID(2)], "$class": plistlib.UID(6)},
            {"NS.string": "com.apple.key"},
            {"$classname": "MBFile", "$classes": ["MBFile", "NSObject"]},
            {"$classname": "NSDictionary", "$classes": ["NSDictionary", "NSObject"]},
        ],
    }
    got = decode_mbfile(plistlib.dumps(archive, fmt=plistlib.FMT_BINARY))
    assert got == {
        "RelativePath": "Library/x",
        "ExtendedAttributes": {"com.apple.key": "Library/x"},
        "Digest": None,
        "Size": 7,
    }
    for bad in (b"", b"bplist00junk", plistlib.dumps({"a": 1}, fmt=plistlib.FMT_BINARY)):
        with pytest.raises(ValueError):
            decode_mbfile(bad)


text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
mbfields = st.dictionaries(
    st.sampled_from(["RelativePath", "Target", "Size", "Mode", "Flags", "EncryptionKey", "Birth", "InodeNumber"]),
    st.one_of(text, st.binary(max_size=44), st.integers(0, 2**63 - 1)),
)


@given(mbfields)
def test_mbfile_encode_decode_round_trip(fields: dict) -> None:
    assert decode_mbfile(encode_mbfile(fields)) == fields


@st.composite
def catalog_entries(draw: st.DrawFn) -> list[CatalogEntry]:
    out: dict[str, CatalogEntry] = {}
    for _ in range(draw(st.integers(0, 25))):
        domain = draw(st.sampled_from(["HomeDomain", "CameraRollDomain", "AppDomain-com.ex.app", "MediaDomain"]))
        path = draw(text)
        flags = draw(st.sampled_from([FLAG_FILE, FLAG_DIR, FLAG_SYMLINK]))
        fid = file_id(domain, path)
        out[fid] = CatalogEntry(
            file_id=fid,
            domain=domain,
            relative_path=path,
            flags=flags,
            size=draw(st.integers(0, 2**40)) if flags == FLAG_FILE else 0,
            mode=draw(st.integers(0, 0o177777)),
            mtime=draw(st.integers(0, 2**32)),
            target=draw(st.one_of(st.none(), text.filter(bool))) if flags == FLAG_SYMLINK else None,
            protection_class=draw(st.one_of(st.none(), st.integers(0, 11))),
            has_encryption_key=flags == FLAG_FILE and draw(st.booleans()),
        )
    return list(out.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(catalog_entries())
def test_manifest_db_round_trip(tmp_path: Path, entries: list[CatalogEntry]) -> None:
    keys = {
        e.file_id: {"EncryptionKey": b"\x03\x00\x00\x00" + e.file_id.encode()[:40]}
        for e in entries
        if e.has_encryption_key
    }
    db = tmp_path / "Manifest.db"
    write_manifest_db(db, entries, extra_mbfile_fields=keys)
    assert list(read_manifest_db(db)) == sorted(entries, key=lambda e: e.file_id)


def test_info_plist_as_pymobiledevice3_writes_it_and_reads_back() -> None:
    data = info_plist_bytes(LOCKDOWN, guid=b"\x01" * 16, installed_applications=["com.example.app"])
    assert data.startswith(b"<?xml")
    raw = plistlib.loads(data)
    assert raw["Unique Identifier"] == LOCKDOWN["UniqueDeviceID"].upper()
    assert raw["Target Type"] == "Device" and raw["iTunes Version"] == "10.0.1" and raw["GUID"] == b"\x01" * 16
    assert "MEID" not in raw and raw["IMEI"] == LOCKDOWN["InternationalMobileEquipmentIdentity"]
    info = read_info_plist(data, "Info.plist")
    assert info == DeviceInfo(
        udid=LOCKDOWN["UniqueDeviceID"],
        name="Ada's iPhone",
        product_type="iPhone15,2",
        ios_version="17.5.1",
        build="21F90",
        serial="F2LXK0QJN72R",
        imei="356789012345674",
        meid=None,
        phone_number="+1 (415) 555-0134",
        iccid="8901410123456789012",
    )
    assert DeviceInfo.from_dict(info.to_dict()) == info
    assert "meid" not in info.to_dict()


def test_info_plist_is_read_tolerantly() -> None:
    binary = plistlib.dumps(
        {"Unique Identifier": "ABC", "Device Name": "x", "Product Version": 17}, fmt=plistlib.FMT_BINARY
    )
    info = read_info_plist(binary, "Info.plist")
    assert (info.udid, info.name, info.ios_version, info.serial) == ("ABC", "x", "17", None)
    assert read_info_plist(plistlib.dumps({}), "Info.plist").udid == ""
    for bad in (b"not a plist", plistlib.dumps([1, 2])):
        with pytest.raises(ManifestInvalid, match="Info.plist"):
            read_info_plist(bad, "/b/Info.plist")


def test_manifest_and_status_plists() -> None:
    date = datetime(2024, 6, 1, 10, 0)
    m = read_manifest_plist(
        plistlib.dumps(
            {
                "IsEncrypted": True,
                "Version": "10.0",
                "Date": date,
                "Lockdown": {"ProductVersion": "17.5.1"},
                "ManifestKey": b"k",
            },
            fmt=plistlib.FMT_BINARY,
        ),
        "Manifest.plist",
    )
    assert (m.is_encrypted, m.version, m.date, m.product_version, m.manifest_key) == (
        True,
        "10.0",
        date,
        "17.5.1",
        b"k",
    )
    assert read_manifest_plist(plistlib.dumps({}), "Manifest.plist").is_encrypted is False
    s = read_status_plist(
        plistlib.dumps(
            {"SnapshotState": "finished", "IsFullBackup": False, "Date": date, "UUID": "U", "Version": "3.3"}
        ),
        "Status.plist",
    )
    assert (s.snapshot_state, s.is_full_backup, s.date, s.uuid, s.version, s.finished) == (
        "finished",
        False,
        date,
        "U",
        "3.3",
        True,
    )
    with pytest.raises(ManifestInvalid, match="Status.plist"):
        read_status_plist(b"", "Status.plist")


def test_bytes_and_file_give_the_same_rows_without_a_file(tmp_path: Path) -> None:
    """A Manifest.db from the vault is parsed from its bytes (in memory); a WAL-mode one too."""
    entries = [entry("HomeDomain", f"Library/p{i}.plist", size=i) for i in range(50)]
    db = tmp_path / "Manifest.db"
    write_manifest_db(db, entries)
    assert list(read_manifest_db(db.read_bytes())) == list(read_manifest_db(db))
    image = bytearray(db.read_bytes())
    assert list(read_manifest_db(image, {})) == list(read_manifest_db(db))
    assert image == bytearray()  # consumed: the image is not held twice while rows are read
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    image = db.read_bytes()
    assert image[18:20] == b"\x02\x02"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert list(read_manifest_db(image)) == sorted(entries, key=lambda e: e.file_id)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    check_manifest_db(image)
    for bad, why in ((b"", "shorter"), (b"\x8f" * 4096, "not a database"), (b"SQLite format 3\x00" + bytes(84), "")):
        with pytest.raises(ManifestInvalid, match=f"snap: .*{why}"):
            check_manifest_db(bad, "snap")


def test_undecodable_rows_are_collected_when_asked(tmp_path: Path) -> None:
    db = tmp_path / "Manifest.db"
    write_manifest_db(db, [entry("HomeDomain", "good"), entry("HomeDomain", "zgood")])
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO Files VALUES ('ffbad', 'HomeDomain', 'bad', 1, x'00010203')")
    conn.execute("INSERT INTO Files VALUES ('ffbae', NULL, 'worse', 1, NULL)")
    conn.commit()
    conn.close()
    problems: list[RowProblem] = []
    rows = list(read_manifest_db(db.read_bytes(), {}, problems))
    assert sorted(r.relative_path for r in rows) == ["good", "zgood"]
    assert [(p.file_id, p.domain, p.relative_path) for p in problems] == [
        ("ffbad", "HomeDomain", "bad"),
        ("ffbae", None, "worse"),
    ]
    assert "undecodable" in problems[0].reason


def test_plist_flags_that_are_not_booleans_read_as_unknown() -> None:
    for value in ("yes", "no", 1, 0, b"\x01", [True]):
        m = read_manifest_plist(plistlib.dumps({"IsEncrypted": value}, fmt=plistlib.FMT_BINARY), "/b/Manifest.plist")
        assert m.is_encrypted is None
        assert m.problems == (f"/b/Manifest.plist: IsEncrypted is {value!r} ({type(value).__name__}), not a boolean; "
                              "taken as unknown",)  # fmt: skip
        s = read_status_plist(plistlib.dumps({"IsFullBackup": value}), "Status.plist")
        assert s.is_full_backup is None and len(s.problems) == 1 and "IsFullBackup" in s.problems[0]
    for value in (True, False):
        m = read_manifest_plist(plistlib.dumps({"IsEncrypted": value}), "Manifest.plist")
        assert m.is_encrypted is value and m.problems == ()
    assert read_status_plist(plistlib.dumps({}), "Status.plist").problems == ()
