"""Changing what a device's history means without touching data: rollback, tags, pins, forget, audit events.

Each operation appends one segment to the device's log; nothing is rewritten or deleted. `forget` only marks
snapshots; `prune` later reclaims what only forgotten snapshots held. No event un-forgets a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SnapshotNotFound
from .events import Exported, HeadMoved, RestoredToDevice, SnapshotForgotten, SnapshotPinned, SnapshotTagged
from .projections import DeviceView, SnapshotRecord
from .repository import Repository, now_us
from .retention import Candidate, Policy, keep_set


def rollback(repo: Repository, view: DeviceView, target: SnapshotRecord) -> SnapshotRecord:
    """Make `target` the device's current backup. Later snapshots stay; the next backup is staged on `target`."""
    if target.forgotten:
        raise SnapshotNotFound(target.hex[:12], "this snapshot was forgotten and cannot become current")
    repo.append(view.key, [HeadMoved(target.id, now_us(), "rollback")])
    return target


def tag(repo: Repository, view: DeviceView, snap: SnapshotRecord, tags: list[str], *, remove: bool = False) -> None:
    t = now_us()
    repo.append(view.key, [SnapshotTagged(snap.id, name, t, remove) for name in tags])


def pin(repo: Repository, view: DeviceView, snap: SnapshotRecord, pinned: bool = True) -> None:
    repo.append(view.key, [SnapshotPinned(snap.id, now_us(), pinned)])


@dataclass(frozen=True, slots=True)
class ForgetPlan:
    device: DeviceView
    keep: list[SnapshotRecord]
    forget: list[SnapshotRecord]


def plan_forget(view: DeviceView, policy: Policy, explicit: set[bytes] | None = None) -> ForgetPlan:
    live = view.live()
    if explicit is not None:
        drop = {s.id for s in live if s.id in explicit and not s.pinned and s.id != view.head}
        keep_ids = {s.id for s in live} - drop
    else:
        cands = [Candidate(s.id, s.time, s.pinned, s.id == view.head) for s in live]
        keep_ids = keep_set(cands, policy)
    return ForgetPlan(view, [s for s in live if s.id in keep_ids], [s for s in live if s.id not in keep_ids])


def apply_forget(repo: Repository, plan: ForgetPlan, reason: str) -> None:
    if plan.forget:
        t = now_us()
        repo.append(plan.device.key, [SnapshotForgotten(s.id, t, reason) for s in plan.forget])


def _audit(repo: Repository, view: DeviceView, event: Exported | RestoredToDevice) -> str | None:
    """Append an audit event. Best effort: the data is already out, and a vault on a full or read-only disk must
    not turn a successful export or restore into a failure. Returns why it was not recorded, if it was not."""
    try:
        repo.append(view.key, [event])
    except OSError as e:
        return f"the vault could not record this in its log ({e.strerror or e})"
    return None


def record_export(repo: Repository, view: DeviceView, snap: SnapshotRecord, target: str) -> str | None:
    return _audit(repo, view, Exported(snap.id, now_us(), target))


def record_restore(repo: Repository, view: DeviceView, snap: SnapshotRecord, target: str) -> str | None:
    return _audit(repo, view, RestoredToDevice(snap.id, now_us(), target))
