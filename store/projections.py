"""Projections: pure folds of a device's event log into what users look at.

- `project(segments)` -> DeviceView: the device's identity, every snapshot with its tags/pins/forgotten mark, and
  the current head. What makes a snapshot current: a SnapshotCommitted whose backup date (`time`) is at least that
  of every earlier commit of the device, forgotten ones included (the newest backup; an archived backup imported
  late goes into history without moving the head back); a HeadMoved (rollback, or forget moving it to the newest
  snapshot left) to a snapshot that is not forgotten. A HeadMoved to NO_SNAPSHOT leaves the device with none (forget
  of every snapshot) and starts the comparison of dates over, so its next commit, of any date, is current. The head
  itself is never forgotten: forget appends the HeadMoved away from it before its SnapshotForgotten.
- `fold_state(view, snapshot, get)` -> path -> FileEntry: the snapshot's content rebuilt from deltas alone, following
  parent links from the first snapshot. `check` compares it with the snapshot's tree checkpoint.
Nothing here does I/O except through the `get` callable it is handed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from .events import (
    DeviceSeen,
    Event,
    Exported,
    HeadMoved,
    RestoredToDevice,
    SnapshotCommitted,
    SnapshotForgotten,
    SnapshotPinned,
    SnapshotTagged,
)
from .records import DeviceRecord, SnapshotStats
from .trees import FileEntry, GetBlob, apply_delta

NO_SNAPSHOT = b""  # HeadMoved to this: the device has no current snapshot (every one of them is being forgotten)


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    id: bytes
    device_key: str
    seq: int
    time: int
    source: str
    parent: bytes | None
    deltas: tuple[bytes, ...]
    tree: bytes
    packs: tuple[str, ...]
    stats: SnapshotStats
    meta: bytes  # the sync layer's record of the backup, opaque here
    tags: tuple[str, ...] = ()
    pinned: bool = False
    forgotten: bool = False
    committed: int = 0  # when it was committed (`time` is the backup's own date)

    @property
    def hex(self) -> str:
        return self.id.hex()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    kind: str  # "restored" | "exported"
    snapshot: bytes
    time: int
    target: str


@dataclass(frozen=True, slots=True)
class DeviceView:
    key: str
    device: str | None  # the UDID from the latest DeviceSeen
    info: DeviceRecord
    snapshots: tuple[SnapshotRecord, ...]  # in commit order
    head: bytes | None
    last_seq: int  # -1 for an empty log
    audit: tuple[AuditRecord, ...] = field(default=())

    def live(self) -> list[SnapshotRecord]:
        return [s for s in self.snapshots if not s.forgotten]

    def get(self, snapshot: bytes) -> SnapshotRecord | None:
        for s in self.snapshots:
            if s.id == snapshot:
                return s
        return None

    @property
    def head_record(self) -> SnapshotRecord | None:
        return self.get(self.head) if self.head else None


def project(device_key: str, segments: Iterable[tuple[int, list[Event]]]) -> DeviceView:
    device: str | None = None
    info = DeviceRecord()
    snaps: dict[bytes, SnapshotRecord] = {}
    head: bytes | None = None
    newest = -1  # the latest backup date of any commit so far
    last_seq = -1
    audit: list[AuditRecord] = []
    for seq, events in segments:
        last_seq = max(last_seq, seq)
        for ev in events:
            if isinstance(ev, DeviceSeen):
                device, info = ev.device, ev.info
            elif isinstance(ev, SnapshotCommitted):
                snaps[ev.snapshot] = SnapshotRecord(
                    ev.snapshot, device_key, seq, ev.time, ev.source, ev.parent, ev.deltas, ev.tree, ev.packs,
                    ev.stats, ev.meta, committed=ev.committed or ev.time,
                )  # fmt: skip
                # The newest backup becomes current; an older one (an archived backup imported late) takes its
                # place in history without moving the head back. Ties go to the later commit.
                if ev.time >= newest:
                    head, newest = ev.snapshot, ev.time
            elif isinstance(ev, HeadMoved):
                if ev.snapshot == NO_SNAPSHOT:  # every snapshot is forgotten next: the device starts over
                    head, newest = None, -1
                elif ev.snapshot in snaps and not snaps[ev.snapshot].forgotten:
                    head = ev.snapshot
            elif isinstance(ev, SnapshotTagged):
                if (s := snaps.get(ev.snapshot)) is not None:
                    tags = [t for t in s.tags if t != ev.tag] + ([] if ev.removed else [ev.tag])
                    snaps[ev.snapshot] = replace(s, tags=tuple(tags))
            elif isinstance(ev, SnapshotPinned):
                if (s := snaps.get(ev.snapshot)) is not None:
                    snaps[ev.snapshot] = replace(s, pinned=ev.pinned)
            elif isinstance(ev, SnapshotForgotten):
                s = snaps.get(ev.snapshot)
                # The current head and pinned snapshots cannot be forgotten, whatever a writer appended.
                if s is not None and not s.pinned and ev.snapshot != head:
                    snaps[ev.snapshot] = replace(s, forgotten=True)
            elif isinstance(ev, RestoredToDevice | Exported):
                kind = "restored" if isinstance(ev, RestoredToDevice) else "exported"
                audit.append(AuditRecord(kind, ev.snapshot, ev.time, ev.target))
    return DeviceView(device_key, device, info, tuple(snaps.values()), head, last_seq, tuple(audit))


def lineage(view: DeviceView, snapshot: bytes) -> list[SnapshotRecord]:
    """The chain of snapshots from the first one down to `snapshot`, following parent links."""
    chain: list[SnapshotRecord] = []
    cur: bytes | None = snapshot
    seen: set[bytes] = set()
    while cur is not None:
        rec = view.get(cur)
        if rec is None or cur in seen:
            raise ValueError(f"broken parent chain at {cur.hex()}")
        seen.add(cur)
        chain.append(rec)
        cur = rec.parent
    chain.reverse()
    return chain


def fold_state(view: DeviceView, snapshot: bytes, get: GetBlob) -> dict[str, FileEntry]:
    state: dict[str, FileEntry] = {}
    for rec in lineage(view, snapshot):
        for delta in rec.deltas:
            apply_delta(state, get(delta), f"delta {delta.hex()[:16]}")
    return state


def at_or_before(view: DeviceView, time_us: int) -> SnapshotRecord | None:
    """The latest live snapshot taken at or before a time: what "roll back to that date" means."""
    best = None
    for s in view.live():
        if s.time <= time_us and (best is None or s.time >= best.time):
            best = s
    return best
