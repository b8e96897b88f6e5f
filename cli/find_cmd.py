"""`phonevault find PATTERN`: a file by name or path across every version of every device (sync/find.py)."""

from __future__ import annotations

import click

from phonevault.store.projections import DeviceView
from phonevault.store.refs import resolve_device
from phonevault.store.repository import Repository, format_time
from phonevault.sync.find import Hit
from phonevault.sync.find import find as find_paths
from phonevault.sync.paths import shown

from .backup_password import backup_password_option, password_from
from .context import json_option, with_repo
from .render import emit_json, err, human, table


def hit_json(h: Hit, view: DeviceView) -> dict:
    return {
        "device": view.device,
        "device_name": view.info.name or None,
        "path": h.path,
        "first": {"id": h.first.hex, "time": format_time(h.first.time)},
        "last": {"id": h.last.hex, "time": format_time(h.last.time)},
        "snapshots": [s.hex for s in h.snapshots],
        "sizes": list(h.sizes),
        "in_current": h.in_current,
    }


@click.command()
@click.argument("pattern")
@click.option("--device", "-d", help="Only this device (UDID, prefix or name).")
@backup_password_option
@json_option
@with_repo(readonly=True)
def find(repo: Repository, pattern: str, device: str | None, backup_password: tuple[str, ...], as_json: bool) -> None:
    """Files whose domain path contains PATTERN (or, with * ? [, whose path or name matches it as a glob), in every
    version: the first and last version holding each, its sizes, and whether the current backup has it. Versions
    the phone encrypted are searched with its backup password."""
    views = [resolve_device(repo, device)] if device else repo.devices()
    result = find_paths(repo, views, pattern, password=password_from(backup_password))
    by_key = {v.key: v for v in views}
    if as_json:
        emit_json([hit_json(h, by_key[h.device_key]) for h in result.hits])
    else:
        table(
            None,
            ["device", "path", "first", "last", "versions", "size", "current"],
            [
                [
                    by_key[h.device_key].info.name or (by_key[h.device_key].device or "")[:12],
                    shown(h.path),
                    f"{h.first.hex[:8]} {format_time(h.first.time)}",
                    f"{h.last.hex[:8]} {format_time(h.last.time)}",
                    len(h.snapshots),
                    ", ".join(human(s) for s in h.sizes),
                    "yes" if h.in_current else "no",
                ]
                for h in result.hits
            ],
        )
    if result.encrypted:
        err.print(
            f"note: {len(result.encrypted)} version(s) encrypted by the phone were not searched: their file list "
            "needs the phone's backup password (--backup-password or PHONEVAULT_BACKUP_PASSWORD[_FILE]), and none "
            "given opens them",
            markup=False,
        )
