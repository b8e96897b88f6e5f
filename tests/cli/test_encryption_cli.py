"""A new user, through the real `phonevault` console script and the real emulator: turn backup encryption on,
back up twice, change the backup password, back up again, restore an encrypted snapshot. And every wrong
password, refusal and missing password is one line with the exit code the README gives (12: wrong password)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phonevault.sync.emulator import Emulator, Fault
from tests.sync.test_mobilesync import tree_digest


def phone_files(emu: Emulator) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in emu.device_dir.glob("??/*") if p.is_file()}


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("phonevault:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def phone(tmp_path: Path):
    with Emulator(tmp_path / "phone", seed=21, size=2 << 20) as emu:
        yield emu


def test_a_new_user_encrypts_backs_up_changes_the_password_and_restores(pv, cli_env, phone):
    env = dict(cli_env, USBMUXD_SOCKET_ADDRESS=phone.address)
    pv("init", check=True)
    assert "backup encryption is off" in pv("device", "encryption", env=env, check=True).stdout
    r = pv("device", "encryption", "on", env=dict(env, PHONEVAULT_NEW_BACKUP_PASSWORD="first"), check=True)
    assert "backup encryption is now on" in r.stdout and phone.backup_password_is("first")
    status = json.loads(pv("device", "encryption", "status", "--json", env=env, check=True).stdout)
    assert status == {"device": phone.udid, "name": status["name"], "encrypted": True}

    day0 = phone_files(phone)
    pv("backup", env=env, check=True)
    phone.set_day(1)
    pv("backup", env=env, check=True)
    assert [r.kind for r in phone.reports if r.operation == "Backup"] == ["full", "incremental"]
    snaps = json.loads(pv("snapshots", "--json", env=env, check=True).stdout)
    assert len(snaps) == 2 and all(s["encrypted_by_phone"] for s in snaps)

    changed = dict(env, PHONEVAULT_BACKUP_PASSWORD="first", PHONEVAULT_NEW_BACKUP_PASSWORD="second")
    assert "backup password changed" in pv("device", "password", env=changed, check=True).stdout
    assert phone.backup_password_is("second") and not phone.backup_password_is("first")
    phone.set_day(2)
    pv("backup", env=env, check=True)
    assert phone.reports[-1].kind == "full"  # a new keybag: the phone re-encrypts everything
    assert len(json.loads(pv("snapshots", "--json", env=env, check=True).stdout)) == 3

    first = min(snaps, key=lambda s: s["time"])["id"]
    before = tree_digest(phone.device_dir)
    r = pv("restore", first, "--yes", "--no-reboot", env=dict(env, PHONEVAULT_BACKUP_PASSWORD="second"))
    assert r.returncode == 12 and "wrong backup password" in one_line(r.stderr)  # day 0 was made with "first"
    assert tree_digest(phone.device_dir) == before
    pv("restore", first, "--yes", "--no-reboot", env=dict(env, PHONEVAULT_BACKUP_PASSWORD="first"), check=True)
    assert phone_files(phone) == day0
    assert phone.will_encrypt and phone.backup_password_is("second")  # the phone's own setting is unchanged


def test_wrong_missing_and_refused_passwords_are_one_line(pv, cli_env, tmp_path):
    with Emulator(tmp_path / "phone", seed=22, size=2 << 20, backup_password="right") as emu:
        env = dict(cli_env, USBMUXD_SOCKET_ADDRESS=emu.address)
        r = pv("device", "encryption", "off", "--backup-password", "wrong", env=env)
        assert r.returncode == 12 and "Invalid password" in one_line(r.stderr) and emu.backup_password_is("right")
        r = pv(
            "device", "password", env=dict(env, PHONEVAULT_BACKUP_PASSWORD="wrong", PHONEVAULT_NEW_BACKUP_PASSWORD="n")
        )
        assert r.returncode == 12 and "wrong backup password" in one_line(r.stderr) and emu.backup_password_is("right")

        r = pv("device", "encryption", "on", "--backup-password", "other", env=env)  # nothing is asked of the phone
        assert r.returncode == 1 and "already on" in one_line(r.stderr) and emu.backup_password_is("right")
        r = pv("device", "encryption", "off", env=env)  # no password anywhere, no terminal to ask on
        assert r.returncode == 1 and "no backup password" in one_line(r.stderr)
        r = pv("device", "password", env=dict(env, PHONEVAULT_BACKUP_PASSWORD="right"))
        assert r.returncode == 1 and "PHONEVAULT_NEW_BACKUP_PASSWORD" in one_line(r.stderr)
        r = pv(
            "device", "password", env=dict(env, PHONEVAULT_BACKUP_PASSWORD="right", PHONEVAULT_NEW_BACKUP_PASSWORD="")
        )
        assert r.returncode == 1 and "empty" in one_line(r.stderr)

        emu.fault = Fault(fail_with_code=208)  # the phone refuses (its user dismissed the passcode prompt)
        r = pv("device", "encryption", "off", "--backup-password", "right", env=env)
        assert r.returncode == 1 and "refused to turn backup encryption off" in one_line(r.stderr) and "208" in r.stderr
        assert emu.will_encrypt
        emu.fault = None

        secret = tmp_path / "pw"
        secret.write_text("right\n")
        r = pv("device", "encryption", "off", env=dict(env, PHONEVAULT_BACKUP_PASSWORD_FILE=str(secret)), check=True)
        assert "is now off" in r.stdout and not emu.will_encrypt
        r = pv("device", "password", env=dict(env, PHONEVAULT_BACKUP_PASSWORD="x", PHONEVAULT_NEW_BACKUP_PASSWORD="y"))
        assert r.returncode == 1 and "encryption is off" in one_line(r.stderr)
