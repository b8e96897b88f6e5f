"""`check`: is every snapshot readable, and does every checkpoint agree with the log? If not, what exactly is lost?

Verifies, for every device log: each segment opens, read from the vault itself (a cached copy could hide damage),
and no seq is missing below the last; for each live snapshot: its tree decodes and equals the fold of its deltas
from the first snapshot (the core invariant, compared shard by shard), and every blob it needs is in the index and
in a pack that exists. With `read_data`, every pack is read whole first: its bytes hash to its name, its header
opens (if not, its blobs are verified where its index object puts them) and agrees with its index object, and
every blob opens and hashes to its id.

Findings are split: `errors` are damage (something a snapshot needs is missing or wrong); `notes` are harmless
(unreferenced packs a crashed writer left, which prune reclaims). `damaged` says what the damage costs: per
snapshot, the backup-folder paths whose content cannot be read back (a chunk that is missing, in a missing pack or,
with `read_data`, fails authentication). A tree node that cannot be read costs nothing more while the fold of the
deltas can be had: readers take its files from the fold (`readable_tree`); without it, it loses the files it
lists, named by a glob: `ab/**` (a folder of the backup), `*` (its top-level files), `**` (the whole snapshot).
Naming paths as the phone names them is the sync layer's job. Damage in one object never stops the rest from
being checked.

Memory: the ids of damaged blobs with why; the set of pack ids; one delta group (≤ DELTA_GROUP changes) while a
snapshot's deltas are folded into a sealed spool filed by shard (store/spool.py: the fold is on disk, read a shard
at a time, every delta read once), then one shard of the fold and one shard node of its tree at a time, and per
shard node already walked the paths it loses (usually none): a shard node shared by many snapshots is decoded for
the comparison but its chunks are looked up once (its chunk ids held while they are, in key order). Blobs are
located in the cache each time, not remembered; the cache is memory-mapped and its pages are unmapped by
`Repository.locate_needed`'s policy (every TRIM_LOOKUPS (32) lookups once they grew TRIM_GROWN, 1 MiB) and after
each shard (store/residency.py): a warm lookup maps a leaf and a branch page of the index, each with up to 64 KiB of
neighbouring pages (the kernel's fault-around), so the map holds ~32 lookups' pages, ~5 MB, whatever the index's
size (unmapping every 128 lookups left ~10 MB mapped at 300 000 files, more as the index grows; unmapping more often
costs a page fault more per lookup). `read_data` adds one pack (≤ 16 MiB) and its header's map of its blobs
(≤ PACK_BLOBS: ~5.7 MB while decoded); its index object is compared with the header as it unpacks, not held.

`readable_tree` and `unreadable_files` are the same answers for one snapshot as its readers meet them: its entries
despite damaged tree nodes, and which files read back (by reading them: export/extract/restore --strict ask that
before writing anything). An index object that is missing or damaged is rebuilt from its pack's header by
store/repair.py (`check --repair-index`); check only says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .crypto import content_hash
from .errors import CorruptObject, MissingObject, PhonevaultError, UnsupportedFormat
from .events import open_segment, parse_segment_name
from .index import decode_index, index_agrees, index_name, read_index
from .packs import open_blob, pack_name, parse_header
from .projections import DeviceView, SnapshotRecord, fold_state, lineage
from .repository import Repository
from .spool import ShardSpool
from .trees import FileEntry, apply_delta, decode_root, decode_shard, read_root, shard_of

Progress = Callable[[str, int, int], None]  # (phase, done, total)
REPAIR_HINT = "`phonevault check --repair-index` rebuilds it from the pack's header"


@dataclass(frozen=True, slots=True)
class DamagedSnapshot:
    """A snapshot whose `paths` (backup-folder paths, or globs for what cannot be named) cannot be read back."""

    snapshot: bytes
    device_key: str
    device: str | None
    paths: tuple[str, ...]


@dataclass(slots=True)
class CheckReport:
    devices: int = 0
    snapshots: int = 0
    packs: int = 0
    blobs_checked: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damaged: list[DamagedSnapshot] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class _Blobs:
    """What is known of the blobs the snapshots need: the damaged ones (`bad`: blob id -> reason). The first snapshot found needing a damaged blob names it, one error line per kind of damage
    (`flush`), so a lost index object of 10 000 blobs is one line, not 10 000."""

    def __init__(self, repo: Repository, packs: dict[str, int], bad: dict[bytes, str], rep: CheckReport) -> None:
        self.repo, self.packs, self.rep = repo, packs, rep
        self.bad = bad  # pre-filled (and already reported) by the data phase
        self._new: dict[str, list[bytes]] = {}  # reason -> blobs found so far, not reported yet

    def _mark(self, bid: bytes, reason: str) -> None:
        self.bad[bid] = reason
        self._new.setdefault(reason, []).append(bid)

    def flush(self, where: str) -> None:
        for reason, ids in self._new.items():
            first = ", ".join(f"{b.hex()[:16]}…" for b in ids[:3]) + (
                f" and {len(ids) - 3} more" if len(ids) > 3 else ""
            )
            self.rep.errors.append(f"{where}: {'blob' if len(ids) == 1 else f'{len(ids)} blobs'} {first} {reason}")
        self._new.clear()

    def damaged(self, bid: bytes) -> bool:
        """Located again each time it is asked (a cache lookup), rather than remembered: a set of every good blob
        would grow with the vault. Shard nodes shared by snapshots are walked once (`nodes`), so few are asked
        twice. The cache's pages are unmapped by `locate_needed`'s one policy (module docstring; its former
        trim every 128 lookups, with none of check's own, left ~10 MB of data.mdb mapped at 300 000 files, the peak
        of the walk, which looks up every chunk of every file)."""
        if bid in self.bad:
            return True
        loc = self.repo.locate_needed(bid)
        if loc is None:
            self._mark(bid, "is missing from the index")
        elif loc.pack not in self.packs:
            self._mark(bid, f"is in pack {loc.pack[:16]}…, which is missing")
        return bid in self.bad

    def damaged_among(self, ids: Iterable[bytes]) -> set[bytes]:
        """The damaged ones of `ids` (a shard node's chunks), each looked up once and in key order: consecutive
        lookups then share the index's branch pages, ~12 instead of ~17.5 us a lookup at 300 000 files (unmapped
        as `locate_needed` says). Every one is looked at, so each damaged blob is named. Memory: one shard's chunk ids."""
        return {bid for bid in sorted(set(ids)) if self.damaged(bid)}

    def get(self, bid: bytes) -> bytes | None:
        """A tree or delta blob's plaintext; None if it cannot be read (recorded)."""
        if self.damaged(bid):
            return None
        try:
            return self.repo.get_blob(bid)
        except PhonevaultError as e:
            self._mark(bid, f"cannot be read ({e})")
            return None


def check(repo: Repository, *, read_data: bool = False, progress: Progress | None = None) -> CheckReport:
    rep = CheckReport()
    packs = {name.rsplit("/", 1)[1]: size for name, size in repo.backend.list("packs/")}
    rep.packs = len(packs)
    indexed: set[str] = set()  # the packs an index object describes (their blobs are in the cache)
    for name, _ in repo.backend.list("index/"):
        try:
            indexed.update(loc.pack for loc in decode_index(repo.key, name, repo.backend.get(name)).values())
        except (CorruptObject, UnsupportedFormat, MissingObject) as e:
            rep.errors.append(f"index: {e}; {REPAIR_HINT}")
    repo.sync_index()
    for pack in indexed - packs.keys():
        rep.notes.append(f"index/{pack[:16]}… describes a pack that does not exist")
    unindexed = packs.keys() - indexed
    for pack in unindexed:
        rep.notes.append(
            f"pack {pack[:16]}… is in no index (left by an interrupted writer; harmless, prune reclaims it)"
        )

    bad: dict[bytes, str] = {}  # blobs that fail to read back, from the data phase
    if read_data:  # first, so the walk below can name what each damaged blob costs
        total = sum(packs.values())
        for pack, size in sorted(packs.items()):
            if progress:
                progress("data", rep.bytes_read, total)
            _read_pack(repo, pack, size, rep, bad)

    blobs = _Blobs(repo, packs, bad, rep)
    nodes: dict[bytes, tuple[str, ...]] = {}  # shard node -> the paths it loses (walked once)
    keys = repo.device_keys()
    for i, key in enumerate(keys):
        if progress:
            progress("logs", i, len(keys))
        rep.devices += 1
        view = repo.view(key, refresh=True)
        _check_log(repo, key, rep)
        for snap in view.live():
            rep.snapshots += 1
            lost = _check_snapshot(repo, view, snap, blobs, nodes, rep)
            blobs.flush(_where(view, snap))
            if lost:
                rep.damaged.append(DamagedSnapshot(snap.id, key, view.device, tuple(lost)))
    if unindexed and any("missing from the index" in r for r in blobs.bad.values()):
        rep.notes.append(f"a pack in no index may hold the missing blobs: {REPAIR_HINT}")
    return rep


def _check_log(repo: Repository, key: str, rep: CheckReport) -> None:
    """The device's log as the vault holds it: what reading it found, and damage an intact cached copy hides."""
    found = [f"event log: {d}" for d in repo.damaged_segments(key)]
    rep.errors += found
    for name, _size in repo.backend.list(f"events/{key}/"):
        if not parse_segment_name(name):
            continue
        try:
            open_segment(repo.key, name, repo.backend.get(name))
        except (CorruptObject, UnsupportedFormat, MissingObject) as e:
            if (line := f"event log: {e}") not in found:
                rep.errors.append(line)


def _check_snapshot(
    repo: Repository,
    view: DeviceView,
    snap: SnapshotRecord,
    blobs: _Blobs,
    nodes: dict[bytes, tuple[str, ...]],
    rep: CheckReport,
) -> list[str]:
    """Check one snapshot; returns the paths it loses. The fold of its deltas is filed by shard on disk first
    (`_SpilledFold`), then compared with its tree one shard at a time."""
    where = _where(view, snap)
    with ShardSpool(repo.cache) as spool:
        folded = _fold(view, snap, blobs, where, rep, spool)  # the spilled fold, or None
        return _compare(repo, snap, blobs, nodes, rep, where, folded)


def _compare(
    repo: Repository,
    snap: SnapshotRecord,
    blobs: _Blobs,
    nodes: dict[bytes, tuple[str, ...]],
    rep: CheckReport,
    where: str,
    folded: _SpilledFold | None,
) -> list[str]:
    def instead(shard: str | None) -> list[str]:
        """A tree node that cannot be read: readers take its files from the fold (`readable_tree`), so what is lost
        is the fold's files with a damaged chunk; with no fold, all of them, named by a glob."""
        if folded is None:
            return [lost_glob(shard)]
        out: list[str] = []
        for s in folded.shards() if shard is None else [shard]:
            out += [e.path for e in folded.shard(s).values() if any([blobs.damaged(c) for c in e.chunks])]
        return sorted(out)

    raw = blobs.get(snap.tree)
    try:
        refs = decode_root(raw, f"tree {snap.tree.hex()[:16]}") if raw is not None else None
    except (CorruptObject, UnsupportedFormat) as e:
        rep.errors.append(f"{where}: {e}")
        refs = None
    if refs is None:
        fallback = "its files are read from the fold of its deltas" if folded is not None else "nor its deltas"
        rep.errors.append(f"{where}: its tree cannot be read; {fallback}")
        lost = instead(None)
        if lost:
            rep.errors.append(f"{where}: {len(lost)} file(s) cannot be read back")
        return lost
    lost: list[str] = []
    differ: list[str] = []
    seen: set[str] = set()
    for ref in refs:
        repo.cache.trim()  # the cache pages the last shard's lookups mapped (store/residency.py)
        entries = _shard(ref.node, blobs, where, rep)
        if entries is None:
            lost += instead(ref.shard) if ref.shard not in seen else []
            seen.add(ref.shard)
            continue
        if folded is not None:
            tree = {e.path: e for e in entries}
            fold = folded.shard(ref.shard) if ref.shard not in seen else {}  # a root naming a shard twice
            if tree != fold:
                differ += sorted(p for p in tree.keys() | fold.keys() if tree.get(p) != fold.get(p))[:3]
        seen.add(ref.shard)
        if ref.node not in nodes:
            bad = blobs.damaged_among(c for e in entries for c in e.chunks)
            nodes[ref.node] = tuple(e.path for e in entries if not bad.isdisjoint(e.chunks))
        lost += nodes[ref.node]
    for shard in folded.shards() if folded is not None else ():  # shards the fold has and the tree lacks
        if shard not in seen:
            differ += sorted(folded.shard(shard))[:3]
    if differ:
        rep.errors.append(f"{where}: tree checkpoint differs from the fold of its deltas at {differ[:3]}")
    if lost:
        rep.errors.append(f"{where}: {len(lost)} file(s) cannot be read back")
    return lost


def _where(view: DeviceView, snap: SnapshotRecord) -> str:
    return f"snapshot {snap.hex[:12]} ({view.info.name or view.device})"


def _fold(
    view: DeviceView, snap: SnapshotRecord, blobs: _Blobs, where: str, rep: CheckReport, spool: ShardSpool
) -> _SpilledFold | None:
    def get(bid: bytes) -> bytes:
        data = blobs.get(bid)
        if data is None:
            raise MissingObject(f"delta {bid.hex()[:16]}…", blobs.bad.get(bid, "unreadable"))
        return data

    state = _SpilledFold(spool)
    try:
        for rec in lineage(view, snap.id):
            for delta in rec.deltas:
                apply_delta(state, get(delta), f"delta {delta.hex()[:16]}")
                state.spill()
        return state
    except (PhonevaultError, ValueError) as e:
        rep.errors.append(f"{where}: its deltas do not fold ({e}); the tree is not verified against them")
        return None


class _SpilledFold:
    """The fold of a snapshot's deltas, filed by shard on disk: `apply_delta` records each delta's removes and puts
    here (what it needs of a map), `spill` files them by shard in a sealed spool (store/spool.py), and `shard(s)`
    replays one shard's changes in order into that shard's map. So the check holds one delta group and one shard,
    and reads every delta once, whatever the number of files."""

    def __init__(self, spool: ShardSpool) -> None:
        self._spool = spool
        self._ops: dict[str, list] = {}  # shard -> [[path] (removed) | [path, entry] (put)], this delta's

    def pop(self, path: str, default: FileEntry | None = None) -> None:
        self._ops.setdefault(shard_of(path), []).append([path])

    def __setitem__(self, path: str, entry: FileEntry) -> None:
        self._ops.setdefault(shard_of(path), []).append([path, entry.encode()])

    def spill(self) -> None:
        for shard, ops in self._ops.items():
            self._spool.append(shard, ops)
        self._ops = {}

    def shards(self) -> list[str]:
        return self._spool.shards()

    def shard(self, shard: str) -> dict[str, FileEntry]:
        out: dict[str, FileEntry] = {}
        for ops in self._spool.read(shard):
            for op in ops:
                if len(op) == 1:
                    out.pop(op[0], None)
                else:
                    out[op[0]] = FileEntry.decode(op[1])
        return out


def _shard(node: bytes, blobs: _Blobs, where: str, rep: CheckReport) -> list[FileEntry] | None:
    raw = blobs.get(node)
    if raw is None:
        return None
    try:
        return decode_shard(raw, f"tree {node.hex()[:16]}")
    except (CorruptObject, UnsupportedFormat, ValueError, TypeError) as e:
        rep.errors.append(f"{where}: {e}")
        return None


def _read_pack(repo: Repository, pack: str, size: int, rep: CheckReport, bad: dict[bytes, str]) -> None:
    name = pack_name(pack)
    try:
        data = repo.backend.get(name)
    except MissingObject as e:
        rep.errors.append(str(e))
        return
    rep.bytes_read += len(data)
    if content_hash(data) != pack:
        rep.errors.append(f"{name}: content does not match its name (damaged on disk)")
    try:
        header = parse_header(repo.key, pack, data, len(data))
    except (CorruptObject, UnsupportedFormat) as e:
        rep.errors.append(f"{e}; its blobs are checked where its index object puts them")
        header = read_index(repo.key, repo.backend, pack) or {}
    else:
        if not index_agrees(repo.key, repo.backend, pack, header):
            rep.errors.append(f"{index_name(pack)} disagrees with the header of {name}; {REPAIR_HINT}")
    view = memoryview(data)
    for bid, loc in header.items():
        try:
            if loc.offset < 0 or loc.offset + loc.length > len(data):
                raise CorruptObject(name, "lies beyond the end of the pack")
            plain = open_blob(repo.key, bid, view[loc.offset : loc.offset + loc.length], name)
            if repo.key.blob_id(plain) != bid:
                raise CorruptObject(name, "does not hash to its id")
            rep.blobs_checked += 1
        except CorruptObject as e:
            bad[bid] = f"in {name} cannot be read ({e.reason})"
            rep.errors.append(f"{e} (blob {bid.hex()[:16]}…)")


def lost_glob(shard: str | None) -> str:
    """How `damaged` names the files of a tree node that cannot be read: `ab/**`, `*` (top level), `**` (all)."""
    return "**" if shard is None else f"{shard}/**" if shard else "*"


def readable_tree(repo: Repository, view: DeviceView, snap: SnapshotRecord) -> tuple[list[FileEntry], dict[str, str]]:
    """A snapshot's entries, and what of them cannot be had: per tree node that cannot be read, its glob
    (`lost_glob`) and why. The files of such a node are taken from the fold of the deltas instead (tree == fold is
    the invariant check verifies), so a node is lost only when the fold cannot be had either; a root lost with it
    is raised (nothing of the snapshot can be had). Reading the fold costs the deltas of the snapshot's whole
    lineage and one snapshot's entries in memory, only when a node is damaged."""
    entries: list[FileEntry] = []
    lost: dict[str | None, str] = {}  # shard (None: the root) -> why
    try:
        refs = read_root(snap.tree, repo.get_blob)
    except (PhonevaultError, ValueError, TypeError) as e:
        refs, lost[None] = [], str(e)
    for ref in refs:
        try:
            entries += decode_shard(repo.get_blob(ref.node), f"tree {ref.node.hex()[:16]}")
        except (PhonevaultError, ValueError, TypeError) as e:
            lost[ref.shard] = str(e)
    if not lost:
        return entries, {}
    try:
        folded = fold_state(view, snap.id, repo.get_blob)
    except (PhonevaultError, ValueError) as e:
        if None in lost:
            raise CorruptObject(f"tree {snap.tree.hex()[:16]}", f"{lost[None]}; nor do its deltas fold ({e})") from None
        return entries, {lost_glob(shard): why for shard, why in lost.items()}
    entries += [e for e in folded.values() if None in lost or shard_of(e.path) in lost]
    return sorted(entries, key=lambda e: e.path), {}


class ReadableShards:
    """`readable_tree` a shard at a time, for readers that stream (export): iterating yields each shard's entries,
    sorted by path, in shard order; a tree node that cannot be read is taken from the fold of the deltas, read once
    on the first such node (the whole snapshot's entries, held only while there is damage); a node lost with its
    fold is named in `lost` (its glob -> why) as it is met. A root lost with the fold raises CorruptObject when
    this is made, before anything is yielded. `size` is the snapshot's bytes from its root (the progress total).
    Memory: one shard's entries (and, with damage, the fold)."""

    def __init__(self, repo: Repository, view: DeviceView, snap: SnapshotRecord) -> None:
        self._repo, self._view, self._snap = repo, view, snap
        self.lost: dict[str, str] = {}
        self._folded: dict[str, FileEntry] | None = None
        self._fold_error: str | None = None
        try:
            self._refs: list | None = read_root(snap.tree, repo.get_blob)
        except (PhonevaultError, ValueError, TypeError) as e:
            self._refs = None
            if self._fold() is None:
                raise CorruptObject(
                    f"tree {snap.tree.hex()[:16]}", f"{e}; nor do its deltas fold ({self._fold_error})"
                ) from None
        self.size = (
            sum(r.size for r in self._refs) if self._refs is not None else sum(e.size for e in self._folded.values())
        )

    def _fold(self) -> dict[str, FileEntry] | None:
        if self._folded is None and self._fold_error is None:
            try:
                self._folded = fold_state(self._view, self._snap.id, self._repo.get_blob)
            except (PhonevaultError, ValueError) as e:
                self._fold_error = str(e)
        return self._folded

    def __iter__(self) -> Iterator[list[FileEntry]]:
        if self._refs is None:
            by_shard: dict[str, list[FileEntry]] = {}
            for e in self._folded.values():
                by_shard.setdefault(shard_of(e.path), []).append(e)
            for shard in sorted(by_shard):
                yield sorted(by_shard[shard], key=lambda e: e.path)
            return
        for ref in self._refs:
            try:
                yield decode_shard(self._repo.get_blob(ref.node), f"tree {ref.node.hex()[:16]}")
                continue
            except (PhonevaultError, ValueError, TypeError) as e:
                why = str(e)
            folded = self._fold()
            if folded is None:
                self.lost[lost_glob(ref.shard)] = why
                continue
            yield sorted((e for e in folded.values() if shard_of(e.path) == ref.shard), key=lambda e: e.path)


def unreadable_files(repo: Repository, entries: Iterable[FileEntry]) -> dict[str, str]:
    """The paths of `entries` whose content cannot be read back (a chunk missing, in a missing pack, or failing
    authentication), each with why. Reads every chunk: the cost of reading the files. Memory: the damaged chunks
    only (a good chunk shared by several files is read again rather than remembered)."""
    bad: dict[bytes, str] = {}
    out: dict[str, str] = {}
    for e in entries:
        for c in e.chunks:
            if c not in bad:
                try:
                    repo.get_blob(c)
                    continue
                except PhonevaultError as exc:
                    bad[c] = str(exc)
            out[e.path] = bad[c]
            break
    return out
