"""Reclaiming space after `forget`, in one run when no backup is running, safely against backups running meanwhile.

Objects (sealed with the repository key):
- `prune/<time>-<rand>`: msgpack [1, Tm, [pack id, …]], ad = MARKER_AD — the candidate packs of one mark phase,
  Tm (µs since the epoch) taken after the packs were listed.
- `writers/<rand>`: msgpack [1, started_us, refreshed_us], ad = the object's name — one running SnapshotWriter.

What is live: every tree node and chunk of every live (not forgotten) snapshot, and the delta blobs of every live
snapshot and of each of its ancestors (so fold(deltas) stays checkable). A forgotten snapshot that no live one
descends from keeps nothing, deltas included: after forgetting every snapshot of a device, none of its data stays.
If any device log cannot be read whole, prune stops before deleting anything (LogUnreadable): the unread part may
reference any pack. A pack whose index object cannot be read is left alone (check names it).

The protocol between a writer W (store/writer.py) and prune P:

W: 1. registers: puts `writers/<rand>` with started = refreshed = now; a daemon thread puts it again every
      WRITER_REFRESH_S with a new refreshed time; the marker is deleted when W commits or is closed (also when W
      is garbage-collected or its process exits).
   2. then reads every prune marker and never deduplicates against a candidate pack (it stores those blobs again);
   3. writes its data and tree packs. Every pack it wrote and every pack it deduplicated against is a dependency;
   4. before appending its commit event, checks that every dependency still exists (PackPruned if one is gone, and
      nothing is committed); appends the event; then deletes its marker.
P: mark — folds every device log into the live set; packs with no live blob (a crashed writer's leftovers,
      forgotten snapshots' data, and also a running writer's packs, which no commit references yet) and packs no
      index describes become candidates, and so do the packs chosen for repacking: while the bytes of dead or
      duplicate blobs in the packs kept exceed `max_unused` of the live bytes, the pack with the smallest live
      share is chosen next. The candidates go into a new marker M with time Tm; nothing is copied yet.
   sweep — M is swept when (a) the grace period has passed since Tm and (b) no live writer marker has a start
      before Tm + CLOCK_SLACK_US. P reads the writer markers first, then brings the live set up to date (so whatever
      a commit made since then references stays alive). A candidate each of whose blobs is a live blob with no copy
      outside the candidates is whole again (a backup that held it has committed) and stays. Of the others, those
      holding no such blob go first (index object, then pack); then the live blobs that have no other copy are
      copied — still sealed, a sealed blob is bound only to its id, and verified on the way — into new packs, one
      pack at a time: a new pack is cut before the next source would overflow it, and once it and its index object
      are written, the sources whose blobs it holds are deleted. So the vault never holds more than one new pack
      beyond what it held before. Then M is deleted.
   With no backup running P sweeps M in the same run: it writes M, reads the writer markers again, and sweeps if
      none holds M. That is safe with no grace period: a writer whose marker this second read missed registered
      after M existed, and registration comes before W reads the prune markers (step 2), so it avoids M's packs;
      and its own packs, written after it registered, were not listed before Tm. (A writer whose started time is
      before Tm but whose marker was not yet put is such a writer: what orders it is the put, not the time it
      took.) The default grace is therefore 0; a grace period only delays deletion (for readers of an old listing,
      or a backend whose listings lag behind its writes).

Why (b) makes a sweep safe for every commit in flight: a pack can be both a dependency of a running W and a
candidate of M only if W registered before M was written.
- W's own packs are written after W registered, and are in M only if they were listed before Tm: W started < Tm.
- A pack W deduplicated against is a candidate of no marker that existed when W read the markers (step 2, after
  step 1); so M was written after W registered: W started < Tm + the time it took to write M.
So every writer that may depend on M's packs started before Tm + CLOCK_SLACK_US, and its live marker holds M
back. When W finishes, its commit event is appended before its marker goes, so the sweep that the marker no longer
holds back sees that commit in the live set and keeps what it references; if W aborted, its packs are garbage and
may go. What W inherits from its parent (the head it was staged on) is held the same way: a forget of that snapshot
moves the head, so W's commit fails with ConcurrentCommit, and until then its marker holds any marker written since.
Prune never waits: with a backup running it marks, sweeps only markers no writer holds, and reports the held packs
(`held`) and the backups holding them; a prune after those backups have finished frees them.

Stale writers: a marker not refreshed for WRITER_STALE_US belongs to a writer that died (killed, power loss, a
disk that vanished). Prune ignores it, deletes it and says so in `notes`, so no stale marker ever blocks
anything. A writer that was only paused that long (a laptop asleep mid-backup) has lost its protection: its check
in step 4 turns a pack pruned meanwhile into PackPruned instead of a snapshot with missing blobs. (The check and
the commit are two steps; a writer paused for ten minutes exactly between them is the one case the check cannot
catch.)

Clocks: started, refreshed and Tm come from the clocks of the writer's and the prune's hosts. CLOCK_SLACK_US absorbs
the time to write M and a skew between hosts of up to a few minutes; larger skews are not supported.

Grace: a marker waits at least that long before it is swept (`pending` counts its packs, `free_after` says when).
Cost of (b): a running writer's new packs are marked too; the sweep after it finishes keeps them (they are whole
again) and drops the marker, but until that sweep later backups store those blobs again instead of reusing them.
Memory: the live set holds one entry per live blob (~100 bytes each), the pack listing one entry per blob; a repack
holds one new pack (≤ `pack_size` plus one blob, or one source's live blobs if larger).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgpack

from .errors import CorruptObject, IndexIncomplete, LogUnreadable, MissingObject, UnsupportedFormat
from .index import decode_index, index_name, write_index
from .packs import TARGET_PACK_SIZE, BlobLocation, PackWriter, open_blob, pack_name
from .projections import SnapshotRecord
from .repository import Repository, format_time, now_us
from .trees import decode_shard, read_root
from .writers import (  # noqa: F401 - writer.py and tests import them from here too
    WRITER_FORMAT,
    WRITER_REFRESH_S,
    WRITER_STALE_US,
    WRITERS,
    WriterMarker,
    read_writers,
    seal_writer_marker,
    writer_marker_name,
)

MARKER_FORMAT = 1
MARKER_AD = b"phonevault/v1/prune-marker"

CLOCK_SLACK_US = 5 * 60 * 10**6  # writer started < Tm + this: it may depend on the marker's packs
MAX_UNUSED = 0.02  # repack until dead and duplicate blobs in packs are at most this share of the live bytes


@dataclass(slots=True)
class PruneResult:
    live_blobs: int = 0
    live_bytes: int = 0  # the stored (sealed) length of every live blob, each counted once
    packs: int = 0  # packs when the mark phase listed them
    pack_bytes: int = 0  # bytes in packs when prune finished
    marked: int = 0
    marked_bytes: int = 0
    repacked: int = 0  # packs whose live blobs were copied into new packs (and which were then deleted)
    repacked_blobs: int = 0
    repacked_bytes: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    pending: int = 0  # candidates still waiting for their grace period
    pending_bytes: int = 0
    free_after: int = 0  # when the last of them has waited its grace period (µs); 0 if none waits
    held: int = 0  # candidates past their grace period, held back by running backups
    held_bytes: int = 0
    running_backups: int = 0  # live writer markers seen
    running_since: list[int] = field(default_factory=list)  # when the backups holding candidates started
    stale_writers: int = 0  # dead writers' markers removed
    notes: list[str] = field(default_factory=list)


def _ago(us: int) -> str:
    s = max(0, us) // 10**6
    return f"{s // 3600} h {s % 3600 // 60} min" if s >= 3600 else f"{s // 60} min {s % 60} s"


def live_writers(repo: Repository, result: PruneResult) -> list[WriterMarker]:
    """The markers of writers still running. Stale and unreadable markers are removed and named in the notes."""
    markers, unreadable = read_writers(repo)
    now = now_us()
    live = []
    for m in markers:
        if now - m.refreshed_us < WRITER_STALE_US:
            live.append(m)
            continue
        repo.backend.delete(m.name)
        result.stale_writers += 1
        result.notes.append(
            f"{m.name}: a backup started {format_time(m.started_us)} stopped refreshing its marker "
            f"{_ago(now - m.refreshed_us)} ago (it was killed or crashed); ignored and removed"
        )
    for name in unreadable:
        repo.backend.delete(name)
        result.stale_writers += 1
        result.notes.append(f"{name}: unreadable writer marker; ignored and removed")
    result.running_backups = max(result.running_backups, len(live))
    return live


def _held(marker_time: int, writers: list[WriterMarker]) -> list[WriterMarker]:
    """The running writers that may depend on a marker written at `marker_time`."""
    return [w for w in writers if w.started_us < marker_time + CLOCK_SLACK_US]


def snapshot_blobs(repo: Repository, snap: SnapshotRecord, seen_nodes: set[bytes]) -> Iterator[bytes]:
    """The tree and data blobs of a snapshot; shard nodes in `seen_nodes` (shared with an earlier snapshot walked
    with the same set) are not descended again."""
    yield snap.tree
    for ref in read_root(snap.tree, repo.get_blob):
        yield ref.node
        if ref.node in seen_nodes:
            continue
        seen_nodes.add(ref.node)
        for entry in decode_shard(repo.get_blob(ref.node)):
            yield from entry.chunks


class LiveSet:
    """The blobs live snapshots need (see the module docstring), brought up to date by `update`, which walks only
    the snapshots it has not walked yet. A snapshot forgotten after it was walked stays counted: a larger live set
    only keeps more."""

    def __init__(self) -> None:
        self.blobs: set[bytes] = set()
        self._trees: set[bytes] = set()  # snapshots whose trees were walked
        self._deltas: set[bytes] = set()  # snapshots whose deltas were added
        self._nodes: set[bytes] = set()

    def update(self, repo: Repository) -> None:
        views = []
        for key in repo.device_keys():
            views.append(view := repo.view(key, refresh=True))
            if damage := repo.damaged_segments(key):
                raise LogUnreadable(damage)
        if any(snap.id not in self._trees for view in views for snap in view.live()):
            # A commit read above wrote its index objects before it: listing them now locates its trees. Without
            # it, a second commit made during one prune was "not in any index" (Repository.locate_needed reloads
            # the index once per repository, for a damaged cache).
            repo.sync_index()
        for view in views:
            for snap in view.live():
                if snap.id not in self._trees:
                    self._trees.add(snap.id)
                    self.blobs.update(snapshot_blobs(repo, snap, self._nodes))
                rec: SnapshotRecord | None = snap
                while rec is not None and rec.id not in self._deltas:  # it and its ancestors, forgotten or not
                    self._deltas.add(rec.id)
                    self.blobs.update(rec.deltas)
                    rec = view.get(rec.parent) if rec.parent else None


def live_blobs(repo: Repository) -> set[bytes]:
    live = LiveSet()
    live.update(repo)
    return live.blobs


def read_markers(repo: Repository) -> list[tuple[str, int, list[str]]]:
    out = []
    for name, _ in sorted(repo.backend.list("prune/")):
        try:
            fmt, t, packs = msgpack.unpackb(repo.key.open(repo.backend.get(name), MARKER_AD, name))
            if fmt != MARKER_FORMAT:
                raise UnsupportedFormat(name, fmt)
            out.append((name, t, list(packs)))
        except (CorruptObject, MissingObject, ValueError, msgpack.UnpackException):
            continue  # a damaged marker only delays deletion; it never causes any
    return out


def candidate_packs(repo: Repository) -> set[str]:
    return {p for _name, _t, packs in read_markers(repo) for p in packs}


@dataclass(frozen=True, slots=True)
class _Packs:
    sizes: dict[str, int]  # every pack in the vault -> its size
    contents: dict[str, dict[bytes, BlobLocation]]  # pack -> its blobs, per its index object
    unreadable: set[str]  # packs whose index object exists but does not open: left alone

    def holders(self, live: set[bytes]) -> dict[bytes, set[str]]:
        """Live blob -> the packs that exist and hold it (an index object whose pack is gone is no copy)."""
        out: dict[bytes, set[str]] = {}
        for pack, blobs in self.contents.items():
            if pack in self.sizes:
                for bid in blobs.keys() & live:
                    out.setdefault(bid, set()).add(pack)
        return out


def _list_packs(repo: Repository) -> _Packs:
    sizes = {name.rsplit("/", 1)[1]: size for name, size in repo.backend.list("packs/")}
    contents: dict[str, dict[bytes, BlobLocation]] = {}
    unreadable: set[str] = set()
    for name, _ in repo.backend.list("index/"):
        pack = name.rsplit("/", 1)[1]
        try:
            contents[pack] = decode_index(repo.key, name, repo.backend.get(name))
        except MissingObject:
            continue  # deleted while we listed (another prune): its pack goes, or went, with it
        except (CorruptObject, UnsupportedFormat):
            unreadable.add(pack)
    return _Packs(sizes, contents, unreadable)


def _choose(packs: _Packs, live: set[bytes], skip: set[str], max_unused: float) -> tuple[list[str], list[str], int]:
    """(packs holding no live blob, packs to repack, live bytes). Each live blob counts once, in the pack that holds
    the most live bytes; every other blob a pack holds is unused. Packs are chosen for repacking, smallest live
    share first, while the unused bytes left exceed `max_unused` of the live bytes."""
    dead, kept = [], {}
    for pack in sorted(packs.sizes):
        if pack in skip or pack in packs.unreadable:
            continue
        blobs = packs.contents.get(pack, {})
        if blobs.keys() & live:
            kept[pack] = blobs
        else:
            dead.append(pack)  # or unindexed: a crashed writer's leftover, or a running writer's pack between its
            # data and its index object
    live_in = {p: sum(loc.length for b, loc in blobs.items() if b in live) for p, blobs in kept.items()}
    owner: dict[bytes, str] = {}
    for pack in sorted(kept, key=lambda p: (-live_in[p], p)):
        for bid in kept[pack].keys() & live:
            owner.setdefault(bid, pack)
    used = dict.fromkeys(kept, 0)
    unused = dict.fromkeys(kept, 0)
    for pack, blobs in kept.items():
        for bid, loc in blobs.items():
            if owner.get(bid) == pack:
                used[pack] += loc.length
            else:
                unused[pack] += loc.length
    live_bytes = sum(used.values())
    for pack in packs.contents.keys() & (skip | packs.unreadable):  # live blobs only candidates or damage hold
        for bid, loc in packs.contents[pack].items():
            if bid in live and bid not in owner:
                owner[bid] = pack
                live_bytes += loc.length
    excess = sum(unused.values()) - max_unused * live_bytes
    repack = []
    for pack in sorted((p for p in kept if unused[p]), key=lambda p: (used[p] / packs.sizes[p], p)):
        if excess <= 0:
            break
        repack.append(pack)
        excess -= unused[pack]
    return dead, repack, live_bytes


def _delete(repo: Repository, pack: str, size: int, result: PruneResult, tick: Tick) -> None:
    repo.backend.delete(index_name(pack))  # index first: a pack without index is harmless, the reverse is not
    repo.backend.delete(pack_name(pack))
    result.deleted += 1
    result.deleted_bytes += size
    tick(size)


#: progress(done, total): bytes of the packs a sweep has dealt with (deleted, or kept because damaged), of all it
#: set out to.
PruneProgress = Callable[[int, int], None]
Tick = Callable[[int], None]


def _sweep(
    repo: Repository,
    candidates: set[str],
    result: PruneResult,
    live: LiveSet | None = None,
    pack_size: int = TARGET_PACK_SIZE,
    progress: PruneProgress | None = None,
) -> None:
    """Delete the candidates, first copying the live blobs that only they hold (see the module docstring). The
    caller has made sure no running writer may depend on them and brought `live` up to date after reading the
    writer markers (None: computed here)."""
    if live is None:
        live = LiveSet()
        live.update(repo)
    packs = _list_packs(repo)
    doomed = {p for p in candidates if p in packs.sizes and p not in packs.unreadable}
    holders = packs.holders(live.blobs)
    while True:
        need = {
            p: [b for b in sorted(packs.contents.get(p, {}).keys() & live.blobs) if not holders[b] - doomed]
            for p in doomed
        }
        whole = {p for p in doomed if need[p] and len(need[p]) == len(packs.contents[p])}
        if not whole:
            break
        doomed -= whole  # keeping it costs nothing; copying it would copy all of it
    total, done = sum(packs.sizes[p] for p in doomed), [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    for pack in sorted(p for p in doomed if not need[p]):  # nothing to copy: the vault shrinks before it grows
        _delete(repo, pack, packs.sizes[pack], result, tick)
    _repack(repo, packs, [p for p in sorted(doomed) if need[p]], need, result, pack_size, tick)


def _repack(
    repo: Repository,
    packs: _Packs,
    sources: list[str],
    need: dict[str, list[bytes]],
    result: PruneResult,
    size: int,
    tick: Tick,
) -> None:
    """Copy each source's needed blobs into new packs and delete the source once its blobs are in a written pack.
    A new pack is cut before a source's blobs would overflow it, so no source spans two of them."""
    writer = PackWriter(repo.backend, repo.key, size)
    copied: set[bytes] = set()
    waiting: list[str] = []  # sources whose blobs are in the open pack (or in written ones)

    def cut() -> None:
        done = writer.finish()
        if done:
            pack_id, locations = done
            repo.cache.add_index(write_index(repo.backend, repo.key, pack_id, locations), locations)
        for src in waiting:
            _delete(repo, src, packs.sizes[src], result, tick)
        waiting.clear()

    for src in sources:
        todo = [b for b in need[src] if b not in copied]
        if len(writer) and writer.size + sum(packs.contents[src][b].length for b in todo) > size:
            cut()
            writer = PackWriter(repo.backend, repo.key, size)
        damaged = False
        for bid in todo:
            loc = packs.contents[src][bid]
            sealed = repo.backend.get_range(pack_name(src), loc.offset, loc.length)
            try:
                open_blob(repo.key, bid, sealed, pack_name(src))  # a damaged read must not replace a good copy
            except CorruptObject as e:
                result.notes.append(f"{e}; pack {src[:16]} is kept (`phonevault check --read-data` names it)")
                damaged = True
                continue
            writer.add(bid, loc.type, sealed, loc.raw_length)
            copied.add(bid)
            result.repacked_blobs += 1
            result.repacked_bytes += loc.length
        if not damaged:
            waiting.append(src)
            result.repacked += 1
        else:
            tick(packs.sizes[src])  # kept, and dealt with
    cut()


def prune(
    repo: Repository,
    *,
    grace_us: int = 0,
    max_unused: float = MAX_UNUSED,
    pack_size: int = TARGET_PACK_SIZE,
    progress: PruneProgress | None = None,
) -> PruneResult:
    """Sweep the markers that are due and that no running backup holds, then mark, and sweep the new marker at once
    unless a grace period is asked for or a running backup holds it. See the module docstring. `progress` hears
    each sweep's bytes (the packs it deletes or repacks) as it goes."""
    result = PruneResult()  # the index catches up in the first live.update, after the logs are read (LiveSet)
    sizes = {name.rsplit("/", 1)[1]: size for name, size in repo.backend.list("packs/")}
    now = now_us()
    writers = live_writers(repo, result)  # before the live set: see the module docstring
    live = LiveSet()
    live.update(repo)
    _check_indexed(live.blobs, _list_packs(repo))
    due: list[str] = []
    sweep: set[str] = set()
    for name, t, marked in read_markers(repo):
        if now - t < grace_us:
            _wait(result, marked, sizes, t + grace_us)
        elif holders := _held(t, writers):
            _hold(result, marked, sizes, holders)
        else:
            due.append(name)
            sweep.update(marked)
    if due:
        _sweep(repo, sweep, result, live, pack_size, progress)
        for name in due:
            repo.backend.delete(name)
    # Mark.
    live.update(repo)
    packs = _list_packs(repo)
    dead, repack, result.live_bytes = _choose(packs, live.blobs, candidate_packs(repo), max_unused)
    result.live_blobs = len(live.blobs)
    result.packs = len(packs.sizes)
    marked = dead + repack
    if marked:
        t = now_us()  # after the packs were listed: a writer whose packs are in this marker started before t
        name = f"prune/{t:020d}-{os.urandom(4).hex()}"
        repo.backend.put_exclusive(name, repo.key.seal(msgpack.packb([MARKER_FORMAT, t, marked]), MARKER_AD))
        result.marked = len(marked)
        result.marked_bytes = sum(packs.sizes.get(p, 0) for p in marked)
        if grace_us > 0:
            _wait(result, marked, packs.sizes, t + grace_us)
        elif holders := _held(t, live_writers(repo, result)):  # read after the marker exists
            _hold(result, marked, packs.sizes, holders)
        else:
            live.update(repo)  # after that read: commits made since are live
            _sweep(repo, set(marked), result, live, pack_size, progress)
            repo.backend.delete(name)
    repo.sync_index()
    result.pack_bytes = sum(size for _, size in repo.backend.list("packs/"))
    return result


def _check_indexed(live: set[bytes], packs: _Packs) -> None:
    """A pack no readable index object describes is taken for a crashed writer's leftover and deleted. That is only
    true while every live blob is located: if one is not (an index object deleted or damaged), its pack may be such
    a pack, and only `check --repair-index` (the pack's own header) can tell. Refuse before deleting anything."""
    located = set().union(*(blobs.keys() for blobs in packs.contents.values()))
    if unlocated := live - located:
        raise IndexIncomplete(len(unlocated))


def _wait(result: PruneResult, packs: list[str], sizes: dict[str, int], until: int) -> None:
    result.pending += len(packs)
    result.pending_bytes += sum(sizes.get(p, 0) for p in packs)
    result.free_after = max(result.free_after, until)


def _hold(result: PruneResult, packs: list[str], sizes: dict[str, int], writers: list[WriterMarker]) -> None:
    result.held += len(packs)
    result.held_bytes += sum(sizes.get(p, 0) for p in packs)
    result.running_since = sorted(set(result.running_since) | {w.started_us for w in writers})
