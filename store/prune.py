"""Reclaiming space after `forget`, safely against backups running at the same time — without locks.

Two phases (DESIGN §5):
1. mark: compute the live blob set by folding every device log; packs with no live blob (and packs no index
   object describes: crash leftovers) become candidates; packs whose live fraction is below `repack_below` have
   their live blobs copied — still sealed, no decryption needed, since a sealed blob is bound only to its id — into
   new packs, and become candidates too. Candidates are written to a `prune/<time>-<rand>` marker.
2. sweep: markers older than the grace period are swept: the live set is computed again (so a backup committed
   since that reuses a candidate's blob keeps it alive), and a candidate pack is deleted only if every live blob in
   it exists in another pack that is not being deleted.
Writers ignore blobs that sit in candidate packs when deduplicating (they write them again), and before committing
verify that every pack they reused still exists; so a candidate can only become needed through a commit that the
sweep will see. Memory: the live set holds one entry per live blob (~100 bytes each).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgpack

from .errors import CorruptObject, MissingObject, UnsupportedFormat
from .index import decode_index, index_name, write_index
from .packs import PackWriter, pack_name
from .projections import SnapshotRecord
from .repository import Repository, now_us
from .trees import decode_shard, read_root

MARKER_FORMAT = 1
MARKER_AD = b"phonevault/v1/prune-marker"


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
    notes: list[str] = field(default_factory=list)


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
    # phase 2 for old markers
    for name, t, packs in read_markers(repo):
        if now - t >= grace_us:
            _sweep(repo, set(packs), result)
            repo.backend.delete(name)
        else:
            result.pending += len(packs)
    repo.sync_index()
    # phase 1
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
            marked.append(pack)  # unindexed: a crashed writer's leftover
            continue
        live_bytes = sum(length for b, length in blobs.items() if b in live)
        if live_bytes == 0:
            marked.append(pack)
        elif live_bytes < repack_below * sum(blobs.values()):
            repack.append(pack)
    for pack in repack:
        _repack(repo, pack, {b for b in contents[pack] if b in live}, result)
        marked.append(pack)
    if marked:
        name = f"prune/{now:020d}-{os.urandom(4).hex()}"
        repo.backend.put_exclusive(name, repo.key.seal(msgpack.packb([MARKER_FORMAT, now, marked]), MARKER_AD))
        result.marked = len(marked)
        result.marked_bytes = sum(sizes.get(p, 0) for p in marked)
        if grace_us <= 0:
            _sweep(repo, set(marked), result)
            repo.backend.delete(name)
        else:
            result.pending += len(marked)
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
