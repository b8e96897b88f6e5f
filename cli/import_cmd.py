"""`phonevault import [PATH]`: MobileSync backup folders in, one snapshot per device."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from phonevault.store.errors import PhonevaultError
from phonevault.store.repository import Repository
from phonevault.sync.mobilesync import find_backup_folders, import_folder
from phonevault.sync.paths import shown

from .context import with_repo
from .render import err, human, out, progress


@click.command("import")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@with_repo
def import_(repo: Repository, path: Path | None) -> None:
    """Import a backup folder (<UDID>/), a Backup/ folder of several, or (no PATH) the Finder/iTunes locations."""
    exit_code = 0
    for folder in find_backup_folders(path):
        try:
            with progress(f"importing {folder.name[:12]}", None) as update:  # import_folder reports the total
                r = import_folder(repo, folder, progress=update)
        except PhonevaultError as e:
            err.print(f"phonevault: {e}", markup=False, soft_wrap=True)
            exit_code = max(exit_code, e.exit_code)
            continue
        s = r.snapshot.stats
        out.print(
            f"{shown(r.device.name or r.device.udid)}: snapshot {r.snapshot.hex[:8]} — {s['files']} files, {human(s['size'])}; "
            f"{s['added']} added, {s['modified']} modified, {s['removed']} removed; "
            f"{human(s['new_bytes'])} new in the vault ({r.reused_files} files unchanged since last import)",
            markup=False,
        )
        if r.snapshot.meta.get("encrypted"):
            err.print("note: the phone encrypted this backup; it is stored as-is (browsing it needs its password)")
        for p in r.problems:  # names from the backup: plain text, never markup
            err.print(f"warning: {p}", markup=False, soft_wrap=True)
        if r.problems:
            err.print(f"{len(r.problems)} problem(s) in the source; every file that was there is in the snapshot")
            exit_code = max(exit_code, 3)
    if exit_code:
        sys.exit(exit_code)
