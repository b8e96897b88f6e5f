"""`phonevault import [PATH]`: MobileSync backup folders in, one snapshot per device.

Each folder is imported whatever happened to the others. A folder that fails, or whose source had problems
(SourceIncomplete), is a typed failure; every failure is printed once, and the worst one (highest exit code) is
raised last, so the exit code is the worst folder's, mapped from its type like any other command's. When some
device folders of a Backup/ folder were imported and others failed, the Backup/ folder is a source with unreadable
parts: FoldersNotImported, exit 3, not the failed folder's 1 (which would say nothing was stored).
"""

from __future__ import annotations

import stat
from pathlib import Path

import click

from phonevault.store.errors import PhonevaultError
from phonevault.store.projections import SnapshotRecord
from phonevault.store.repository import Repository, format_time
from phonevault.sync.decrypted_remembered import STALE, any_remembered, remembered
from phonevault.sync.encrypted import BackupPassword
from phonevault.sync.errors import FoldersNotImported, SourceIncomplete, WrongBackupPassword
from phonevault.sync.layouts import MBDB
from phonevault.sync.mobilesync import ImportResult, find_backup_folders, import_folder
from phonevault.sync.paths import shown
from phonevault.sync.plists import read_info_plist
from phonevault.sync.records import backup_meta

from .allocator import return_large_buffers
from .backup_password import backup_password_option, password_from, store_decrypted_option
from .context import with_repo
from .render import err, human, out, progress


@click.command("import")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@store_decrypted_option
@backup_password_option
@with_repo
def import_(repo: Repository, path: Path | None, store_decrypted: bool, backup_password: tuple[str, ...]) -> None:
    """Import a backup folder (<UDID>/), a Backup/ folder of several, or (no PATH) the Finder/iTunes locations."""
    password = password_from(backup_password) if store_decrypted else None
    return_large_buffers()
    worst: PhonevaultError | None = None
    failed: list[str] = []
    imported = 0
    try:
        for folder in find_backup_folders(path):
            try:
                with progress(f"importing {folder.name[:12]}", None) as update:  # import_folder reports the total
                    r = _import(repo, folder, update, password)
            except PhonevaultError as e:
                worst = _keep_worse(worst, e)
                failed.append(shown(folder.name))
                continue
            imported += 1
            s = r.snapshot.stats
            out.print(
                f"{shown(r.device.name or r.device.udid)}: snapshot {r.snapshot.hex[:8]} of "
                f"{format_time(r.snapshot.time)} — {s.files} files, {human(s.size)}; {_against(repo, r.snapshot)}"
                f"{human(s.new_bytes)} new in the vault ({r.reused_files} files unchanged since last import)",
                markup=False,
            )
            meta = backup_meta(r.snapshot)
            if meta.encrypted and meta.layout == MBDB.name:  # iOS 4–9: the file list is plaintext, the files are not
                err.print("note: the phone encrypted this backup's files; it is stored as-is (browsable; extracting "
                          "its files needs its password)")  # fmt: skip
            elif meta.all_decrypted:
                err.print(f"note: the phone encrypted this backup; stored decrypted ({meta.decrypted} files), "
                          "browsable without its password, exported encrypted again")  # fmt: skip
            elif meta.encrypted and meta.decrypted:
                err.print(f"note: the phone encrypted this backup; {meta.decrypted} files stored decrypted, the "
                          "others as sent (browsing them needs its password)")  # fmt: skip
            elif meta.encrypted:
                err.print("note: the phone encrypted this backup; it is stored as-is (browsing it needs its password)")
            for p in r.problems:  # names from the backup: plain text, never markup
                err.print(f"warning: {p}", markup=False, soft_wrap=True)
            if r.problems:
                worst = _keep_worse(worst, SourceIncomplete(r.problems, shown(folder.name)))
    except BaseException:
        if worst is not None:  # something else ends the command: the failure held back is still named
            _print(worst)
        raise
    if worst is not None and failed and imported and worst.exit_code < FoldersNotImported.exit_code:
        _print(worst)
        worst = FoldersNotImported(shown(path.name) if path else "the default locations", failed, imported)
    if worst is not None:
        raise worst


MAX_INFO_PLIST = 16 << 20  # an Info.plist lists apps' icons: megabytes at most


def _import(repo: Repository, folder: Path, update, password: BackupPassword | None) -> ImportResult:
    """One folder, stored decrypted with the password given, else with its device's remembered one (`device
    remember-password`), which when stale (changed on the phone) stores it as sent with a problem named."""
    if password is not None:
        return import_folder(repo, folder, progress=update, store_decrypted=password)
    pw = remembered(repo, _udid(folder)) if any_remembered(repo) else None
    if pw is None:
        return import_folder(repo, folder, progress=update)
    try:
        return import_folder(repo, folder, progress=update, store_decrypted=BackupPassword(pw))
    except WrongBackupPassword:  # checked before anything is stored
        r = import_folder(repo, folder, progress=update)
        r.problems.append(STALE)
        return r


def _udid(folder: Path) -> str:
    """The UDID a folder's Info.plist names (as the import reads it), else the folder's name. Only a regular file of
    a plist's size is read: a folder may hold a pipe or a link to a device file under that name (the import itself
    names those; here they only mean "use the folder's name")."""
    info = folder / "Info.plist"
    try:
        st = info.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_INFO_PLIST:
            return folder.name
        return read_info_plist(info.read_bytes(), "Info.plist").udid or folder.name
    except (OSError, PhonevaultError):
        return folder.name


def _against(repo: Repository, snap: SnapshotRecord) -> str:
    """The counts, and what they count against: the device's current backup when the import began, which for an
    archived backup imported late is a newer one (`phonevault diff` compares any two)."""
    s = snap.stats
    parent = repo.view(snap.device_key).get(snap.parent) if snap.parent else None
    if parent is None:
        return f"{s.files} files new to this device; "
    later = " (a later backup: this one is older)" if parent.time > snap.time else ""
    return (f"{s.added} added, {s.modified} modified, {s.removed} removed against the backup of "
            f"{format_time(parent.time)}{later}; ")  # fmt: skip


def _keep_worse(held: PhonevaultError | None, new: PhonevaultError) -> PhonevaultError:
    """Of the failure held back and a new one, print the lesser now and hold the worse (the earlier on a tie), to
    be raised when every folder has been tried."""
    if held is None:
        return new
    lesser, worse = (new, held) if new.exit_code <= held.exit_code else (held, new)
    _print(lesser)
    return worse


def _print(e: PhonevaultError) -> None:
    err.print(f"phonevault: {e}", markup=False, soft_wrap=True)
