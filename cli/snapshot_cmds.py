"""Commands over history: devices, snapshots, ls, diff, extract, export, rollback, tag, pin (forget: forget_cmd.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from phonevault.store.errors import PathNotFound
from phonevault.store.history import pin as set_pin
from phonevault.store.history import rollback as do_rollback
from phonevault.store.history import tag as set_tag
from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.refs import resolve_device, resolve_in_device, resolve_snapshot
from phonevault.store.repository import Repository, format_time
from phonevault.sync.errors import CatalogProblems, ExportIncomplete, ExtractIncomplete, StrictRefused
from phonevault.sync.paths import shown
from phonevault.sync.records import backup_meta, device_info

from .backup_password import backup_password_option, password_from
from .context import json_option, with_repo
from .render import emit_json, err, human, out, progress, table, when

if TYPE_CHECKING:
    from phonevault.sync.diff import DiffRow

# Each command imports the sync modules it runs (ls and extract: the catalog; diff; export) in its body: every
# command of this module is resolved by importing it (cli/main.py), and a one-photo extract paid ~30 ms of start-up
# for diff's and the exports' modules it never runs.


def warn(problems: list[str]) -> None:
    """Problems on stderr, one line each, as plain text (names come from phones: no markup, no escapes)."""
    for p in problems:
        err.print(f"warning: {p}", markup=False, soft_wrap=True)


def device_json(v: DeviceView) -> dict:
    info = device_info(v)
    live = v.live()
    latest = max(live, key=lambda s: s.time) if live else None
    return {
        "device": v.device,
        "name": v.info.name or None,
        "model": info.product_type,
        "ios_version": info.ios_version,
        "serial": info.serial,
        "imei": info.imei,
        "phone_number": info.phone_number,
        "snapshots": len(live),
        "latest_backup": format_time(latest.time) if latest else None,
        "current_snapshot": v.head.hex() if v.head else None,
        "backup_size": latest.stats.size if latest else None,
        "stored_bytes": sum(s.stats.new_bytes for s in live),
        "encrypted_by_phone": bool(latest and backup_meta(latest).encrypted),
    }


@click.command()
@json_option
@with_repo(readonly=True)
def devices(repo: Repository, as_json: bool) -> None:
    """One row per device in the vault."""
    docs = [device_json(v) for v in repo.devices()]
    if as_json:
        emit_json(docs)
        return
    table(
        None,
        [
            "name",
            "model",
            "iOS",
            "serial",
            "IMEI",
            "phone",
            "snapshots",
            "latest backup",
            "size",
            "stored",
            "encrypted",
        ],
        [
            [
                d["name"],
                d["model"],
                d["ios_version"],
                d["serial"],
                d["imei"],
                d["phone_number"],
                d["snapshots"],
                d["latest_backup"],
                human(d["backup_size"]),
                human(d["stored_bytes"]),
                "yes" if d["encrypted_by_phone"] else "no",
            ]
            for d in docs
        ],  # fmt: skip
    )


def snapshot_json(v: DeviceView, s: SnapshotRecord) -> dict:
    return {
        "id": s.hex,
        "device": v.device,
        "device_name": v.info.name or None,
        "time": format_time(s.time),
        "dated_by": backup_meta(s).dated_by,  # where `time` came from (sync/dates.py): status-plist, …, stored
        "committed": format_time(s.committed),
        "source": s.source,
        "parent": s.parent.hex() if s.parent else None,
        "files": s.stats.files,
        "size": s.stats.size,
        "new_bytes": s.stats.new_bytes,
        "added": s.stats.added,
        "modified": s.stats.modified,
        "removed": s.stats.removed,
        "tags": list(s.tags),
        "pinned": s.pinned,
        "current": s.id == v.head,
        "encrypted_by_phone": backup_meta(s).encrypted,
        # Files the phone encrypted that the vault holds decrypted (--store-decrypted, sync/decrypted.py)
        "stored_decrypted": backup_meta(s).decrypted,
    }


@click.command()
@click.argument("device", required=False)
@click.option("--all", "show_all", is_flag=True, help="Include forgotten snapshots.")
@json_option
@with_repo(readonly=True)
def snapshots(repo: Repository, device: str | None, show_all: bool, as_json: bool) -> None:
    """Every dated version, oldest first (`*` marks each device's current backup)."""
    views = [resolve_device(repo, device)] if device else repo.devices()
    dated = []
    for v in views:
        for s in v.snapshots if show_all else v.live():
            d = snapshot_json(v, s)
            d["forgotten"] = s.forgotten
            dated.append(((s.time, s.committed), d))
    # By the backup's own date (to the microsecond: the text is to the second), then by when it was stored.
    docs = [d for _when, d in sorted(dated, key=lambda x: x[0])]
    if as_json:
        emit_json(docs)
        return
    table(
        None,
        ["id", "device", "time", "source", "files", "size", "new", "tags", "current"],
        [
            [
                d["id"][:8],
                d["device_name"] or (d["device"] or "")[:12],
                d["time"],
                d["source"].split(":", 1)[0],
                d["files"],
                human(d["size"]),
                human(d["new_bytes"]),
                " ".join(d["tags"] + (["pinned"] if d["pinned"] else []) + (["forgotten"] if d["forgotten"] else [])),
                "*" if d["current"] else "",
            ]
            for d in docs
        ],  # fmt: skip
    )


@click.command("ls")
@click.argument("snapshot")
@click.argument("path", required=False, default="")
@backup_password_option
@json_option
@with_repo(readonly=True)
def ls(repo: Repository, snapshot: str, path: str, backup_password: tuple[str, ...], as_json: bool) -> None:
    """Browse a snapshot by domain and path (no PATH lists the domains). Unusable catalog rows are named on
    stderr (exit 3). A snapshot the phone encrypted needs its backup password (asked for only then)."""
    from phonevault.sync.catalog import list_dir, load_catalog  # noqa: PLC0415  (see the imports)

    _view, snap = resolve_snapshot(repo, snapshot)
    catalog = load_catalog(repo, snap, password_from(backup_password))
    problems = catalog.problems_under(path)
    try:
        items = list_dir(catalog, path)
    except PathNotFound:
        if not problems:
            raise
        items = []
    _print_listing(items, as_json)
    if problems:
        warn(problems)
        raise CatalogProblems(snap.hex[:12], problems)


def _print_listing(items: list, as_json: bool) -> None:
    if as_json:
        emit_json(
            [
                {
                    "name": i.name,
                    "path": i.path,
                    "type": "dir" if i.is_dir else "file",
                    "size": i.size,
                    "mtime": format_time(i.mtime * 1_000_000) if i.mtime else None,
                    "file_id": i.file_id,
                }
                for i in items
            ]  # fmt: skip
        )
        return
    table(
        None,
        ["name", "size", "modified"],
        [[shown(i.name) + ("/" if i.is_dir else ""), human(i.size), when(i.mtime * 1_000_000)] for i in items],
    )


@click.command()
@click.argument("snap_a")
@click.argument("snap_b")
@click.argument("paths", nargs=-1)
@click.option(
    "--metadata", "show_metadata", is_flag=True, help="Also list files with the same bytes and another mode or mtime."
)
@click.option("--stat", "as_stat", is_flag=True, help="Counts and bytes per domain instead of one line per file.")
@backup_password_option
@json_option
@with_repo(readonly=True)
def diff(
    repo: Repository,
    snap_a: str,
    snap_b: str,
    paths: tuple[str, ...],
    show_metadata: bool,
    as_stat: bool,
    backup_password: tuple[str, ...],
    as_json: bool,
) -> None:
    """Files added, removed and modified (their bytes differ) from SNAP_A to SNAP_B, by domain path; PATHS keep
    those at or below these domain paths (e.g. CameraRollDomain/Media). A file whose bytes are the same but whose
    mode or mtime changed (a restore and a new backup rewrite every file) is not modified: --metadata lists it."""
    from phonevault.sync.diff import diff as catalog_diff  # noqa: PLC0415  (see the imports)
    from phonevault.sync.diff import per_domain  # noqa: PLC0415

    _va, a = resolve_snapshot(repo, snap_a)
    _vb, b = resolve_snapshot(repo, snap_b)
    every = catalog_diff(repo, a, b, paths, metadata=True, password=password_from(backup_password))
    rows = every if show_metadata else [r for r in every if r.kind != "metadata"]
    if as_stat:
        _print_diff_stat(a, b, per_domain(rows), show_metadata, as_json)
    elif as_json:
        changes = [{"path": r.path, "change": r.kind, "old_size": r.old_size, "new_size": r.new_size} for r in rows]
        emit_json({"from": a.hex, "to": b.hex, "changes": changes})
    else:
        for r in rows:
            out.print(f"{_SIGN[r.kind]} {shown(r.path)}  ({_diff_sizes(r)})", markup=False)
        out.print(_diff_counts(rows, hidden=len(every) - len(rows), show_metadata=show_metadata), markup=False)


_SIGN = {"added": "+", "removed": "-", "modified": "M", "metadata": "~"}


def _diff_sizes(r: DiffRow) -> str:
    if r.kind == "added":
        return human(r.new_size)
    if r.kind == "removed":
        return human(r.old_size)
    if r.kind == "metadata":
        return f"{human(r.new_size)}, same bytes"
    return f"{human(r.old_size)} -> {human(r.new_size)}"


def _diff_counts(rows: list, *, hidden: int, show_metadata: bool) -> str:
    counts = {k: sum(r.kind == k for r in rows) for k in _SIGN}
    line = f"{counts['added']} added, {counts['removed']} removed, {counts['modified']} modified"
    if show_metadata:
        return line + f", {counts['metadata']} with the same bytes and another mode or mtime"
    if hidden:
        return line + f"; {hidden} with the same bytes and another mode or mtime not listed (--metadata lists them)"
    return line


def _print_diff_stat(a: SnapshotRecord, b: SnapshotRecord, stats: list, show_metadata: bool, as_json: bool) -> None:
    counted = ["added", "removed", "modified", *(["metadata"] if show_metadata else [])]
    keys = [*counted, "added_bytes", "removed_bytes"]
    if as_json:
        domains = [{"domain": d.domain, **{k: getattr(d, k) for k in keys}} for d in stats]
        emit_json({"from": a.hex, "to": b.hex, "domains": domains})
        return
    total = {k: sum(getattr(d, k) for d in stats) for k in keys}
    rows = [[d.domain or "(backup folder)", *(getattr(d, k) for k in keys)] for d in stats]
    rows.append(["total", *(total[k] for k in keys)])
    table(
        None,
        ["domain", *counted, "added bytes", "removed bytes"],
        [[*r[:-2], human(r[-2]), human(r[-1])] for r in rows],
    )


@click.command()
@click.argument("snapshot")
@click.argument("paths", nargs=-1, required=True)
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False, path_type=Path), help="Target folder.")
@click.option("--overwrite", is_flag=True, help="Replace files that already exist under --to.")
@click.option("--strict", is_flag=True, help="All or nothing: write nothing unless every file can be extracted.")
@backup_password_option
@with_repo(readonly=True)
def extract(
    repo: Repository,
    snapshot: str,
    paths: tuple[str, ...],
    dest: Path,
    overwrite: bool,
    strict: bool,
    backup_password: tuple[str, ...],
) -> None:
    """Copy files out of a snapshot by domain path to DEST/<domain path>, e.g. --to ex gives
    ex/CameraRollDomain/Media/DCIM/100APPLE/IMG_0001.HEIC. Existing files are never replaced without --overwrite;
    a file that cannot be extracted (one the vault cannot read back, too) is named on stderr, every other one is
    extracted (exit 3); with --strict nothing is, then. Files of a snapshot the phone encrypted are decrypted with
    its backup password."""
    from phonevault.sync.extract import extract as catalog_extract  # noqa: PLC0415  (see the imports)

    _view, snap = resolve_snapshot(repo, snapshot)
    password = password_from(backup_password)
    try:
        with progress("extracting", None) as update:
            done = catalog_extract(
                repo, snap, list(paths), dest, overwrite=overwrite, strict=strict, progress=update, password=password
            )
    except ExtractIncomplete as e:
        _print_extracted(e.extracted)
        warn(e.problems)
        raise
    except StrictRefused as e:
        warn(e.problems)
        raise
    _print_extracted(done)


def _print_extracted(done: list) -> None:
    for x in done:
        click.echo(f"{shown(x.source)} -> {shown(str(x.path))} ({human(x.size)})")  # as it is: no rich, no wrapping


@click.command()
@click.argument("snapshot")
@click.option("--to", "dest", required=True, type=click.Path(file_okay=False, path_type=Path), help="Backup root.")
@click.option("--strict", is_flag=True, help="All or nothing: leave nothing in DEST unless every file exports.")
@click.option(
    "--decrypt",
    is_flag=True,
    help="For a backup the phone encrypted: write the plain folder of its content (files, Manifest.db decrypted; "
    "IsEncrypted false), with its backup password. Without it, export is the encrypted folder, bit for bit.",
)
@backup_password_option
@with_repo
def export(
    repo: Repository, snapshot: str, dest: Path, strict: bool, decrypt: bool, backup_password: tuple[str, ...]
) -> None:
    """Write a complete MobileSync backup folder (DEST/<UDID>/) that Finder, iTunes or idevicebackup2 restore from.
    A file the vault cannot read back is named on stderr and the rest is exported (exit 3); with --strict nothing
    is, then."""
    from phonevault.sync.decrypt_export import export_decrypted  # noqa: PLC0415  (see the imports)
    from phonevault.sync.export import export_snapshot  # noqa: PLC0415

    view, snap = resolve_snapshot(repo, snapshot)
    try:
        with progress("exporting", snap.stats.size) as update:
            if decrypt:
                result = export_decrypted(
                    repo, view, snap, dest, password_from(backup_password), progress=update, strict=strict
                )
            else:
                result = export_snapshot(repo, view, snap, dest, progress=update, strict=strict)
    except StrictRefused as e:
        warn(e.problems)
        raise
    out.print(
        f"exported snapshot {snap.hex[:8]} to {result.path}: {result.files} files, {human(result.bytes)}", markup=False
    )
    if result.problems or result.damaged:
        warn(result.problems + result.damaged)
        raise ExportIncomplete(result.problems + result.damaged)


@click.command()
@click.argument("device")
@click.option(
    "--to", "target", required=True, help="A snapshot id prefix, latest, or a date (YYYY-MM-DD[THH:MM], UTC)."
)
@with_repo
def rollback(repo: Repository, device: str, target: str) -> None:
    """Make an earlier version the device's current backup. Later versions stay in the vault."""
    view = resolve_device(repo, device)
    snap = resolve_in_device(view, target)
    do_rollback(repo, view, snap)
    out.print(f"{view.info.name or view.device}: current backup is now {snap.hex[:8]} ({format_time(snap.time)})")


@click.command()
@click.argument("snapshot")
@click.argument("tags", nargs=-1, required=True)
@click.option("--remove", is_flag=True, help="Remove these tags instead of adding them.")
@with_repo
def tag(repo: Repository, snapshot: str, tags: tuple[str, ...], remove: bool) -> None:
    """Label a snapshot."""
    view, snap = resolve_snapshot(repo, snapshot)
    set_tag(repo, view, snap, list(tags), remove=remove)
    out.print(f"{snap.hex[:8]}: {'removed' if remove else 'added'} {', '.join(tags)}")


@click.command()
@click.argument("snapshot")
@click.option("--unpin", is_flag=True, help="Allow retention to forget it again.")
@with_repo
def pin(repo: Repository, snapshot: str, unpin: bool) -> None:
    """Protect a snapshot from retention (`forget` never removes a pinned snapshot)."""
    view, snap = resolve_snapshot(repo, snapshot)
    set_pin(repo, view, snap, not unpin)
    out.print(f"{snap.hex[:8]}: {'unpinned' if unpin else 'pinned'}")
