"""Changing what a device's history means without touching data: rollback, tags, pins, forget, audit events.

Each operation appends one segment to the device's log; nothing is rewritten or deleted. `forget` only marks
snapshots; `prune` later reclaims what only forgotten snapshots held. No event un-forgets a snapshot.

Forget explains itself: a plan gives every live snapshot of the device a reason. Kept: "pinned", "current" (a policy
always keeps it), "keep-last N" / "keep-daily N" / "keep-weekly N" / "keep-monthly N" (every rule that keeps it,
comma-separated), "not named", "last snapshot" (named, but forgetting it would forget every snapshot of the device:
that is `plan_forget_all`). Forgotten: "named", "no keep rule", "all". Forgetting the current snapshot makes the
newest one left current, by a HeadMoved in the same segment; forgetting all of them leaves the device with no current
snapshot (a HeadMoved to NO_SNAPSHOT), and its next backup starts from nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from .errors import ConcurrentCommit, SnapshotNotFound, SnapshotsPinned
from .events import (
    Event,
    Exported,
    HeadMoved,
    RestoredToDevice,
    SnapshotForgotten,
    SnapshotPinned,
    SnapshotTagged,
)
from .projections import NO_SNAPSHOT, DeviceView, SnapshotRecord
from .repository import Repository, format_time, now_us
from .retention import Candidate, Policy, keep_reasons


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
    """What one forget does to one device: `keep` and `forget` partition its live snapshots (oldest first),
    `reasons` says why for each of them, `head` is its current snapshot afterwards (None: it has none), and `unpin`
    lists pinned snapshots unpinned first (forget --all --unpin)."""

    device: DeviceView
    keep: list[SnapshotRecord]
    forget: list[SnapshotRecord]
    reasons: dict[bytes, str] = field(default_factory=dict)
    head: bytes | None = None
    unpin: list[SnapshotRecord] = field(default_factory=list)

    @property
    def moves_head(self) -> bool:
        return self.head != self.device.head


def _plan(view: DeviceView, forget: set[bytes], reasons: dict[bytes, str]) -> ForgetPlan:
    live = sorted(view.live(), key=lambda s: (s.time, s.seq))
    rest = [s for s in live if s.id not in forget]
    head = view.head
    if head in forget:  # the newest backup left becomes current (HeadMoved, appended with the forget)
        head = rest[-1].id if rest else None
    return ForgetPlan(view, rest, [s for s in live if s.id in forget], reasons, head)


def plan_forget(view: DeviceView, policy: Policy | None, explicit: set[bytes] | None = None) -> ForgetPlan:
    """Forget the snapshots in `explicit` (ids), or those `policy` does not keep. Explicitly named: pinned ones are
    kept, and a device's last live snapshot is kept (forgetting every one is `plan_forget_all`); the current one may
    go, and the newest one left becomes current. By policy: pinned and current ones are always kept."""
    live = view.live()
    reasons: dict[bytes, str] = {}
    if explicit is not None:
        drop = {s.id for s in live if s.id in explicit and not s.pinned}
        for s in live:
            named = s.id in explicit
            reasons[s.id] = (
                ("pinned" if named else "not named, pinned") if s.pinned else "named" if named else "not named"
            )
        if drop and drop == {s.id for s in live}:
            last = view.head if view.head in drop else max(live, key=lambda s: (s.time, s.seq)).id
            drop.discard(last)
            reasons[last] = "last snapshot"
    else:
        kept = keep_reasons([Candidate(s.id, s.time, s.pinned, s.id == view.head) for s in live], policy or Policy())
        drop = {s.id for s in live} - kept.keys()
        reasons = {s.id: ", ".join(kept[s.id]) if s.id in kept else "no keep rule" for s in live}
    return _plan(view, drop, reasons)


def plan_forget_all(view: DeviceView, *, unpin: bool = False) -> ForgetPlan:
    """Every live snapshot of a device (Apple's "Delete Backup"); afterwards it has no current snapshot. Pinned
    snapshots refuse it (SnapshotsPinned) unless `unpin`: then they are unpinned and forgotten too."""
    live = view.live()
    pinned = [s for s in live if s.pinned]
    if pinned and not unpin:
        name = view.info.name or view.device or view.key
        raise SnapshotsPinned(name, [f"{s.hex[:8]} {format_time(s.time)}" for s in pinned])
    plan = _plan(view, {s.id for s in live}, {s.id: "all" for s in live})
    return replace(plan, unpin=pinned)


def apply_forget(repo: Repository, plan: ForgetPlan, reason: str) -> None:
    """Append the plan as one segment: unpins, then a HeadMoved if the current snapshot goes (to the newest one
    left, or to no snapshot), then the SnapshotForgotten events. The HeadMoved comes first so that the current
    snapshot is no longer current when its SnapshotForgotten is folded. A plan that moves the head is appended only
    if the head is still the one it was made against (ConcurrentCommit otherwise, nothing appended): a backup that
    committed meanwhile is current now, and must not be replaced by an older one."""
    if not plan.forget:
        return
    t = now_us()
    events: list[Event] = [SnapshotPinned(s.id, t, False) for s in plan.unpin]
    if plan.moves_head:
        why = "forgot current" if plan.head else "forgot all"
        events.append(HeadMoved(plan.head or NO_SNAPSHOT, t, why))
    events += [SnapshotForgotten(s.id, t, reason) for s in plan.forget]
    if plan.moves_head:
        repo.append(plan.device.key, events, expect_head=plan.device.head)
    else:
        repo.append(plan.device.key, events)


def forget(repo: Repository, view: DeviceView, planner: Callable[[DeviceView], ForgetPlan], reason: str) -> ForgetPlan:
    """Plan with `planner` and apply; if a backup committed between the two, plan again against the new log (a few
    times). Returns the plan applied."""
    for attempt in range(4):
        plan = planner(view)
        try:
            apply_forget(repo, plan, reason)
            return plan
        except ConcurrentCommit:
            if attempt == 3:
                raise
            view = repo.view(view.key, refresh=True)
    raise AssertionError("unreachable")


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
