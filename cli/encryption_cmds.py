"""`phonevault device …`: a device's own settings over MobileBackup2 — its backup encryption and backup password.

The phone's backup password (not the vault's) comes from `--backup-password`, else `PHONEVAULT_BACKUP_PASSWORD`,
else the first line of `PHONEVAULT_BACKUP_PASSWORD_FILE`, else a prompt on the terminal (`backup_password`); a new
one from `PHONEVAULT_NEW_BACKUP_PASSWORD`, else a prompt asked twice. None of them needs the password on the
command line, and nothing here opens the vault.
"""

from __future__ import annotations

import os
import sys

import click

from phonevault.store.errors import PhonevaultError
from phonevault.store.repository import Repository, format_time

from .context import secret_from_env, with_repo
from .device_cmds import device_address, with_device_options
from .render import emit_json, err, out

BACKUP_PASSWORD_HELP = (
    "The phone's backup password (default: $PHONEVAULT_BACKUP_PASSWORD, the first line of "
    "$PHONEVAULT_BACKUP_PASSWORD_FILE, or a prompt)."
)
backup_password_option = click.option("--backup-password", metavar="PASSWORD", help=BACKUP_PASSWORD_HELP)


def backup_password(given: str | None, *, prompt: str = "Backup password", confirm: bool = False) -> str:
    """The phone's backup password: ``given`` (--backup-password), else the environment, else a prompt."""
    if given is not None:
        return given
    if (pw := secret_from_env("PHONEVAULT_BACKUP_PASSWORD")) is not None:
        return pw
    if not sys.stdin.isatty():
        raise PhonevaultError(
            "no backup password: give --backup-password, set PHONEVAULT_BACKUP_PASSWORD or "
            "PHONEVAULT_BACKUP_PASSWORD_FILE, or run in a terminal"
        )
    return click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)


def new_backup_password(prompt: str = "New backup password") -> str:
    """A new backup password: $PHONEVAULT_NEW_BACKUP_PASSWORD, else asked twice on the terminal."""
    if (pw := os.environ.get("PHONEVAULT_NEW_BACKUP_PASSWORD")) is not None:
        return pw
    if not sys.stdin.isatty():
        raise PhonevaultError("no new backup password: set PHONEVAULT_NEW_BACKUP_PASSWORD, or run in a terminal")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=True, err=True)


@click.group()
def device() -> None:
    """A connected iPhone/iPad's own backup settings: encryption and its backup password."""


@device.command("encryption")
@click.argument("action", type=click.Choice(["status", "on", "off"]), default="status")
@with_device_options
@backup_password_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def encryption(
    action: str, udid: str | None, use_emulator: bool, emulator_day: int, emulator_size: str,
    backup_password: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Whether the device encrypts its backups (status), or turn that on or off.

    Only an encrypted backup keeps saved passwords, Wi-Fi settings, website history and Health data. `on` sets the
    backup password: --backup-password, else $PHONEVAULT_NEW_BACKUP_PASSWORD or $PHONEVAULT_BACKUP_PASSWORD(_FILE),
    else asked twice. `off` needs the current one. A phone asks for its passcode on screen to confirm. Without the
    backup password an encrypted backup can still be stored and exported, but neither browsed nor restored: keep it.
    """
    from phonevault.sync.encryption import backup_encryption_status, set_backup_encryption

    if action == "on":
        password = _password_for_on(backup_password)
    elif action == "off":
        password = _password(backup_password, "Current backup password")
    with device_address(use_emulator, udid, emulator_day, emulator_size) as address:
        if action == "status":
            status = backup_encryption_status(udid=udid, usbmux_address=address)
        else:
            status = set_backup_encryption(action == "on", password, udid=udid, usbmux_address=address)
    if as_json:
        emit_json({"device": status.udid, "name": status.name, "encrypted": status.encrypts})
        return
    state = "on" if status.encrypts else "off"
    verb = {"status": "is", "on": "is now", "off": "is now"}[action]
    out.print(f"{status.name or status.udid} ({status.udid}): backup encryption {verb} {state}", markup=False)
    if action != "status" and state != action:
        # The device said yes; idevicebackup2 once waited for `domain_changed` here, so a phone may lag.
        err.print(f"warning: the device accepted, but still reports backup encryption {state}; check again with "
                  "`phonevault device encryption`", markup=False)  # fmt: skip


@device.command("password")
@with_device_options
@backup_password_option
def password(
    udid: str | None, use_emulator: bool, emulator_day: int, emulator_size: str, backup_password: str | None
) -> None:
    """Change the device's backup password (encryption must be on). The current one: --backup-password,
    $PHONEVAULT_BACKUP_PASSWORD(_FILE) or a prompt; the new one: $PHONEVAULT_NEW_BACKUP_PASSWORD or asked twice.
    Backups made before keep the old password: browsing them needs the old one."""
    from phonevault.sync.encryption import change_backup_password

    old = _password(backup_password, "Current backup password")
    new = new_backup_password()
    with device_address(use_emulator, udid, emulator_day, emulator_size) as address:
        status = change_backup_password(old, new, udid=udid, usbmux_address=address)
    out.print(f"{status.name or status.udid} ({status.udid}): backup password changed", markup=False)


def _password(given: str | None, prompt: str) -> str:
    return backup_password(given, prompt=prompt)


def _password_for_on(given: str | None) -> str:
    if given is None and (pw := os.environ.get("PHONEVAULT_NEW_BACKUP_PASSWORD")) is not None:
        return pw
    return backup_password(given, prompt="New backup password", confirm=True)


@device.command("remember-password")
@click.argument("device_ref", metavar="DEVICE")
@backup_password_option
@click.option("--forget", is_flag=True, help="Forget it: this device's backups are stored as the phone sends them.")
@with_repo
def remember_password(repo: Repository, device_ref: str, backup_password: str | None, forget: bool) -> None:
    """Keep DEVICE's backup password in the vault, so every later backup and import of it is stored decrypted, as
    with --store-decrypted: it deduplicates across full backups and password changes, and browsing needs no backup
    password. DEVICE: a device in the vault (name or UDID prefix), or the UDID of one not backed up yet.

    Off by default, and more than --store-decrypted gives away: the password is stored (sealed by the vault's key),
    so the vault's password then reads everything the phone's backup password protected, the keychain's items
    included. The password is checked against the device's latest encrypted backup in the vault, if it has one. A
    password changed on the phone later stores its next backups as sent, with a warning, until it is remembered
    again."""
    from phonevault.store.refs import resolve_device
    from phonevault.sync import decrypted_remembered as memory
    from phonevault.sync.encrypted import BackupPassword, unlock
    from phonevault.sync.records import backup_meta

    try:
        view = resolve_device(repo, device_ref)
        udid, name = view.device or device_ref, view.info.name or view.device or device_ref
    except PhonevaultError:
        if len(device_ref) < 24 or not device_ref.replace("-", "").isalnum():
            raise  # not a device in the vault, and not a UDID either
        view, udid, name = None, device_ref, device_ref
    if forget:
        gone = memory.forget(repo, udid)
        out.print(f"{name}: {'backup password forgotten' if gone else 'no backup password was remembered'}",
                  markup=False)  # fmt: skip
        return
    password = _password(backup_password, "Backup password to remember")
    latest = next((s for s in reversed(view.live()) if backup_meta(s).encrypted), None) if view else None
    if latest is not None:
        unlock(repo, latest, BackupPassword(password))  # WrongBackupPassword (exit 12): nothing is stored
    memory.remember(repo, udid, password)
    checked = f"checked against the backup of {format_time(latest.time)}" if latest else "not checked: no backup yet"
    out.print(f"{name}: backup password remembered ({checked}); its backups are stored decrypted from now on",
              markup=False)  # fmt: skip
