"""`phonevault import` of backups made before iOS 10, through the real command: a Backup/ folder holding an iOS 17-style
backup (Manifest.db, xx/ folders), an iOS 8 one (Manifest.mbdb, flat files) and an iPhone OS 3 one (.mdinfo/.mddata
pairs) from three different phones, each browsed, extracted by domain path, diffed (iOS 8, two days) and exported
bit-exact; damaged file lists refused in one line with nothing stored; a Backup/ folder with one bad device; an iOS
8 backup the phone encrypted (plaintext list, encrypted files)."""

from __future__ import annotations

import hashlib
import os
import plistlib
from dataclasses import replace
from pathlib import Path

import pytest

from phonevault.sync.emulator.legacy import (
    encode_mbdb,
    ios8_plan,
    ios8_records,
    write_ios3_backup,
    write_ios8_backup,
)
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.manifest import FLAG_FILE, file_id
from tests.conftest import js

DCIM = "CameraRollDomain/Media/DCIM/100APPLE"


def files_of(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """Every file under root: name -> (SHA-256, size, mode, mtime_ns); every folder -> ("dir", 0, mode, 0)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        if p.is_file():
            out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mode, st.st_mtime_ns)
        else:
            out[rel] = ("dir", 0, st.st_mode, 0)
    return out


def nothing_stored(pv, vault: Path) -> None:
    assert js(pv("devices", "--json")) == []
    assert js(pv("snapshots", "--json")) == []
    assert not [p for p in (vault / "packs").rglob("*") if p.is_file()], "a refused folder left packs behind"


def one_line(r, code: int) -> str:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("importing ")]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def phones() -> dict[str, SyntheticPhone]:
    # Three phones, so three devices: one Backup/ folder holds one folder per UDID, so one phone cannot be there twice.
    return {name: SyntheticPhone(seed=seed, size=1 << 20) for name, seed in (("17", 51), ("8", 52), ("3", 53))}


def test_three_generations_in_one_backup_folder(pv, cli_env, phones, tmp_path):
    src = tmp_path / "Backup"
    folders = {
        "17": phones["17"].write_backup(src, day=0),
        "8": write_ios8_backup(phones["8"], src, day=0),
        "3": write_ios3_backup(phones["3"], src, day=0),
    }
    before = {k: files_of(f) for k, f in folders.items()}
    pv("init", check=True)
    r = pv("import", str(src))
    assert r.returncode == 0, (r.stdout, r.stderr)

    snaps = js(pv("snapshots", "--json"))
    by_device = {s["device"]: s["id"] for s in snaps}
    assert set(by_device) == {p.udid for p in phones.values()} and len(snaps) == 3
    ids = {k: by_device[phones[k].udid] for k in phones}
    where = {"17": lambda fid: f"{fid[:2]}/{fid}", "8": lambda fid: fid, "3": lambda fid: f"{fid}.mddata"}

    for gen, snap in ids.items():
        top = {x["name"] for x in js(pv("ls", snap[:8], "--json"))}
        assert {"CameraRollDomain", "HomeDomain"} <= top, (gen, top)
        photos = [x for x in js(pv("ls", snap[:8], DCIM, "--json")) if x["type"] == "file"]
        assert photos, gen
        photo = photos[-1]
        assert photo["file_id"] == file_id("CameraRollDomain", photo["path"].split("/", 1)[1])
        out = tmp_path / f"extract-{gen}"
        pv("extract", snap[:8], photo["path"], "--to", str(out), check=True)
        assert (out / photo["path"]).read_bytes() == (folders[gen] / where[gen](photo["file_id"])).read_bytes()
        assert (out / photo["path"]).stat().st_size == photo["size"]

    # Two days of the iOS 8 phone: the diff names what changed by domain path, as the phone's plans say.
    write_ios8_backup(phones["8"], src, day=1)
    pv("import", str(folders["8"]), check=True)
    day1 = next(s["id"] for s in js(pv("snapshots", "--json")) if s["device"] == phones["8"].udid and s["current"])
    changes = js(pv("diff", ids["8"][:8], day1[:8], "--json"))["changes"]
    named = {c["path"]: c["change"] for c in changes if "/" in c["path"]}
    assert named == _expected_changes(ios8_plan(phones["8"], 0), ios8_plan(phones["8"], 1))
    assert {c["path"] for c in changes if "/" not in c["path"]} <= {"Info.plist", "Manifest.plist", "Status.plist",
                                                                      "Manifest.mbdb"}  # fmt: skip
    assert any(c == "added" for c in named.values()) and any(c == "modified" for c in named.values())

    for gen, snap in ids.items():  # each folder back, bit for bit (the iOS 8 one as it was on day 0)
        dest = tmp_path / f"export-{gen}"
        pv("export", snap[:8], "--to", str(dest), check=True)
        assert files_of(dest / phones[gen].udid) == before[gen], gen
    report = js(pv("check", "--read-data", "--json"))
    assert report["ok"] and report["errors"] == []


def _expected_changes(old, new) -> dict[str, str]:
    a = {e.file_id: e for e in old if e.flags == FLAG_FILE}
    b = {e.file_id: e for e in new if e.flags == FLAG_FILE}
    name = {
        **{k: f"{e.domain}/{e.relative_path}" for k, e in a.items()},
        **{k: f"{e.domain}/{e.relative_path}" for k, e in b.items()},
    }
    out = {name[k]: "added" for k in b.keys() - a.keys()} | {name[k]: "removed" for k in a.keys() - b.keys()}
    for k in a.keys() & b.keys():
        if (a[k].size, a[k].mtime, a[k].mode) != (b[k].size, b[k].mtime, b[k].mode):
            out[name[k]] = "modified"
    return out


# --------------------------------------------------------------------------------------------------- damage


def _truncated(folder: Path) -> None:
    data = (folder / "Manifest.mbdb").read_bytes()
    (folder / "Manifest.mbdb").write_bytes(data[: len(data) - 7])  # inside the last record


def _bad_magic(folder: Path) -> None:
    data = (folder / "Manifest.mbdb").read_bytes()
    (folder / "Manifest.mbdb").write_bytes(b"mbdx" + data[4:])


def _absurd_length(folder: Path) -> None:
    data = (folder / "Manifest.mbdb").read_bytes()
    (folder / "Manifest.mbdb").write_bytes(data[:6] + b"\xff\xfe" + data[8:])  # the first domain: 65 534 bytes


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_truncated, "damaged or truncated"),
        (_bad_magic, "not a Manifest.mbdb: it starts with b'mbdx'"),
        (_absurd_length, "record 1 (byte 6): domain of 65534 bytes at byte 6, but only"),
    ],
)
def test_a_damaged_manifest_mbdb_is_refused_in_one_line_and_nothing_is_stored(pv, cli_env, phones, tmp_path,
                                                                             damage, reason):  # fmt: skip
    folder = write_ios8_backup(phones["8"], tmp_path / "Backup", day=0)
    damage(folder)
    pv("init", check=True)
    line = one_line(pv("import", str(folder)), 1)
    assert line.startswith(f"phonevault: {folder}: not a usable MobileSync backup folder: unreadable catalog: ")
    assert reason in line, line
    nothing_stored(pv, Path(cli_env["PHONEVAULT_REPO"]))


def test_an_mdinfo_that_is_not_a_plist_is_refused_in_one_line_and_nothing_is_stored(pv, cli_env, phones, tmp_path):
    folder = write_ios3_backup(phones["3"], tmp_path / "Backup", day=0)
    victim = sorted(folder.glob("*.mdinfo"))[3]
    victim.write_bytes(b"this is not a plist at all")
    pv("init", check=True)
    line = one_line(pv("import", str(folder)), 1)
    assert f"unreadable catalog: {victim.name}: .mdinfo is not a plist" in line, line
    nothing_stored(pv, Path(cli_env["PHONEVAULT_REPO"]))


def test_a_backup_folder_with_one_bad_device_imports_the_others_names_it_and_exits_3(pv, phones, tmp_path):
    src = tmp_path / "Backup"
    bad = write_ios8_backup(phones["8"], src, day=0)
    _truncated(bad)
    good = [phones["17"].write_backup(src, day=0), write_ios3_backup(phones["3"], src, day=0)]
    pv("init", check=True)
    r = pv("import", str(src))
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("phonevault: ")]
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(f"phonevault: {bad}: not a usable MobileSync backup folder: unreadable catalog")
    assert lines[1] == f"phonevault: Backup: 1 of 3 device folders not imported (named above: {bad.name}); the others are in the vault"  # fmt: skip
    assert {d["device"] for d in js(pv("devices", "--json"))} == {g.name for g in good}


def test_one_bad_folder_alone_still_exits_1(pv, phones, tmp_path):
    folder = write_ios3_backup(phones["3"], tmp_path / "Backup", day=0)
    next(folder.glob("*.mdinfo")).write_bytes(b"\x00")
    pv("init", check=True)
    assert "unreadable catalog" in one_line(pv("import", str(tmp_path / "Backup")), 1)


# --------------------------------------------------------------------------------------------------- imperfect


def test_flat_files_missing_truncated_or_named_by_no_record_are_named(pv, phones, tmp_path):
    folder = write_ios8_backup(phones["8"], tmp_path / "Backup", day=0)
    files = sorted((e for e in ios8_plan(phones["8"], 0) if e.flags == FLAG_FILE and e.size > 10), key=lambda e: e.size)
    (folder / files[0].file_id).unlink()
    cut = folder / files[-1].file_id
    cut.write_bytes(cut.read_bytes()[:10])
    (folder / ("f" * 40)).write_bytes(b"left by someone")
    (folder / "ab").mkdir()
    (folder / "ab" / "stray").write_bytes(b"xx")
    pv("init", check=True)
    r = pv("import", str(folder))
    assert r.returncode == 3, (r.stdout, r.stderr)
    warnings = [ln.removeprefix("warning: ") for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert sorted(warnings) == sorted([
        f"{files[0].file_id}: listed in Manifest.mbdb but missing from the folder",
        f"{files[-1].file_id}: 10 bytes, Manifest.mbdb says {files[-1].size} (truncated?)",
        f"{'f' * 40}: no Manifest.mbdb record names it (stored as it is)",
        "ab/stray: no Manifest.mbdb record names it (stored as it is)",
    ]), r.stderr  # fmt: skip
    snap = js(pv("snapshots", "--json"))[0]["id"]
    r = pv("extract", snap[:8], f"{files[0].domain}/{files[0].relative_path}", "--to", str(tmp_path / "x"))
    assert r.returncode == 3 and f"listed in Manifest.mbdb but its file {files[0].file_id} is not in" in r.stderr


def test_an_ios3_folder_without_status_plist_has_no_problem(pv, phones, tmp_path):
    folder = write_ios3_backup(phones["3"], tmp_path / "Backup", day=0)
    assert not (folder / "Status.plist").exists()
    pv("init", check=True)
    r = pv("import", str(folder))
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------------- encrypted


def _encrypt_ios8(phone: SyntheticPhone, folder: Path) -> None:
    """Make an iOS 8 folder look from outside as an encrypted one does: IsEncrypted, a wrapped key in every file
    record, every file padded (PKCS#7) to a multiple of 16 bytes. The bytes are stand-ins: nothing here decrypts."""
    records = []
    for rec in ios8_records(phone, 0):
        if rec.mode & 0xF000 == 0x8000:
            body = folder / rec.file_id
            data, mtime = body.read_bytes(), body.stat().st_mtime_ns
            pad = 16 - len(data) % 16
            body.write_bytes(bytes(b ^ 0x5A for b in data) + bytes([pad]) * pad)
            os.utime(body, ns=(mtime, mtime))
            rec = replace(rec, key=b"\x03\x00\x00\x00" + b"k" * 40)  # protection class 3, then a wrapped key
        records.append(rec)
    (folder / "Manifest.mbdb").write_bytes(encode_mbdb(records))
    manifest = plistlib.loads((folder / "Manifest.plist").read_bytes())
    (folder / "Manifest.plist").write_bytes(plistlib.dumps({**manifest, "IsEncrypted": True}, fmt=plistlib.FMT_BINARY))


def test_an_encrypted_ios8_backup_browses_and_diffs_but_names_each_file_it_cannot_extract(pv, phones, tmp_path):
    folder = write_ios8_backup(phones["8"], tmp_path / "Backup", day=0)
    _encrypt_ios8(phones["8"], folder)
    before = files_of(folder)
    pv("init", check=True)
    r = pv("import", str(folder))
    assert r.returncode == 0, r.stderr  # padded sizes are what an encrypted backup holds: no problem
    assert "note: the phone encrypted this backup's files" in r.stderr and "browsable" in r.stderr
    assert js(pv("devices", "--json"))[0]["encrypted_by_phone"] is True
    snap = js(pv("snapshots", "--json"))[0]["id"]
    photos = [x for x in js(pv("ls", snap[:8], DCIM, "--json")) if x["type"] == "file"]
    assert photos and {"CameraRollDomain", "HomeDomain"} <= {x["name"] for x in js(pv("ls", snap[:8], "--json"))}
    r = pv("extract", snap[:8], photos[0]["path"], "--to", str(tmp_path / "x"))
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert f"{photos[0]['path']}: the phone encrypted this file; extracting it needs the backup password" in r.stderr
    assert not (tmp_path / "x" / photos[0]["path"]).exists()
    pv("export", snap[:8], "--to", str(tmp_path / "exp"), check=True)
    assert files_of(tmp_path / "exp" / phones["8"].udid) == before
