"""Reclaiming space after `forget`, safely against backups running at the same time.

Objects (sealed with the repository key):
- `prune/<time>-<rand>`: msgpack [1, Tm, [pack id, …]], ad = MARKER_AD — the candidate packs of one mark phase,
  Tm (µs since the epoch) taken after the packs were listed.
- `writers/<rand>`: msgpack [1, started_us, refreshed_us], ad = the object's name — one running SnapshotWriter.

The protocol between a writer W (store/writer.py) and prune P:

W: 1. registers: puts `writers/<rand>` with started = refreshed = now; a daemon thread puts it again every
      WRITER_REFRESH_S with a new refreshed time; the marker is deleted when W commits or is closed (also when W
      is garbage-collected or its process exits).
   2. then reads every prune marker and never deduplicates against a candidate pack (it stores those blobs again);
   3. writes its data and tree packs. Every pack it wrote and every pack it deduplicated against is a dependency;
   4. before appending its commit event, checks that every dependency still exists (PackPruned if one is gone, and
      nothing is committed); appends the event; then deletes its marker.
P: mark — folds every device log into the live blob set; packs with no live blob (a crashed writer's leftovers,
      forgotten snapshots' data, and also a running writer's packs, which no commit references yet) and packs no
      index describes become candidates; packs whose live fraction is below `repack_below` have their live blobs
      copied — still sealed, a sealed blob is bound only to its id — into new packs and become candidates too.
      The candidates go into a new marker M with time Tm.
   sweep — M is swept when (a) the grace period has passed since Tm and (b) no live writer marker has a start
      before Tm + CLOCK_SLACK_US. P reads the writer markers first, then recomputes the live set (so whatever a
      commit made since then references stays alive), and deletes a candidate only if every live blob in it has a
      copy in a pack that is not being deleted: index object first, then the pack; then M.

Why (b) makes a sweep safe for every commit in flight: a pack can be both a dependency of a running W and a
candidate of M only if W registered before M was written.
- W's own packs are written after W registered, and are in M only if they were listed before Tm: W started < Tm.
- A pack W deduplicated against is a candidate of no marker that existed when W read the markers (step 2, after
  step 1); so M was written after W registered: W started < Tm + the time it took to write M.
So every writer that may depend on M's packs started before Tm + CLOCK_SLACK_US, and its live marker holds M
back. A writer that registers after P read the markers started after M existed: it avoids M's packs and none of
its packs is in M. When W finishes, its commit event is appended before its marker goes, so the sweep that the
marker no longer holds back sees that commit in the live set and keeps what it references; if W aborted, its packs
are garbage and may go.
Prune never waits: with `grace 0` and a backup running it marks, sweeps only markers no writer holds, and reports
the held packs (`held`); a prune after that backup has finished frees them.

Stale writers: a marker not refreshed for WRITER_STALE_US belongs to a writer that died (killed, power loss, a
disk that vanished). Prune ignores it, deletes it and says so in `notes`, so no stale marker ever blocks
anything. A writer that was only paused that long (a laptop asleep mid-backup) has lost its protection: its check
in step 4 turns a pack pruned meanwhile into PackPruned instead of a snapshot with missing blobs. (The check and
the commit are two steps; a writer paused for ten minutes exactly between them is the one case the check cannot
catch.)

Clocks: started, refreshed and Tm come from the clocks of the writer's and the prune's hosts. CLOCK_SLACK_US absorbs
the time to write M and a skew between hosts of up to a few minutes; larger skews are not supported.

Grace keeps its meaning: a marker waits at least that long before it is swept (`pending` counts its packs).
Cost of (b): a running writer's new packs are marked too; the sweep after it finishes keeps them (they are live by
then) and drops the marker, but until that sweep later backups store those blobs again instead of reusing them.
Memory: the live set holds one entry per live blob (~100 bytes each); writer and prune markers are a few bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgpack

from .crypto import MasterKey
from .errors import CorruptObject, MissingObject, UnsupportedFormat
from .index import decode_index, index_name, write_index
from .packs import PackWriter, pack_name
from .projections import SnapshotRecord
from .repository import Repository, format_time, now_us
from .trees import decode_shard, read_root

MARKER_FORMAT = 1
MARKER_AD = b"phonevault/v1/prune-marker"

WRITER_FORMAT = 1
WRITERS = "writers/"
WRITER_REFRESH_S = 60.0  # how often a running writer refreshes its marker
WRITER_STALE_US = 10 * 60 * 10**6  # a marker not refreshed for this long belongs to a dead writer
CLOCK_SLACK_US = 5 * 60 * 10**6  # writer started < Tm + this: it may depend on the marker's packs


@dataclass(slots=True)
class PruneResult:
    live_blobs: int = 0
    packs: int = 0
    marked: int = 0
    marked_bytes: int = 0
    repacked: int = 0
    repacked_blobs: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    pending: int = 0  # candidates still waiting for their grace period
    held: int = 0  # candidates past their grace period, held back by running backups
    running_backups: int = 0  # live writer markers seen
    stale_writers: int = 0  # dead writers' markers removed
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class WriterMarker:
    name: str
    started_us: int
    refreshed_us: int


def writer_marker_name() -> str:
    return f"{WRITERS}{os.urandom(16).hex()}"


def seal_writer_marker(key: MasterKey, name: str, started_us: int, refreshed_us: int) -> bytes:
    return key.seal(msgpack.packb([WRITER_FORMAT, started_us, refreshed_us]), name.encode())


def read_writers(repo: Repository) -> tuple[list[WriterMarker], list[str]]:
    """Every writer marker that opens, and the names of those that do not (damaged, or from another format)."""
    markers, unreadable = [], []
    for name, _ in sorted(repo.backend.list(WRITERS)):
        try:
            fmt, started, refreshed = msgpack.unpackb(repo.key.open(repo.backend.get(name), name.encode(), name))
            if fmt != WRITER_FORMAT or not isinstance(started, int) or not isinstance(refreshed, int):
                raise ValueError(f"format {fmt!r}")
            markers.append(WriterMarker(name, started, refreshed))
        except MissingObject:
            continue  # its writer finished while we listed
        except (CorruptObject, ValueError, TypeError, msgpack.UnpackException):
            unreadable.append(name)
    return markers, unreadable


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


def _held(marker_time: int, writers: list[WriterMarker]) -> bool:
    return any(w.started_us < marker_time + CLOCK_SLACK_US for w in writers)


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


def live_blobs(repo: Repository) -> set[bytes]:
    """Every blob a live snapshot needs, plus every delta blob (small; keeps fold(deltas) checkable forever)."""
    live: set[bytes] = set()
    seen: set[bytes] = set()
    for key in repo.device_keys():
        view = repo.view(key, refresh=True)
        for snap in view.snapshots:
            live.update(snap.deltas)
            if not snap.forgotten:
                live.update(snapshot_blobs(repo, snap, seen))
    return live


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


def _pack_contents(repo: Repository) -> tuple[dict[str, int], dict[str, dict[bytes, int]]]:
    sizes = {name.rsplit("/", 1)[1]: size for name, size in repo.backend.list("packs/")}
    contents: dict[str, dict[bytes, int]] = {}
    for name, _ in repo.backend.list("index/"):
        try:
            locs = decode_index(repo.key, name, repo.backend.get(name))
        except (CorruptObject, MissingObject, UnsupportedFormat):
            continue
        for bid, loc in locs.items():
            contents.setdefault(loc.pack, {})[bid] = loc.length
    return sizes, contents


def _sweep(repo: Repository, packs: set[str], result: PruneResult) -> None:
    """Delete the candidates in `packs` that hold no last copy of a live blob. The caller has made sure no running
    writer may depend on them (the writer markers were read before this computes the live set)."""
    sizes, contents = _pack_contents(repo)
    live = live_blobs(repo)
    holders: dict[bytes, set[str]] = {}
    for pack, blobs in contents.items():
        for bid in blobs:
            if bid in live:
                holders.setdefault(bid, set()).add(pack)
    doomed = set(packs)
    # Drop from the deletion set any pack that holds the last copy of a live blob; repeat until stable.
    changed = True
    while changed:
        changed = False
        for pack in sorted(doomed):
            if any(not (holders[b] - doomed) for b in contents.get(pack, {}) if b in live):
                doomed.discard(pack)
                changed = True
    for pack in doomed:
        repo.backend.delete(index_name(pack))  # index first: a pack without index is harmless, the reverse is not
        repo.backend.delete(pack_name(pack))
        result.deleted += 1
        result.deleted_bytes += sizes.get(pack, 0)


def prune(repo: Repository, *, grace_us: int = 3600 * 10**6, repack_below: float = 0.5) -> PruneResult:
    result = PruneResult()
    repo.sync_index()
    now = now_us()
    # Sweep the markers whose grace has passed and that no running writer holds back. The writer markers are read
    # before the live set is computed (in _sweep): see the module docstring.
    writers = live_writers(repo, result)
    due: list[str] = []
    sweep: set[str] = set()
    for name, t, packs in read_markers(repo):
        if now - t < grace_us:
            result.pending += len(packs)
        elif _held(t, writers):
            result.held += len(packs)
        else:
            due.append(name)
            sweep.update(packs)
    if due:
        _sweep(repo, sweep, result)
        for name in due:
            repo.backend.delete(name)
    repo.sync_index()
    # Mark.
    sizes, contents = _pack_contents(repo)
    live = live_blobs(repo)
    result.live_blobs = len(live)
    result.packs = len(sizes)
    already = candidate_packs(repo)
    marked: list[str] = []
    repack: list[str] = []
    for pack in sizes:
        if pack in already:
            continue
        blobs = contents.get(pack)
        if not blobs:
            marked.append(pack)  # unindexed: a crashed writer's leftover, or a running writer's pack between its
            continue  # data and its index object
        live_bytes = sum(length for b, length in blobs.items() if b in live)
        if live_bytes == 0:
            marked.append(pack)
        elif live_bytes < repack_below * sum(blobs.values()):
            repack.append(pack)
    for pack in repack:
        _repack(repo, pack, {b for b in contents[pack] if b in live}, result)
        marked.append(pack)
    if marked:
        t = now_us()  # after the packs were listed: a writer whose packs are in this marker started before t
        name = f"prune/{t:020d}-{os.urandom(4).hex()}"
        repo.backend.put_exclusive(name, repo.key.seal(msgpack.packb([MARKER_FORMAT, t, marked]), MARKER_AD))
        result.marked = len(marked)
        result.marked_bytes = sum(sizes.get(p, 0) for p in marked)
        if grace_us > 0:
            result.pending += len(marked)
        elif _held(t, live_writers(repo, result)):  # read after the marker exists
            result.held += len(marked)
        else:
            _sweep(repo, set(marked), result)
            repo.backend.delete(name)
    repo.sync_index()
    return result


def _repack(repo: Repository, pack: str, keep: set[bytes], result: PruneResult) -> None:
    name = pack_name(pack)
    writer = PackWriter(repo.backend, repo.key)
    index = decode_index(repo.key, index_name(pack), repo.backend.get(index_name(pack)))
    for bid in sorted(keep):
        loc = index[bid]
        writer.add(bid, loc.type, repo.backend.get_range(name, loc.offset, loc.length), loc.raw_length)
        result.repacked_blobs += 1
        if writer.full():
            _finish(repo, writer)
            writer = PackWriter(repo.backend, repo.key)
    _finish(repo, writer)
    result.repacked += 1


def _finish(repo: Repository, writer: PackWriter) -> None:
    done = writer.finish()
    if done:
        pack_id, locations = done
        repo.cache.add_index(write_index(repo.backend, repo.key, pack_id, locations), locations)
