"""Commands about the vault itself: init, key, check, stats, prune."""

from __future__ import annotations

import os
import sys

import click

from phonevault.store import keys as keyring
from phonevault.store.backends import open_backend
from phonevault.store.check import DamagedSnapshot
from phonevault.store.check import check as run_check
from phonevault.store.errors import PhonevaultError
from phonevault.store.prune import prune as run_prune
from phonevault.store.repair import repair_index as run_repair
from phonevault.store.repository import Repository, format_time
from phonevault.store.stats import usage
from phonevault.sync.damage import domain_names
from phonevault.sync.paths import shown

from .context import get_password, json_option, repo_option, repo_path, with_repo
from .render import emit_json, err, human, out, progress, table


@click.command()
@repo_option
def init(repo_arg: str | None) -> None:
    """Create a new, empty, encrypted vault."""
    path = repo_path(repo_arg)
    if not isinstance(path, str) and path.exists() and not path.is_dir():  # s3: is a URL, no folder
        raise PhonevaultError(f"{path}: is a file; a vault needs a new or empty folder")
    password = get_password(confirm=True, what="new vault password")
    repo = Repository.init(open_backend(str(path), create=True), password)  # create: an S3 bucket, if missing
    out.print(f"created vault {repo.config.id} at {path}")
    repo.close()


@click.group()
def key() -> None:
    """Manage the passwords that open the vault (each wraps the same master key)."""


@key.command("add")
@with_repo
def key_add(repo: Repository) -> None:
    """Add another password."""
    new = get_password(confirm=True, what="additional password") if sys.stdin.isatty() else _new_password_env()
    key_id = keyring.add_key(repo.backend, repo.key, new)
    out.print(f"added key {key_id}")


@key.command("passwd")
@with_repo
def key_passwd(repo: Repository) -> None:
    """Change the password used to open the vault (the old key is removed; data is not re-encrypted)."""
    new = get_password(confirm=True, what="new password") if sys.stdin.isatty() else _new_password_env()
    key_id = keyring.change_password(repo.backend, repo.key, repo.key_id, new)
    out.print(f"password changed (key {repo.key_id} replaced by {key_id})")


@key.command("remove")
@click.argument("key_id")
@with_repo
def key_remove(repo: Repository, key_id: str) -> None:
    """Remove another password's key (a damaged one that `check` names, or a password nobody should use again).
    The key this command was opened with cannot be removed: use `key passwd`."""
    ids = keyring.list_keys(repo.backend)
    match = [i for i in ids if i.startswith(key_id)] if len(key_id) >= 4 else []
    if len(match) != 1:
        raise PhonevaultError(f"key {key_id!r}: {'no' if not match else 'more than one'} key of this vault "
                              "starts with it (`phonevault key list`)")  # fmt: skip
    if match[0] == repo.key_id:
        raise PhonevaultError(f"key {match[0]} is the one this password opened: use `phonevault key passwd`")
    keyring.remove_key(repo.backend, match[0])
    out.print(f"removed key {match[0]}")


@key.command("list")
@json_option
@with_repo(readonly=True)
def key_list(repo: Repository, as_json: bool) -> None:
    """List the keys (one per password)."""
    ids = keyring.list_keys(repo.backend)
    if as_json:
        emit_json([{"id": i, "current": i == repo.key_id} for i in ids])
    else:
        table(None, ["key", "current"], [[i, "*" if i == repo.key_id else ""] for i in ids])


def _new_password_env() -> str:
    pw = os.environ.get("PHONEVAULT_NEW_PASSWORD")
    if not pw:
        raise click.UsageError("not a terminal: give the new password in PHONEVAULT_NEW_PASSWORD")
    return pw


@click.command()
@click.option("--read-data", is_flag=True, help="Also read every pack and verify every blob.")
@click.option(
    "--repair-index",
    is_flag=True,
    help="First write index/<pack> again from the pack's own header for every pack whose index object is missing, "
    "unreadable or wrong (deletes nothing), then check.",
)
@json_option
@with_repo(readonly=lambda options: not options["repair_index"])
def check(repo: Repository, read_data: bool, repair_index: bool, as_json: bool) -> None:
    """Verify the logs, that every snapshot tree equals the fold of its deltas, and index vs packs; name the files
    each damage costs, by the phone's names."""
    repaired = run_repair(repo) if repair_index else None
    with progress("checking", None) as update:
        report = run_check(repo, read_data=read_data, progress=lambda phase, done, total: update(done, total))
    report.errors[:0] = keyring.damaged_keys(repo.backend)  # another password's key file (this one opened)
    if repaired is not None:
        report.errors[:0] = repaired.problems
    damaged = [(_damaged_json(repo, d), _label(repo, d)) for d in report.damaged]
    if as_json:
        emit_json(
            {
                "ok": report.ok,
                "devices": report.devices,
                "snapshots": report.snapshots,
                "packs": report.packs,
                "blobs_read": report.blobs_checked,
                "bytes_read": report.bytes_read,
                "errors": report.errors,
                "notes": report.notes,
                "damaged": [doc for doc, _label in damaged],
                "repaired": [{"index": r.index, "reason": r.reason} for r in repaired.written] if repaired else [],
            }
        )
    else:
        for r in repaired.written if repaired else ():
            out.print(f"wrote {r.index} from its pack's header ({r.reason}; {r.blobs} blobs)")
        for n in report.notes:
            err.print(f"note: {n}")
        for e in report.errors:
            err.print(f"error: {e}", markup=False)
        for d, label in damaged:  # names from phones: plain text
            err.print(f"damaged: {label}: {len(d['paths'])} file(s) cannot be read back:", markup=False)
            for path in d["paths"]:
                err.print(f"  {shown(path)}", markup=False, soft_wrap=True)
        what = f"{report.devices} device(s), {report.snapshots} snapshot(s), {report.packs} pack(s)"
        if read_data:
            what += f", {report.blobs_checked} blobs / {human(report.bytes_read)} read"
        out.print(("no errors: " if report.ok else f"{len(report.errors)} error(s): ") + what)
    if not report.ok:
        sys.exit(1)


def _label(repo: Repository, d: DamagedSnapshot) -> str:
    return f"snapshot {d.snapshot.hex()[:12]} ({repo.view(d.device_key).info.name or d.device})"


def _damaged_json(repo: Repository, d: DamagedSnapshot) -> dict:
    """A damaged snapshot's lost files by the phone's names (domain paths) where its catalog still reads."""
    snap = repo.view(d.device_key).get(d.snapshot)
    names = domain_names(repo, snap, d.paths) if snap is not None else {p: p for p in d.paths}
    return {"snapshot": d.snapshot.hex(), "device": d.device, "paths": sorted(names[p] for p in d.paths)}


@click.command()
@json_option
@with_repo(readonly=True)
def stats(repo: Repository, as_json: bool) -> None:
    """Logical size vs stored size, dedup and compression ratios, per device."""
    per_device, total, on_disk = usage(repo)
    rows = per_device + [total]
    if as_json:
        emit_json(
            {
                "devices": [_usage_json(u) for u in per_device],
                "total": _usage_json(total),
                "repository_bytes": on_disk,
            }
        )
        return
    table(
        None,
        ["device", "snapshots", "logical", "unique", "stored", "dedup", "compression"],
        [
            [
                u.name,
                u.snapshots,
                human(u.logical),
                human(u.unique),
                human(u.stored),
                f"{u.dedup_ratio:.1f}x",
                f"{u.compression_ratio:.2f}x",
            ]
            for u in rows
        ],  # fmt: skip
    )
    out.print(f"repository on disk: {human(on_disk)}")


def _usage_json(u) -> dict:
    return {
        "name": u.name,
        "snapshots": u.snapshots,
        "logical_bytes": u.logical,
        "unique_bytes": u.unique,
        "stored_bytes": u.stored,
        "dedup_ratio": round(u.dedup_ratio, 3),
        "compression_ratio": round(u.compression_ratio, 3),
    }


def parse_duration(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]] * 1_000_000)
        return int(float(text) * 1_000_000)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{text!r} is not a duration like 0, 30m, 1h, 2d") from None


def parse_share(text: str) -> float:
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        share = -1.0
    if not 0 <= share <= 1:
        raise click.BadParameter(f"{text!r} is not a share like 2% or 0.02")
    return share


@click.command()
@click.option(
    "--grace",
    default="0",
    show_default=True,
    help="Delete marked packs only once they have been marked this long. Not needed for safety: packs a running "
    "backup may need are never deleted (they wait for a prune after that backup has finished).",
)
@click.option(
    "--max-unused",
    default="2%",
    show_default=True,
    help="Repack partly used packs until the space of dead blobs in them is at most this share of the live data.",
)
@json_option
@with_repo
def prune(repo: Repository, grace: str, max_unused: str, as_json: bool) -> None:
    """Reclaim the space of forgotten snapshots: in one run when no backup is running; while one is, what it may
    need is kept and a prune after it has finished frees the rest."""
    with progress("pruning", None) as update:  # bytes of the packs each sweep deletes or repacks
        r = run_prune(repo, grace_us=parse_duration(grace), max_unused=parse_share(max_unused), progress=update)
    doc = {
        "live_blobs": r.live_blobs,
        "live_bytes": r.live_bytes,
        "packs": r.packs,
        "pack_bytes": r.pack_bytes,
        "marked_packs": r.marked,
        "marked_bytes": r.marked_bytes,
        "repacked_packs": r.repacked,
        "repacked_bytes": r.repacked_bytes,
        "deleted_packs": r.deleted,
        "deleted_bytes": r.deleted_bytes,
        "pending_packs": r.pending,
        "pending_bytes": r.pending_bytes,
        "free_after": format_time(r.free_after) if r.free_after else None,
        "held_packs": r.held,
        "held_bytes": r.held_bytes,
        "running_backups": r.running_backups,
        "running_since": [format_time(t) for t in r.running_since],
        "notes": r.notes,
    }
    if as_json:
        emit_json(doc)
        return
    for n in r.notes:
        err.print(f"note: {n}", markup=False)
    out.print(
        f"deleted {r.deleted} pack(s) ({human(r.deleted_bytes)}), repacked {r.repacked} (copied "
        f"{human(r.repacked_bytes)}); packs now hold {human(r.pack_bytes)} for {human(r.live_bytes)} of live data"
    )
    if r.pending:
        out.print(
            f"{r.pending} marked pack(s) ({human(r.pending_bytes)}) wait for the grace period ({grace}): a prune "
            f"after {format_time(r.free_after)} frees them"
        )
    if r.held:
        since = ", ".join(format_time(t) for t in r.running_since)
        out.print(
            f"{r.running_backups} backup(s) running (started {since}): {r.held} marked pack(s) "
            f"({human(r.held_bytes)}) are kept until they finish; a prune after that frees them"
        )
