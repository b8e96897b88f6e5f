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
from hypothesis import given, settings
from hypothesis import strategies as st
from pyiosbackup import Backup

from phonevault.sync.backup2 import Timeouts, backup_device
from phonevault.sync.emulator import Emulator, Fault
from phonevault.sync.emulator.backupkeys import ERROR_BAD_REQUEST, ERROR_INVALID_PASSWORD, BackupKeys
from phonevault.sync.emulator.hostile import CHANGE_PASSWORD
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.encryption import (
    backup_encryption_status,
    change_backup_password,
    set_backup_encryption,
)
from phonevault.sync.errors import (
    BackupEncryptionState,
    DeviceDisconnected,
    DeviceError,
    DeviceTimeout,
    ProtocolError,
    WrongBackupPassword,
    WrongDevicePassword,
)
from phonevault.sync.export import export_snapshot
from phonevault.sync.records import backup_meta
from phonevault.sync.restore import restore_device
from tests.sync.test_emulator import ok, pmd3

SIZE = 2 << 20
PASSWORD = "tr0ub4dor&3"
QUICK = Timeouts(setup=20.0, idle=3.0, cleanup=2.0)


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


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_restoring_an_encrypted_backup_gives_back_the_phone_bit_for_bit(repo, tmp_path):
    """Oracle: the synthetic phone's own plain folder of the day that was backed up."""
    with Emulator(tmp_path / "emulator", seed=17, size=SIZE, day=1, backup_password=PASSWORD) as emu:
        snap = backup_device(repo, usbmux_address=emu.address).snapshot
        assert backup_meta(snap).encrypted
        emu.set_day(3)
        with pytest.raises(WrongBackupPassword):  # checked against the snapshot's keybag: the phone is not asked
            restore_device(repo, repo.devices()[0], snap, usbmux_address=emu.address, password="not it")
        assert [r.operation for r in emu.reports] == ["Backup"]
        restore_device(repo, repo.devices()[0], snap, usbmux_address=emu.address, password=PASSWORD)
        assert emu.reports[-1].operation == "Restore" and emu.reports[-1].error_code == 0
        plain = SyntheticPhone(seed=17, size=SIZE).write_backup(tmp_path / "oracle", 1)
        assert folder_files(emu.device_dir) == folder_files(plain)


def test_the_phone_refuses_a_restore_with_a_wrong_password_before_any_file_moves(tmp_path):
    """pymobiledevice3's own restore of an encrypted folder: 207, as phones answer, and the phone as it was."""
    with Emulator(tmp_path / "emulator", seed=18, size=SIZE, backup_password=PASSWORD) as emu:
        ok(pmd3(emu, tmp_path / "home", "backup2", "backup", "--full", str(tmp_path / "host")))
        emu.set_day(2)
        before = folder_files(emu.device_dir)
        r = pmd3(
            emu, tmp_path / "home", "backup2", "restore", "--password", "wrong", "--no-reboot", str(tmp_path / "host")
        )
        assert r.returncode != 0 and "'ErrorCode': 207" in r.stdout + r.stderr
        assert emu.reports[-1].error_code == 207 and folder_files(emu.device_dir) == before


PASSWORDS = st.sampled_from(["a", "b", "c"])
OPERATIONS = st.lists(st.tuples(st.sampled_from(["on", "off", "change"]), PASSWORDS, PASSWORDS), max_size=6)


@settings(max_examples=200)
@given(requests=st.lists(st.tuples(st.one_of(st.none(), PASSWORDS), st.one_of(st.none(), PASSWORDS)), max_size=8))
def test_change_password_answers_as_a_one_password_model(tmp_path_factory, requests):
    """Every ChangePassword message (OldPassword / NewPassword present or not) against the phone's keystore, checked
    against the model `current password or None`: 0 and the new state, or 207 and nothing changed."""
    keys = BackupKeys(tmp_path_factory.mktemp("keys"), seed=19, kdf_iterations=1)
    current: str | None = None
    for old, new in requests:
        code, _ = keys.change_password(old, new)
        if old is None and new is None:
            assert code == ERROR_BAD_REQUEST
        elif old is None:  # turn on: only when off
            assert code == (0 if current is None else ERROR_INVALID_PASSWORD)
            current = new if current is None else current
        elif current is not None and old == current:  # off, or a change
            assert code == 0
            current = new
        else:
            assert code == ERROR_INVALID_PASSWORD
        assert keys.encrypts == (current is not None)
        assert all(keys.verify(p) == (p == current) for p in "abc")


@settings(max_examples=6)
@given(operations=OPERATIONS)
def test_device_commands_follow_the_same_model_over_the_wire(tmp_path_factory, operations):
    """The host side (sync/encryption.py, pymobiledevice3 as the client) against the real emulator: a wrong password
    is WrongDevicePassword (exit 12), a state the device is already in is refused before it is asked."""
    with Emulator(tmp_path_factory.mktemp("e"), seed=20, size=1 << 20, kdf_iterations=1) as emu:
        current: str | None = None
        for action, a, b in operations:
            try:
                if action == "change":
                    change_backup_password(a, b, usbmux_address=emu.address)
                else:
                    set_backup_encryption(action == "on", a, usbmux_address=emu.address)
            except BackupEncryptionState:
                assert (current is not None) == (action == "on")
                continue
            except WrongDevicePassword:
                assert current is not None and a != current
                continue
            assert (current is None) == (action == "on") and (action == "on" or a == current)
            current = a if action == "on" else (b if action == "change" else None)
        assert backup_encryption_status(usbmux_address=emu.address).encrypts == (current is not None)
        assert current is None or emu.backup_password_is(current)


# hostile answer -> (the error, a fragment of its one line)
HOSTILE: dict[str, tuple[type[DeviceError], str]] = {
    "cp-silent": (DeviceTimeout, "enter the passcode"),
    "cp-stall-mid-frame": (DeviceTimeout, "enter the passcode"),
    "cp-hang-up": (DeviceDisconnected, "disconnected"),
    "cp-garbage-plist": (ProtocolError, "not a valid plist"),
    "cp-final-not-a-dict": (ProtocolError, "integer ErrorCode"),
    "cp-final-error-code-string": (ProtocolError, "integer ErrorCode"),
    "cp-file-request": (ProtocolError, "DLMessageCreateDirectory during ChangePassword"),
    "cp-traversal-download": (ProtocolError, "DLMessageDownloadFiles during ChangePassword"),
    "cp-disconnect-message": (DeviceDisconnected, "DLMessageDisconnect"),
}


def test_every_hostile_answer_has_an_expected_outcome():
    assert set(HOSTILE) == set(CHANGE_PASSWORD)


@pytest.mark.parametrize("behaviour", sorted(HOSTILE))
def test_a_hostile_answer_to_change_password_is_one_typed_line(tmp_path, behaviour):
    """A phone that answers ChangePassword wrongly, or not at all: one typed error within the watchdog's bound, and
    no file request is answered (the host has no folder to answer it from)."""
    error, fragment = HOSTILE[behaviour]
    with Emulator(tmp_path / "e", seed=23, size=1 << 20, kdf_iterations=1, backup_password="kept") as emu:
        emu.fault = Fault(hostile=behaviour)
        with pytest.raises(error) as caught:
            set_backup_encryption(False, "kept", usbmux_address=emu.address, timeouts=QUICK)
        assert fragment in str(caught.value) and "\n" not in str(caught.value)
        assert emu.will_encrypt and emu.backup_password_is("kept")  # the hostile phone did nothing


def test_after_a_restore_the_next_incremental_still_decrypts_whole(repo, tmp_path):
    """Back up day 0 and day 2, restore day 0, back up again (incremental: only what the restore changed is sent,
    every file kept from before keeps its key): the vault's latest snapshot, exported, is the phone's content."""
    with Emulator(tmp_path / "emulator", seed=41, size=SIZE, backup_password=PASSWORD) as emu:
        first = backup_device(repo, usbmux_address=emu.address).snapshot
        emu.set_day(2)
        backup_device(repo, usbmux_address=emu.address)
        restore_device(repo, repo.devices()[0], first, usbmux_address=emu.address, password=PASSWORD)
        again = backup_device(repo, usbmux_address=emu.address)
        assert not again.full and emu.reports[-1].kind == "incremental"
        export_snapshot(repo, repo.devices()[0], again.snapshot, tmp_path / "out")
        assert decrypted(tmp_path / "out" / emu.udid, PASSWORD) == phone_files(emu)
