"""An emulated phone with a backup password, through real clients: pymobiledevice3's own `backup2` commands and
phonevault's device code against the real emulator (usbmux, TLS lockdown, DeviceLink, MobileBackup2).

The oracle for "sends what a real phone sends" is an independent reader of iOS encrypted backups, pyiosbackup
(what pymobiledevice3's own `unback` uses): every file of the folder the host received decrypts with the password
to the phone's own bytes.
"""

from __future__ import annotations

import plistlib
from pathlib import Path

import pytest
from pyiosbackup import Backup

from phonevault.sync.emulator import Emulator
from tests.sync.test_emulator import ok, pmd3

SIZE = 2 << 20
PASSWORD = "tr0ub4dor&3"


@pytest.fixture
def secret_emu(tmp_path: Path):
    with Emulator(tmp_path / "emulator", seed=13, size=SIZE, backup_password=PASSWORD) as e:
        yield e


def decrypted(folder: Path, password: str) -> dict[str, bytes]:
    """fileID -> plaintext of every file of an encrypted backup folder, read by pyiosbackup."""
    backup = Backup.from_path(folder, password)
    assert backup.is_encrypted
    return {entry.file_id: entry.read_bytes() for entry in backup.iter_files()}


def phone_files(emu: Emulator) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in emu.device_dir.glob("??/*") if p.is_file()}


def wrapped_keys(folder: Path, password: str) -> dict[str, bytes]:
    return {entry.file_id: entry.encryption_key for entry in Backup.from_path(folder, password).iter_files()}


def test_backup_of_an_encrypted_phone_decrypts_to_the_phones_files(secret_emu, tmp_path):
    emu = secret_emu
    assert ok(pmd3(emu, tmp_path / "home", "backup2", "encryption")).stdout.strip() == "on"  # lockdown WillEncrypt
    ok(pmd3(emu, tmp_path / "home", "backup2", "backup", "--full", str(tmp_path / "host")))
    folder = tmp_path / "host" / emu.udid
    manifest = plistlib.loads((folder / "Manifest.plist").read_bytes())
    assert manifest["IsEncrypted"] is True and len(manifest["ManifestKey"]) == 44
    assert (folder / "Manifest.db").read_bytes()[:16] != b"SQLite format 3\x00"
    plain = phone_files(emu)
    assert decrypted(folder, PASSWORD) == plain
    for fid, data in plain.items():  # CBC with PKCS#7: 1..16 bytes longer, never the plaintext
        sent = (folder / fid[:2] / fid).read_bytes()
        assert len(sent) == (len(data) // 16 + 1) * 16 and sent[:16] != data[:16]


def test_incrementals_keep_file_keys_and_a_full_backup_draws_new_ones(secret_emu, tmp_path):
    emu = secret_emu
    host = tmp_path / "host"
    ok(pmd3(emu, tmp_path / "home", "backup2", "backup", "--full", str(host)))
    folder = host / emu.udid
    first = wrapped_keys(folder, PASSWORD)

    emu.set_day(1)
    ok(pmd3(emu, tmp_path / "home", "backup2", "backup", str(host)))
    report = emu.reports[-1]
    assert report.kind == "incremental" and 0 < len(report.uploaded) < len(first) / 2
    second = wrapped_keys(folder, PASSWORD)
    kept = {fid for fid in second.keys() & first.keys() if fid not in report.uploaded}
    assert kept and all(second[fid] == first[fid] for fid in kept)  # a file not sent again keeps its key
    assert all(second[fid] != first.get(fid) for fid in report.uploaded)
    assert decrypted(folder, PASSWORD) == phone_files(emu)  # old and new files, all under the new Manifest.db

    ok(pmd3(emu, tmp_path / "home", "backup2", "backup", "--full", str(host)))
    third = wrapped_keys(folder, PASSWORD)
    assert emu.reports[-1].kind == "full" and not any(third[fid] == second[fid] for fid in third)
    assert decrypted(folder, PASSWORD) == phone_files(emu)


def test_pymobiledevice3_turns_encryption_on_changes_the_password_and_turns_it_off(tmp_path):
    with Emulator(tmp_path / "emulator", seed=14, size=SIZE) as emu:
        home = tmp_path / "home"
        assert ok(pmd3(emu, home, "backup2", "encryption")).stdout.strip() == "off"
        ok(pmd3(emu, home, "backup2", "encryption", "on", "first"))
        assert emu.will_encrypt and emu.backup_password_is("first")
        assert ok(pmd3(emu, home, "backup2", "encryption")).stdout.strip() == "on"

        wrong = pmd3(emu, home, "backup2", "change-password", "nope", "second")
        assert wrong.returncode != 0 and "'ErrorCode': 207" in wrong.stderr + wrong.stdout
        assert emu.backup_password_is("first") and emu.reports[-1].error_code == 207

        ok(pmd3(emu, home, "backup2", "change-password", "first", "second"))
        assert emu.backup_password_is("second") and not emu.backup_password_is("first")
        assert pmd3(emu, home, "backup2", "encryption", "off", "first").returncode != 0  # the old one no longer
        ok(pmd3(emu, home, "backup2", "encryption", "off", "second"))
        assert not emu.will_encrypt
        assert ok(pmd3(emu, home, "backup2", "encryption")).stdout.strip() == "off"


def test_the_password_state_survives_a_restart_of_the_emulator(tmp_path):
    with Emulator(tmp_path / "emulator", seed=15, size=SIZE, backup_password="kept") as emu:
        assert emu.will_encrypt
    with Emulator(tmp_path / "emulator", seed=15, size=SIZE) as emu:  # the phone remembers its password
        assert emu.will_encrypt and emu.backup_password_is("kept")
