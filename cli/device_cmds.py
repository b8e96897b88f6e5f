"""Device commands: backup, restore, and the built-in emulator."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import platformdirs

from phonevault.store.errors import NotConfirmed
from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.refs import resolve_snapshot
from phonevault.store.repository import Repository, format_time
from phonevault.sync.decrypted_remembered import remembered
from phonevault.sync.errors import RestoreIncomplete, RestoreRefused, SourceIncomplete, StrictRefused
from phonevault.sync.paths import shown

from .backup_password import backup_password_option, password_from, store_decrypted_option
from .context import secret_from_env, with_repo
from .render import err, human, out, progress
from .sizes import parse_size
from .snapshot_cmds import warn


def default_emulator_dir() -> Path:
    return Path(platformdirs.user_data_dir("phonevault")) / "emulator"


@contextlib.contextmanager
def device_address(use_emulator: bool, udid: str | None, day: int, size: str) -> Iterator[str | None]:
    """The usbmuxd to talk to: $USBMUXD_SOCKET_ADDRESS or the system one; with --emulator and no device there,
    a built-in emulator started in this process."""
    from phonevault.sync.backup2 import find_devices

    address = os.environ.get("USBMUXD_SOCKET_ADDRESS") or None
    if not use_emulator or (found := find_devices(address)) and (udid is None or udid in found):
        yield address
        return
    from phonevault.sync.emulator import Emulator

    emu = Emulator(default_emulator_dir(), size=parse_size(size), day=day).start()
    err.print(f"no device connected: using the built-in emulator (udid {emu.udid}, day {day}) at {emu.address}")
    try:
        yield emu.address
    finally:
        emu.stop()


emulator_options = [
    click.option("--udid", help="Which device, when several are connected."),
    click.option("--emulator", "use_emulator", is_flag=True, help="Use the built-in emulator if no device is found."),
    click.option("--emulator-day", default=0, show_default=True, help="Day of the emulated phone's life."),
    click.option("--emulator-size", default="64MB", show_default=True, help="Size of the emulated phone."),
]


def with_device_options(fn):
    for opt in reversed(emulator_options):
        fn = opt(fn)
    return fn


@click.command()
@with_device_options
@click.option("--full", is_flag=True, help="Ask the device for every file, not only what changed.")
@store_decrypted_option
@backup_password_option
@with_repo
def backup(
    repo: Repository, udid: str | None, use_emulator: bool, emulator_day: int, emulator_size: str, full: bool,
    store_decrypted: bool, backup_password: tuple[str, ...],
):  # fmt: skip
    """Back up a connected iPhone/iPad into a new dated snapshot (incremental after the first)."""
    from phonevault.sync.backup2 import backup_device  # pymobiledevice3 costs ~1 s to import: only when needed

    with device_address(use_emulator, udid, emulator_day, emulator_size) as address:
        with progress("receiving", None) as update:
            r = backup_device(
                repo,
                udid=udid,
                usbmux_address=address,
                full=full,
                progress=lambda files, nbytes: update(nbytes),
                on_start=lambda u, name: err.print(f"backing up {name or u} ({u}) …"),
                store_decrypted=password_from(backup_password) if store_decrypted else None,
            )
    s = r.snapshot.stats
    out.print(
        f"{r.name or r.udid}: snapshot {r.snapshot.hex[:8]} ({'full' if r.full else 'incremental'}) — "
        f"received {r.files_received} files, {human(r.bytes_received)}; backup holds {s.files} files, "
        f"{human(s.size)}; {human(s.new_bytes)} new in the vault"
    )
    for p in r.problems:  # names from the device: plain text, never markup
        err.print(f"warning: {p}", markup=False, soft_wrap=True)
    if r.problems:
        raise SourceIncomplete(r.problems, r.name or r.udid)


@click.command()
@click.argument("snapshot")
@with_device_options
@click.option(
    "--backup-password",
    help="The phone's backup password, if it encrypted this backup (default: $PHONEVAULT_BACKUP_PASSWORD, the first "
    "line of $PHONEVAULT_BACKUP_PASSWORD_FILE, or a prompt).",
)
@click.option("--no-reboot", is_flag=True, help="Do not reboot the device after restoring.")
@click.option("--system", is_flag=True, help="Also restore system files.")
@click.option("--remove", is_flag=True, help="Remove items on the device that are not in the backup.")
@click.option(
    "--strict", is_flag=True, help="All or nothing: read every file first; ask the device nothing if one fails."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask first (needed without a terminal).")
@with_repo
def restore(
    repo: Repository, snapshot: str, udid: str | None, use_emulator: bool, emulator_day: int, emulator_size: str,
    backup_password: str | None, no_reboot: bool, system: bool, remove: bool, strict: bool, yes: bool,
) -> None:  # fmt: skip
    """Restore a dated version (SNAPSHOT or DEVICE@DATE) to a connected device. A file the vault cannot read back
    is answered with a file error and named (exit 3, or 1 if the device will not restore without it); with
    --strict every file is read first and the device is asked nothing unless all of them read back."""
    from phonevault.sync.restore import restore_device, snapshot_encrypted

    from .encryption_cmds import backup_password as ask_backup_password

    view, snap = resolve_snapshot(repo, snapshot)
    try:
        with device_address(use_emulator, udid, emulator_day, emulator_size) as address:
            _confirm_restore(view, snap, udid or _only_device(address), yes)
            if backup_password is None and snapshot_encrypted(snap):  # asked only for a backup the phone encrypted
                # The environment's, else a remembered one (`device remember-password`), else a prompt; checked
                # against the snapshot's keybag before the device is asked anything.
                in_env = secret_from_env("PHONEVAULT_BACKUP_PASSWORD") is not None
                from_memory = None if in_env else remembered(repo, view.device or "")
                backup_password = from_memory or ask_backup_password(None)
            with progress("restoring", snap.stats.size) as update:
                r = restore_device(
                    repo, view, snap, udid=udid, usbmux_address=address, password=backup_password,
                    reboot=not no_reboot, system=system, remove=remove, strict=strict,
                    progress=lambda _files, sent: update(sent),
                )  # fmt: skip
    except (StrictRefused, RestoreRefused) as e:
        warn(e.problems)
        raise
    out.print(f"restored snapshot {snap.hex[:8]} to device {r.udid}: {human(r.bytes_sent)} sent")
    for p in r.problems:
        err.print(f"warning: {p}", markup=False, soft_wrap=True)
    if r.damaged:
        warn(r.damaged)
        raise RestoreIncomplete(r.damaged)


def _only_device(address: str | None) -> str | None:
    from phonevault.sync.backup2 import find_devices

    found = find_devices(address)
    return found[0] if len(found) == 1 else None  # none or several: restore_device says which in one line


def _confirm_restore(view: DeviceView, snap: SnapshotRecord, target: str | None, yes: bool) -> None:
    """Say what goes onto which device, warn when it is another device's backup, and ask (a restore replaces the
    device's content)."""
    name = shown(view.info.name or view.device or "?")
    err.print(
        f"restore snapshot {snap.hex[:8]} of {name} ({view.device}), backed up {format_time(snap.time)}: "
        f"{snap.stats.files} files, {human(snap.stats.size)} → device {target or '(the connected one)'}",
        markup=False,
        soft_wrap=True,
    )
    if target and view.device and target.lower() != view.device.lower():
        err.print(
            f"warning: this is the backup of another device ({name}); restoring it onto {target} replaces that "
            "device's content, as setting up a new phone from a backup does",
            markup=False,
            soft_wrap=True,
        )
    if yes:
        return
    if not sys.stdin.isatty():
        raise NotConfirmed("restore", "no terminal to ask on: give --yes")
    if not click.confirm("Restore it now?", default=False, err=True):
        raise NotConfirmed("restore", "not confirmed")


@click.group()
def emulator() -> None:
    """The built-in iPhone emulator (usbmuxd + lockdownd + MobileBackup2 on 127.0.0.1)."""


@emulator.command("serve")
@click.option("--port", default=0, show_default=True, help="TCP port for its usbmuxd (0: any free port).")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), help="State folder (default: user data dir).")
@click.option("--day", default=0, show_default=True, help="Day of the synthetic phone's life.")
@click.option("--size", default="64MB", show_default=True, help="Size of the synthetic phone, e.g. 2GB.")
@click.option("--seed", default=1, show_default=True)
@click.option(
    "--many-files", default=0, show_default=True, help="That many small plists besides its media (0: the default)."
)
def emulator_serve(port: int, data: Path | None, day: int, size: str, seed: int, many_files: int) -> None:
    """Run an emulated iPhone until interrupted; point clients at it with USBMUXD_SOCKET_ADDRESS."""
    from phonevault.sync.emulator import serve

    if many_files < 0:
        raise click.BadParameter("must be 0 or more", param_hint="--many-files")
    serve(port, data or default_emulator_dir(), day=day, size=parse_size(size), seed=seed, many_files=many_files)
