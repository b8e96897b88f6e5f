"""`forget`: by id, by a --keep-* policy, or every snapshot of a device (`--all`, Apple's "Delete Backup", which asks
first). Every snapshot it keeps is listed with why (store/history.py names the reasons); named snapshots it keeps
make it exit 1 after saying so."""

from __future__ import annotations

import shlex
import sys

import click

from phonevault.store.errors import NotConfirmed, SnapshotsKept
from phonevault.store.history import ForgetPlan, apply_forget, plan_forget, plan_forget_all
from phonevault.store.history import forget as forget_with
from phonevault.store.projections import DeviceView
from phonevault.store.refs import resolve_device, resolve_snapshot
from phonevault.store.repository import Repository, format_time
from phonevault.store.retention import Policy

from .context import json_option, with_repo
from .render import emit_json, out, table


@click.command()
@click.argument("snapshots_", metavar="[SNAPSHOT|DEVICE]...", nargs=-1)
@click.option("--device", help="Apply the policy (or --all) to this device only.")
@click.option("--keep-last", type=int, default=0)
@click.option("--keep-daily", type=int, default=0)
@click.option("--keep-weekly", type=int, default=0)
@click.option("--keep-monthly", type=int, default=0)
@click.option("--all", "forget_all", is_flag=True, help="Forget every snapshot of the DEVICE(s) named (Delete Backup).")
@click.option("--unpin", is_flag=True, help="With --all: unpin pinned snapshots and forget them too.")
@click.option("--yes", "-y", is_flag=True, help="With --all: do not ask for confirmation.")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be forgotten.")
@json_option
@with_repo(readonly=lambda options: options["dry_run"])
def forget(
    repo: Repository, snapshots_: tuple[str, ...], device: str | None, keep_last: int, keep_daily: int,
    keep_weekly: int, keep_monthly: int, forget_all: bool, unpin: bool, yes: bool, dry_run: bool, as_json: bool,
) -> None:  # fmt: skip
    """Forget snapshots by id, by a --keep-* policy, or every snapshot of a device (--all, asks first). Says why
    each snapshot is kept. Pinned snapshots are kept; a policy keeps the current one; forgetting the current one
    makes the newest one left current. Space comes back with `prune`."""
    policy = Policy(keep_last, keep_daily, keep_weekly, keep_monthly)
    if forget_all:
        plans = _plan_all(repo, list(snapshots_) + ([device] if device else []), policy, unpin)
        if not dry_run and any(p.forget for p in plans):
            _confirm(plans, yes)
            for p in plans:
                apply_forget(repo, p, "all")
    else:
        if unpin:
            raise click.UsageError("--unpin goes with --all")
        plans = _plan_some(repo, snapshots_, device, policy, dry_run)
    if as_json:
        emit_json([_forget_json(p, dry_run) for p in plans])
    else:
        for p in plans:
            _print_plan(p, dry_run)
        if not dry_run and any(p.forget for p in plans):
            out.print("space comes back with `phonevault prune`")
    kept = [f"{s.hex[:8]} ({p.reasons[s.id]})" for p in plans for s in p.keep if p.reasons[s.id] in _REFUSED]
    if snapshots_ and not forget_all and not dry_run and kept:
        raise SnapshotsKept(kept)  # named but kept: the command did not do what it was asked (said why above)


_REFUSED = {"pinned", "last snapshot"}  # reasons a snapshot that was named is kept


def _plan_some(
    repo: Repository, refs: tuple[str, ...], device: str | None, policy: Policy, dry_run: bool
) -> list[ForgetPlan]:
    if refs and not policy.empty():
        raise click.UsageError("give snapshot ids or a --keep-* policy, not both")
    if not refs and policy.empty():
        raise click.UsageError("nothing to forget: give snapshot ids, a --keep-* policy, or DEVICE --all")
    if refs:
        by_device: dict[str, tuple[DeviceView, set[bytes]]] = {}
        for ref in refs:
            v, s = resolve_snapshot(repo, ref)
            by_device.setdefault(v.key, (v, set()))[1].add(s.id)
        planners = [(v, lambda view, ids=ids: plan_forget(view, policy, ids)) for v, ids in by_device.values()]
        reason = "explicit"
    else:
        views = [resolve_device(repo, device)] if device else repo.devices()
        planners = [(v, lambda view: plan_forget(view, policy)) for v in views]
        reason = f"policy {policy}"
    if dry_run:
        return [planner(v) for v, planner in planners]
    return [forget_with(repo, v, planner, reason) for v, planner in planners]


def _plan_all(repo: Repository, names: list[str], policy: Policy, unpin: bool) -> list[ForgetPlan]:
    if not policy.empty():
        raise click.UsageError("--all forgets every snapshot of a device: give no --keep-* rule with it")
    if not names:
        raise click.UsageError("--all needs the DEVICE whose backups to forget (a name, UDID or UDID prefix)")
    views = {v.key: v for v in (resolve_device(repo, n) for n in names)}
    return [plan_forget_all(v, unpin=unpin) for v in views.values()]


def _confirm(plans: list[ForgetPlan], yes: bool) -> None:
    what = "; ".join(
        f"{_device_name(p.device)}: all {len(p.forget)} snapshot(s), {format_time(p.forget[0].time)} to "
        f"{format_time(p.forget[-1].time)}"
        for p in plans
        if p.forget
    )
    if yes:
        return
    if not sys.stdin.isatty():
        raise NotConfirmed(f"forget --all ({what})", "not a terminal to ask on: add --yes to forget them")
    if not click.confirm(f"Forget {what}? Prune then deletes their data", default=False, err=True):
        raise NotConfirmed(f"forget --all ({what})", "not confirmed")


def _device_name(v: DeviceView) -> str:
    return v.info.name or v.device or v.key


def _forget_json(p: ForgetPlan, dry_run: bool) -> dict:
    return {
        "device": p.device.device,
        "keep": [s.hex for s in p.keep],
        "forget": [s.hex for s in p.forget],
        "dry_run": dry_run,
        "reasons": {s.hex: p.reasons.get(s.id, "") for s in sorted(p.keep + p.forget, key=lambda s: (s.time, s.seq))},
        "current": p.head.hex() if p.head else None,
    }


def _print_plan(p: ForgetPlan, dry_run: bool) -> None:
    name = _device_name(p.device)
    verb = "would forget" if dry_run else "forgot"
    rows = [
        [s.hex[:8], format_time(s.time), " ".join(s.tags), verb if s in p.forget else "keep", p.reasons.get(s.id, "")]
        for s in sorted(p.keep + p.forget, key=lambda s: (s.time, s.seq))
    ]
    # Names come from phones: printed as plain text, never as markup.
    if not rows:
        out.print(f"{name}: no snapshots", markup=False)
        return
    out.print(f"{name}: keep {len(p.keep)}, {verb} {len(p.forget)}", markup=False)
    table(None, ["id", "time", "tags", "action", "why"], rows)
    if any(p.reasons.get(s.id) == "last snapshot" for s in p.keep):
        hint = f"phonevault forget {shlex.quote(name)} --all"
        out.print(f"  a device's last snapshot is kept; to forget every one: {hint}", markup=False)
    if any(p.reasons.get(s.id, "").startswith("pinned") for s in p.keep):
        out.print("  pinned snapshots are kept: `phonevault pin --unpin SNAPSHOT` first")
    if p.moves_head:
        head = p.device.get(p.head) if p.head else None
        now = "would be" if dry_run else "is now"
        out.print(
            f"  current backup {now} {head.hex[:8]} ({format_time(head.time)})"
            if head
            else f"  no current backup {'would be' if dry_run else 'is'} left: the next backup is a full one"
        )
