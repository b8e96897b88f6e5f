"""The synthetic phone: realistic content, deterministic days, backup folders fresh = incremental, iOS encryption."""

from __future__ import annotations

import collections
import hashlib
import plistlib
import sqlite3
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.sync.emulator.__main__ import main
from phonevault.sync.emulator.phone import MANY_FILES, SyntheticPhone
from phonevault.sync.ioscrypto import KEYBAG_CLASSES, encrypt, encrypted_size, password_key, wrapped_key
from phonevault.sync.manifest import FLAG_DIR, FLAG_FILE, file_id, read_manifest_db, read_manifest_rows
from phonevault.sync.plists import read_info_plist, read_manifest_plist, read_status_plist

MiB = 2**20


@pytest.fixture(scope="module")
def phone() -> SyntheticPhone:
    return SyntheticPhone(seed=7, size=16 * MiB)


def body(phone: SyntheticPhone, f) -> bytes:
    pieces = list(phone.open(f))
    assert all(len(p) <= MiB for p in pieces)
    return b"".join(pieces)


def tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_dir():
            h.update(f"d {rel}\n".encode())
        else:
            h.update(f"f {rel} {path.stat().st_mtime_ns} {hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def test_identity_is_stable_per_seed() -> None:
    a, b, c = SyntheticPhone(1), SyntheticPhone(1), SyntheticPhone(2)
    assert a.udid == b.udid != c.udid
    assert len(a.udid) == 40 and a.udid == a.udid.lower() and int(a.udid, 16) >= 0
    values = a.lockdown_values()
    assert values == b.lockdown_values()
    assert values["UniqueDeviceID"] == a.udid and values["DeviceClass"] == "iPhone"
    assert values["ProductType"].startswith("iPhone") and values["ProductVersion"].count(".") >= 1
    for key in ("BuildVersion", "SerialNumber", "InternationalMobileEquipmentIdentity", "PhoneNumber", "UniqueChipID"):
        assert values[key]
    imei = values["InternationalMobileEquipmentIdentity"]
    digits = [int(d) * (2 if i % 2 else 1) for i, d in enumerate(imei)]
    assert len(imei) == 15 and sum(d - 9 if d > 9 else d for d in digits) % 10 == 0  # a valid Luhn check digit


def test_day0_content_is_a_realistic_mix(phone: SyntheticPhone) -> None:
    files = phone.files(0)
    kinds = collections.Counter(f.kind for f in files)
    total = sum(f.entry.size for f in files if f.entry.flags == FLAG_FILE)
    assert 0.9 * phone.size <= total <= 1.1 * phone.size
    assert kinds["heic"] + kinds["jpg"] >= 3 and kinds["thumb"] >= 3
    assert kinds["plist-bin"] + kinds["plist-xml"] >= 16 * MiB // (32 * 1024) and kinds["plist-xml"] > 0
    assert kinds["dir"] > 10 and kinds["symlink"] >= 1
    entries = [f.entry for f in files]
    assert len({e.file_id for e in entries}) == len(entries)
    for e in entries:
        assert e.file_id == file_id(e.domain, e.relative_path)
        if e.flags == FLAG_FILE:
            parent = e.relative_path.rsplit("/", 1)[0]
            assert any(d.flags == FLAG_DIR and (d.domain, d.relative_path) == (e.domain, parent) for d in entries)
            break
    heic = next(f for f in files if f.kind == "heic")
    assert heic.entry.domain == "CameraRollDomain" and heic.entry.relative_path.startswith("Media/DCIM/1")
    data = body(phone, heic)
    assert len(data) == heic.entry.size and 1_500_000 <= heic.entry.size <= 4_000_000 and data[4:12] == b"ftypheic"
    jpg = next(f for f in files if f.kind in ("jpg", "thumb"))
    data = body(phone, jpg)
    assert data[:4] == b"\xff\xd8\xff\xe1" and data.endswith(b"\xff\xd9")
    plist = next(f for f in files if f.kind == "plist-bin")
    assert isinstance(plistlib.loads(body(phone, plist)), dict) and len(body(phone, plist)) == plist.entry.size
    xml = next(f for f in files if f.kind == "plist-xml")
    assert body(phone, xml).startswith(b"<?xml") and isinstance(plistlib.loads(body(phone, xml)), dict)


def test_databases_are_real_sqlite(phone: SyntheticPhone, tmp_path: Path) -> None:
    by_path = {(f.entry.domain, f.entry.relative_path): f for f in phone.files(0)}
    for key, query in (
        (("HomeDomain", "Library/SMS/sms.db"), "SELECT count(*) FROM message"),
        (("CameraRollDomain", "Media/PhotoData/Photos.sqlite"), "SELECT count(*) FROM ZASSET"),
        (("HomeDomain", "Library/AddressBook/AddressBook.sqlitedb"), "SELECT count(*) FROM ABPerson"),
    ):
        f = by_path[key]
        copy = tmp_path / key[1].rsplit("/", 1)[1]
        copy.write_bytes(body(phone, f))
        assert copy.stat().st_size == f.entry.size
        (count,) = sqlite3.connect(copy).execute(query).fetchone()
        assert count > 0
    photos = sqlite3.connect(tmp_path / "Photos.sqlite")
    names = {n for (n,) in photos.execute("SELECT ZFILENAME FROM ZASSET")}
    originals = {k[1].rsplit("/", 1)[1] for k, f in by_path.items() if f.kind in ("heic", "jpg", "video")}
    assert names == originals


def test_days_change_a_little_and_keep_the_rest(phone: SyntheticPhone) -> None:
    day0 = {(f.entry.domain, f.entry.relative_path): f for f in phone.files(0) if f.entry.flags == FLAG_FILE}
    day1 = {(f.entry.domain, f.entry.relative_path): f for f in phone.files(1) if f.entry.flags == FLAG_FILE}
    new = day1.keys() - day0.keys()
    gone = day0.keys() - day1.keys()
    changed = {k for k in day0.keys() & day1.keys() if day0[k] != day1[k]}
    assert any(k[1].startswith("Media/DCIM/") for k in new)
    assert any(k[1].startswith("Media/DCIM/") for k in gone)
    assert any(day1[k].kind in ("heic", "jpg") for k in changed)  # the edited photo
    assert sum(1 for k in changed if day1[k].kind.startswith("plist")) >= 3
    assert ("HomeDomain", "Library/SMS/sms.db") in changed
    assert len(changed) < 0.05 * len(day0)
    for k in list(day0.keys() & day1.keys() - changed)[:50]:
        assert body(phone, day0[k]) == body(phone, day1[k])
    edited = next(k for k in changed if day1[k].kind in ("heic", "jpg"))
    assert (
        body(phone, day0[edited]) != body(phone, day1[edited]) and day1[edited].entry.mtime > day0[edited].entry.mtime
    )
    # SQLite changes in place: same page size, a few dozen pages touched (inserts reach the guid and handle indexes),
    # the rest byte-identical — what small CDC chunks rely on. A rebuilt database would differ everywhere.
    sms0, sms1 = (body(phone, d[("HomeDomain", "Library/SMS/sms.db")]) for d in (day0, day1))
    assert sms0[16:18] == sms1[16:18] == b"\x10\x00" and len(sms1) >= len(sms0)
    pages = [sms0[i : i + 4096] != sms1[i : i + 4096] for i in range(0, len(sms0), 4096)]
    assert sum(pages) <= 40 and sum(pages) < len(pages) // 2, f"{sum(pages)} of {len(pages)} pages changed"
    assert SyntheticPhone(seed=7, size=16 * MiB).files(1) == phone.files(1)  # deterministic from the seed


def test_write_backup_fresh_equals_incremental(phone: SyntheticPhone, tmp_path: Path) -> None:
    inc = phone.write_backup(tmp_path / "inc", 0)
    assert inc == tmp_path / "inc" / phone.udid
    untouched = next(f for f in phone.files(2) if f.kind == "plist-bin" and f.rev == 0)
    untouched_path = inc / untouched.entry.file_id[:2] / untouched.entry.file_id
    inode = untouched_path.stat().st_ino
    (inc / "ab" / "stray-file").write_bytes(b"left over")
    phone.write_backup(tmp_path / "inc", 2)
    fresh = SyntheticPhone(seed=7, size=16 * MiB).write_backup(tmp_path / "fresh", 2)
    assert tree_hash(inc) == tree_hash(fresh)
    assert untouched_path.stat().st_ino == inode  # not rewritten

    files = phone.files(2)
    entries = list(read_manifest_db(fresh / "Manifest.db"))
    assert entries == sorted((f.entry for f in files), key=lambda e: e.file_id)
    on_disk = {p.name for p in fresh.glob("??/*")}
    assert on_disk == {f.entry.file_id for f in files if f.entry.flags == FLAG_FILE}
    some = next(f for f in files if f.kind == "heic")
    some_path = fresh / some.entry.file_id[:2] / some.entry.file_id
    assert some_path.read_bytes() == body(phone, some) and some_path.stat().st_mtime == some.entry.mtime

    info = read_info_plist((fresh / "Info.plist").read_bytes(), "Info.plist")
    assert info == phone.device_info()
    manifest = read_manifest_plist((fresh / "Manifest.plist").read_bytes(), "Manifest.plist")
    assert not manifest.is_encrypted and manifest.version == "10.0" and manifest.keybag
    assert manifest.product_version == phone.lockdown_values()["ProductVersion"]
    status = read_status_plist((fresh / "Status.plist").read_bytes(), "Status.plist")
    assert status.finished and status.version == "3.3" and status.is_full_backup is False


def parse_keybag(blob: bytes) -> tuple[dict[bytes, object], dict[int, dict[bytes, object]]]:
    header: dict[bytes, object] = {}
    classes: dict[int, dict[bytes, object]] = {}
    current: dict[bytes, object] | None = None
    pos = 0
    while pos < len(blob):
        tag, length = blob[pos : pos + 4], struct.unpack(">I", blob[pos + 4 : pos + 8])[0]
        value: object = blob[pos + 8 : pos + 8 + length]
        pos += 8 + length
        if length == 4:
            value = struct.unpack(">I", value)[0]  # type: ignore[arg-type]
        if tag == b"UUID" and b"UUID" in header:
            current = {}
        target = header if current is None else current
        target[tag] = value
        if current is not None and tag == b"CLAS":
            classes[value] = current  # type: ignore[index]
    return header, classes


def decrypt(key: bytes, data: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.CBC(b"\x00" * 16)).decryptor()
    unpad = padding.PKCS7(128).unpadder()
    return unpad.update(dec.update(data) + dec.finalize()) + unpad.finalize()


def test_encrypted_backup_opens_with_the_password(tmp_path: Path) -> None:
    phone = SyntheticPhone(seed=3, size=8 * MiB, password="correct horse", kdf_iterations=2000)
    folder = phone.write_backup(tmp_path, 1)
    manifest = read_manifest_plist((folder / "Manifest.plist").read_bytes(), "Manifest.plist")
    assert manifest.is_encrypted and manifest.manifest_key and manifest.keybag
    header, classes = parse_keybag(manifest.keybag)
    assert header[b"DPIC"] == 2000 and len(classes) >= 5
    key = password_key("correct horse", header[b"DPSL"], header[b"DPIC"], header[b"SALT"], header[b"ITER"])
    class_keys = {c: aes_key_unwrap(key, k[b"WPKY"]) for c, k in classes.items() if k[b"WRAP"] & 2}
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidUnwrap: a wrong password cannot unwrap
        aes_key_unwrap(
            password_key("wrong", header[b"DPSL"], 2000, header[b"SALT"], header[b"ITER"]), classes[4][b"WPKY"]
        )

    pclass = struct.unpack("<I", manifest.manifest_key[:4])[0]
    db_key = aes_key_unwrap(class_keys[pclass], manifest.manifest_key[4:])
    with pytest.raises(Exception):  # noqa: B017 - ManifestInvalid: the encrypted file is not SQLite
        read_manifest_db(folder / "Manifest.db")
    plain = tmp_path / "Manifest.plain.db"
    plain.write_bytes(decrypt(db_key, (folder / "Manifest.db").read_bytes()))
    rows = {e.file_id: (e, mb) for e, mb in read_manifest_rows(plain)}
    phone_file = next(f for f in phone.files(1) if f.entry.relative_path == "Library/SMS/sms.db")
    sms = phone_file.entry
    entry, mbfile = rows[sms.file_id]
    assert entry.has_encryption_key and entry.size == sms.size
    wrapped = mbfile["EncryptionKey"]
    file_key = aes_key_unwrap(class_keys[struct.unpack("<I", wrapped[:4])[0]], wrapped[4:])
    ciphertext = (folder / sms.file_id[:2] / sms.file_id).read_bytes()
    assert len(ciphertext) % 16 == 0 and len(ciphertext) > sms.size
    assert decrypt(file_key, ciphertext) == b"".join(phone.open(phone_file))


@settings(max_examples=50, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    data=st.binary(max_size=300),
    cuts=st.lists(st.integers(0, 300), max_size=4),
    pclass=st.sampled_from(KEYBAG_CLASSES),
    file_key=st.binary(min_size=32, max_size=32),
)
def test_ioscrypto_round_trips_through_an_independent_decryptor(
    key: bytes, data: bytes, cuts: list[int], pclass: int, file_key: bytes
) -> None:
    # However the plaintext is cut into pieces, the ciphertext is the one AES-CBC/PKCS#7 of the whole.
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = iter([data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])
    ciphertext = b"".join(encrypt(key, pieces))
    assert len(ciphertext) == encrypted_size(len(data)) and decrypt(key, ciphertext) == data
    wrapped = wrapped_key(pclass, key, file_key)
    assert struct.unpack("<I", wrapped[:4])[0] == pclass and aes_key_unwrap(key, wrapped[4:]) == file_key


def test_many_files_and_the_write_command(tmp_path: Path) -> None:
    assert SyntheticPhone(many_files=True).plist_count == MANY_FILES >= 300_000
    small = SyntheticPhone(seed=5, size=4 * MiB, many_files=3000)
    files = small.files(0)
    assert sum(f.kind.startswith("plist") for f in files) == 3000
    # Many files stay small files: photos still make up most of the phone.
    assert sum(f.entry.size for f in files if f.kind.startswith("plist")) < 0.3 * small.size
    assert any(f.kind in ("heic", "jpg") for f in files)
    main(["write", str(tmp_path / "cli"), "--size", "4MB", "--day", "1", "--seed", "5", "--many-files", "3000"])
    assert tree_hash(tmp_path / "cli" / small.udid) == tree_hash(small.write_backup(tmp_path / "api", 1))
