"""`check`: is every snapshot readable, and does every checkpoint agree with the log?

Verifies, for every device log: each segment opens; for each live snapshot: its tree decodes and equals the fold
of its deltas from the first snapshot (the core invariant), and every blob it needs is in the index and in a pack
that exists. With `read_data`, every pack is read whole: its bytes hash to its name, its header opens, and every
blob opens and hashes to its id. Findings are split: `errors` are damage (something a snapshot needs is missing or
wrong); `notes` are harmless (unreferenced packs a crashed writer left, which prune reclaims).
Damage in one object never stops the rest from being checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .crypto import content_hash
from .errors import CorruptObject, MissingObject, PhonevaultError, UnsupportedFormat
from .index import decode_index
from .packs import open_blob, pack_name, parse_header
from .projections import fold_state
from .prune import snapshot_blobs
from .repository import Repository
from .trees import load_tree

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(slots=True)
class CheckReport:
    devices: int = 0
    snapshots: int = 0
    packs: int = 0
    blobs_checked: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check(repo: Repository, *, read_data: bool = False, progress: Progress | None = None) -> CheckReport:
    rep = CheckReport()
    packs = {name.rsplit("/", 1)[1]: size for name, size in repo.backend.list("packs/")}
    rep.packs = len(packs)
    indexed: dict[str, set[bytes]] = {}
    for name, _ in repo.backend.list("index/"):
        try:
            for bid, loc in decode_index(repo.key, name, repo.backend.get(name)).items():
                indexed.setdefault(loc.pack, set()).add(bid)
        except (CorruptObject, UnsupportedFormat, MissingObject) as e:
            rep.errors.append(f"index: {e}")
    repo.sync_index()
    for pack in indexed.keys() - packs.keys():
        rep.notes.append(f"index/{pack[:16]}… describes a pack that does not exist")
    for pack in packs.keys() - indexed.keys():
        rep.notes.append(
            f"pack {pack[:16]}… is in no index (left by an interrupted writer; harmless, prune reclaims it)"
        )

    needed: set[bytes] = set()
    seen_nodes: set[bytes] = set()
    keys = repo.device_keys()
    for i, key in enumerate(keys):
        if progress:
            progress("logs", i, len(keys))
        rep.devices += 1
        view = repo.view(key, refresh=True)
        for dmg in repo.damaged_segments(key):
            rep.errors.append(f"event log: {dmg}")
        for snap in view.live():
            rep.snapshots += 1
            where = f"snapshot {snap.hex[:12]} ({view.info.name or view.device})"
            try:
                tree = load_tree(snap.tree, repo.get_blob)
                folded = fold_state(view, snap.id, repo.get_blob)
                if tree != folded:
                    diff = sorted(set(tree.items()) ^ set(folded.items()), key=lambda kv: kv[0])[:3]
                    rep.errors.append(
                        f"{where}: tree checkpoint differs from the fold of its deltas at {[p for p, _ in diff]}"
                    )
                blobs = set(snapshot_blobs(repo, snap, seen_nodes)) | set(snap.deltas)
            except (PhonevaultError, ValueError) as e:
                rep.errors.append(f"{where}: {e}")
                continue
            for bid in blobs - needed:
                loc = repo.locate_needed(bid)
                if loc is None:
                    rep.errors.append(f"{where}: blob {bid.hex()[:16]}… is missing from the index")
                elif loc.pack not in packs:
                    rep.errors.append(f"{where}: blob {bid.hex()[:16]}… is in pack {loc.pack[:16]}…, which is missing")
            needed |= blobs

    if read_data:
        total = sum(packs.values())
        for pack, size in sorted(packs.items()):
            if progress:
                progress("data", rep.bytes_read, total)
            _read_pack(repo, pack, size, rep)
    return rep


def _read_pack(repo: Repository, pack: str, size: int, rep: CheckReport) -> None:
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
        rep.errors.append(str(e))
        return
    view = memoryview(data)
    for bid, loc in header.items():
        try:
            plain = open_blob(repo.key, bid, view[loc.offset : loc.offset + loc.length], name)
            if repo.key.blob_id(plain) != bid:
                rep.errors.append(f"{name}: blob {bid.hex()[:16]}… does not hash to its id")
            rep.blobs_checked += 1
        except CorruptObject as e:
            rep.errors.append(f"{e} (blob {bid.hex()[:16]}…)")
