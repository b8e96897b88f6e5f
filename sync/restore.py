"""Device restore over MobileBackup2, with pymobiledevice3 as the client: a dated snapshot served to the device as
the backup folder it asks for (the reverse of sync/backup2.py, which it shares the connection and watchdog with).

The device asks for `<source>/…` paths: the source is the UDID the snapshot was taken from, refused unless it is one
safe folder name. Nothing here writes a local file; the one device-side path written is the constant
`/iTunesRestore/RestoreApplications.plist`. A damaged snapshot is served as far as it reads: a file the vault cannot
give back is answered with a DeviceLink file error and named; `strict` reads every file before the device is asked
anything. Restoring one phone's backup onto another works as in Finder.

A backup the phone encrypted is restored as stored (the device decrypts it) with its backup password in the
Restore request's Options.Password, as pymobiledevice3 and idevicebackup2 send it. The password is checked here
first against the snapshot's own keybag (`phonevault.sync.ioscrypto`), so a wrong one is refused before the device
is asked anything (WrongBackupPassword, exit 12, as `ls` says it); a device that still answers 207 ("Invalid password
when restoring encrypted backup") is WrongDevicePassword, exit 12 too. A keybag this host cannot read leaves the check to the device.
"""

from __future__ import annotations

import plistlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from phonevault.store.check import readable_tree, unreadable_files
from phonevault.store.errors import PathNotFound, PhonevaultError
from phonevault.store.history import record_restore
from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.repository import Repository

from .backup2 import Timeouts, connected, watched
from .damage import describe
from .devicelink import Progress, VaultDeviceLink
from .encryption import ERROR_INVALID_PASSWORD
from .errors import DeviceReportedFailure, RestoreRefused, StrictRefused, WrongBackupPassword, WrongDevicePassword
from .ioscrypto import KeybagError, PasswordMismatch, parse_keybag, unlock_class_keys
from .paths import safe_component
from .plists import read_manifest_plist
from .records import backup_meta

DEFAULT_TIMEOUTS = Timeouts()


@dataclass(slots=True)
class RestoreResult:
    udid: str
    snapshot: SnapshotRecord
    bytes_sent: int
    problems: list[str]
    damaged: list[str] = field(default_factory=list)  # not restored: the vault cannot give them back (one line each)


def restore_device(
    repo: Repository,
    view: DeviceView,
    snap: SnapshotRecord,
    *,
    udid: str | None = None,
    usbmux_address: str | None = None,
    password: str | Callable[[], str] | None = None,
    reboot: bool = True,
    system: bool = False,
    remove: bool = False,
    strict: bool = False,
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore `snap` to the device. A damaged snapshot is served as far as it reads: a file the vault cannot give
    back is answered with a file error and named in `damaged`; a device that ends the restore over it raises
    RestoreRefused naming them. With `strict`, every file is read first, and StrictRefused names the damaged ones
    before the device is asked anything. ``password`` (the phone's backup password) may be a function: it is called
    only when the snapshot is encrypted."""
    entries, lost = readable_tree(repo, view, snap)  # lost: backup path (or glob) -> why
    if strict:
        lost.update(unreadable_files(repo, entries))
        if lost:
            raise StrictRefused(describe(repo, snap, lost, "restored"), "restored")
    state = {e.path: e for e in entries}
    # The device asks for `<source>/…` paths: the source must be one folder name (a phone wrote it).
    source = safe_component(view.device or "", "a backup folder name")
    for needed in ("Info.plist", "Manifest.plist", "Status.plist"):
        if needed not in state:
            raise PathNotFound(needed, f"snapshot {snap.hex[:8]} (a device cannot restore without it)")
    raw_manifest = b"".join(repo.read_file(state["Manifest.plist"]))
    encrypted = bool(raw_manifest) and read_manifest_plist(raw_manifest, "Manifest.plist").is_encrypted
    if encrypted is None:  # not a boolean: what the import decided from the Manifest.db itself
        encrypted = backup_meta(snap).encrypted
    if encrypted:
        if callable(password):
            password = password()
        if not password:
            raise PhonevaultError(
                "this backup was encrypted by the phone: give its backup password (--backup-password, "
                "PHONEVAULT_BACKUP_PASSWORD or PHONEVAULT_BACKUP_PASSWORD_FILE)"
            )
        check_backup_password(raw_manifest, password, snap.hex[:8])
    args = (repo, view, snap, source, state, lost, udid, usbmux_address, password, encrypted, reboot, system, remove,
            progress)  # fmt: skip
    try:
        return watched(timeouts, "the restore did not finish", lambda watchdog: _restore(*args, watchdog))
    except DeviceReportedFailure as e:
        if encrypted and e.code == ERROR_INVALID_PASSWORD:
            raise WrongDevicePassword("restore this backup", _said(e)) from None
        raise


def snapshot_encrypted(snap: SnapshotRecord) -> bool:
    """Whether the phone encrypted this snapshot's backup (a restore needs its backup password), as stored."""
    return bool(backup_meta(snap).encrypted)


def check_backup_password(manifest_plist: bytes, password: str, snapshot: str) -> None:
    """WrongBackupPassword (exit 12, as `ls` and `extract` say it) unless ``password`` opens a class key of the
    backup keybag in ``manifest_plist``. A keybag this host cannot read (damaged, or of a kind ioscrypto does not
    read) leaves the check to the device."""
    bag = read_manifest_plist(manifest_plist, "Manifest.plist").keybag
    try:
        unlock_class_keys(parse_keybag(bag or b""), password)
    except PasswordMismatch:
        raise WrongBackupPassword(snapshot) from None
    except KeybagError:
        return


def _said(e: DeviceReportedFailure) -> str:
    """The device's own ErrorDescription inside pymobiledevice3's message, else the whole message."""
    return m.group(1) if (m := re.search(r"'ErrorDescription': '([^']*)'", e.description)) else e.description


async def _restore(
    repo, view, snap, source, state, lost, udid, usbmux_address, password, encrypted, reboot, system, remove,
    progress, watchdog,
):  # fmt: skip
    problems: list[str] = []
    # The link serves `<source>/…` from the snapshot: restoring one phone's backup onto another works as in Finder.
    dl: VaultDeviceLink | None = None
    try:
        async with connected(udid, usbmux_address) as service:
            target = service.lockdown.udid
            watchdog.phase("starting MobileBackup2", watchdog.timeouts.setup)
            async with service.vault_link(repo=repo, udid=source, snapshot_state=state, progress=progress) as dl:
                watchdog.phase("taking the sync lock", watchdog.timeouts.setup)
                async with service.session(dl) as afc:
                    options: dict = {
                        "RestoreShouldReboot": reboot,
                        "RestoreDontCopyBackup": True,
                        "RestorePreserveSettings": True,
                        "RestoreSystemFiles": system,
                        "RemoveItemsNotRestored": remove,
                    }
                    if encrypted:
                        options["Password"] = password
                    await dl.send_process_message(
                        {"MessageName": "Restore", "TargetIdentifier": target, "SourceIdentifier": source,
                         "Options": options}
                    )  # fmt: skip
                    try:
                        info = b"".join(repo.read_file(state["Info.plist"]))
                    except PhonevaultError as e:  # damaged: no apps list is sent, the device keeps its own
                        lost["Info.plist"], info = str(e), None
                    applications = _applications(info, problems) if info is not None else None
                    if applications is not None:
                        await afc.makedirs("/iTunesRestore")
                        await afc.set_file_contents(
                            "/iTunesRestore/RestoreApplications.plist", plistlib.dumps(applications)
                        )
                    watchdog.phase("restoring", watchdog.timeouts.idle)
                    await dl.dl_loop(lambda _percent: None)
                    watchdog.phase("ending the restore session", watchdog.timeouts.setup)
    except DeviceReportedFailure as e:
        damaged = {**lost, **(dl.unreadable if dl is not None else {})}
        if damaged:  # most likely why: say so, naming what the vault could not give
            raise RestoreRefused(describe(repo, snap, damaged, "restored"), f"{_said(e)} (error {e.code})") from None
        raise
    record_restore(repo, view, snap, f"device:{target}")
    damaged = {**lost, **dl.unreadable}
    named = describe(repo, snap, damaged, "restored") if damaged else []
    return RestoreResult(target, snap, dl.bytes_sent, problems + dl.problems, named)


def _applications(info_plist: bytes, problems: list[str]) -> dict | None:
    """Info.plist's Applications dict (what the device reinstalls), or None, naming anything unusable."""
    try:
        info = plistlib.loads(info_plist)
    except Exception as e:  # plistlib raises several types on damage
        problems.append(f"Info.plist is not a plist ({type(e).__name__}); no app list sent to the device")
        return None
    applications = info.get("Applications") if isinstance(info, dict) else None
    if applications is not None and not isinstance(applications, dict):
        problems.append(f"Info.plist: Applications is a {type(applications).__name__}, not a dict; not sent")
        return None
    return applications
