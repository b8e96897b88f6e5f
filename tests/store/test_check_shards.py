"""`check` a shard at a time: the fold of a snapshot's deltas is filed by shard on disk (store/check.py
`_SpilledFold`, store/spool.py `ShardSpool`) and must be, shard for shard, the fold held whole
(projections.fold_state) and the tree; damage it finds is the damage the whole fold finds. Real vaults, real LMDB."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.check import CheckReport, _Blobs, _fold, check
from phonevault.store.errors import PhonevaultError
from phonevault.store.projections import fold_state
from phonevault.store.records import DeviceRecord
from phonevault.store.spool import ShardSpool
from phonevault.store.trees import load_tree, read_root, shard_of
from phonevault.store.writer import SnapshotWriter
from tests.conftest import reopen

DEV = "udid-check-shards"
names = st.sampled_from(["ab/1", "ab/2", "ab/x/3", "cd/1", "cd/2", "ef/1", "top1", "top2", "ab", "gh/1/2"])
ops = st.lists(
    st.tuples(st.sampled_from(["put", "put", "remove", "move"]), names, names, st.binary(min_size=1, max_size=40)),
    max_size=8,
)


def by_shard(state) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path, e in state.items():
        out.setdefault(shard_of(path), {})[path] = e
    return out


def spilled(repo, view, snap) -> dict[str, dict]:
    with ShardSpool(repo.cache) as spool:
        rep = CheckReport()
        packs = {name.rsplit("/", 1)[1]: size for name, size in repo.backend.list("packs/")}
        folded = _fold(view, snap, _Blobs(repo, packs, {}, rep), "here", rep, spool)
        assert folded is not None, rep.errors
        return {s: got for s in folded.shards() if (got := folded.shard(s))}


@given(st.lists(ops, min_size=1, max_size=4))
@settings(max_examples=20)
def test_the_fold_filed_by_shard_is_the_whole_fold_and_the_tree(make_repo, days):
    repo = make_repo(f"v{os.urandom(4).hex()}")
    for i, day in enumerate(days):
        with SnapshotWriter(repo, DEV, DeviceRecord("phone"), incremental=i > 0) as w:
            for op, a, b, data in day:
                try:
                    if op == "put":
                        fw = w.open_file(a)
                        fw.write(data)
                        fw.close()
                    elif op == "remove":
                        w.remove(a)
                    else:
                        w.move(a, b)
                except (ValueError, KeyError, PhonevaultError):  # an edit the staged tree refuses: not made
                    pass
            w.commit(f"day {i}")
    view = repo.view(repo.device_key(DEV), refresh=True)
    for snap in view.live():
        whole = by_shard(fold_state(view, snap.id, repo.get_blob))
        assert spilled(repo, view, snap) == whole
        assert whole == by_shard(load_tree(snap.tree, repo.get_blob))
    assert check(repo).ok


def test_damage_found_shard_by_shard_is_what_the_whole_fold_finds(repo, tmp_path):
    """Two tree nodes unreadable in one snapshot and a data pack gone: the files lost are exactly the fold's files
    of those shards (and every shard's files) with a chunk in the lost pack, computed from the undamaged vault."""
    days = []
    for d in range(3):
        with SnapshotWriter(repo, DEV, DeviceRecord("phone"), incremental=d > 0) as w:
            for s in ("aa", "bb", "cc"):
                for i in range(4):
                    if (i + d) % 3:
                        fw = w.open_file(f"{s}/{d}-{i}")
                        fw.write(os.urandom(500))
                        fw.close()
            days.append(w.commit(f"day {d}"))
    view = repo.view(repo.device_key(DEV), refresh=True)
    folds = {s.hex: fold_state(view, s.id, repo.get_blob) for s in days}
    victim = days[1]
    lost_nodes = [r.node for r in read_root(victim.tree, repo.get_blob) if r.shard in ("aa", "cc")]
    lost_chunk = folds[days[0].hex]["bb/0-1"].chunks[0]
    lost_pack = repo.locate(lost_chunk).pack
    for node in lost_nodes:
        loc = repo.locate(node)
        path = Path(repo.backend.location) / "packs" / loc.pack[:2] / loc.pack
        raw = bytearray(path.read_bytes())
        raw[loc.offset + loc.length // 2] ^= 1
        path.write_bytes(bytes(raw))
    (Path(repo.backend.location) / "packs" / lost_pack[:2] / lost_pack).unlink()
    repo.close()
    again = reopen(repo, tmp_path / "fresh-cache")
    try:
        report = check(again, read_data=True)
        in_pack = {b for b in {c for f in folds.values() for e in f.values() for c in e.chunks}}
        in_pack = {b for b in in_pack if (loc := again.locate(b)) is not None and loc.pack == lost_pack}
        expected = {
            sid: {p for p, e in fold.items() if set(e.chunks) & in_pack}
            for sid, fold in folds.items()
        }  # fmt: skip
        got = {d.snapshot.hex(): set(d.paths) for d in report.damaged}
        assert got == {sid: paths for sid, paths in expected.items() if paths}
        assert sum("tree checkpoint differs" in e for e in report.errors) == 0
        assert any(lost_nodes[0].hex()[:16] in e for e in report.errors)
    finally:
        again.close()
