import os
import threading

import pytest

from phonevault.store.check import check
from phonevault.store.errors import ConcurrentCommit, CorruptObject, PhonevaultError
from phonevault.store.history import apply_forget, plan_forget
from phonevault.store.prune import prune
from phonevault.store.retention import Policy
from phonevault.store.trees import load_tree
from phonevault.store.writer import SnapshotWriter

DEV = "udid-1"


def snapshot(repo, files: dict[str, bytes], incremental=False):
    w = SnapshotWriter(repo, DEV, {"name": "p"}, incremental=incremental)
    for p, d in files.items():
        fw = w.open_file(p)
        fw.write(d)
        fw.close()
    return w.commit("test")


def read_all(repo, rec):
    return {p: b"".join(repo.read_file(e)) for p, e in load_tree(rec.tree, repo.get_blob).items()}


def pack_bytes(repo):
    return sum(size for _, size in repo.backend.list("packs/"))


def test_forget_then_prune_reclaims_only_forgotten_data(repo):
    big_old, big_new = os.urandom(3 << 20), os.urandom(3 << 20)
    old = snapshot(repo, {"ab/photo": big_old, "Manifest.db": b"v1"})
    new = snapshot(repo, {"cd/photo": big_new, "Manifest.db": b"v2"})
    before = pack_bytes(repo)
    names_before = {n for n, _ in repo.backend.list("packs/")}
    view = repo.view(repo.device_key(DEV), refresh=True)
    apply_forget(repo, plan_forget(view, Policy(last=1)), "test")
    r = prune(repo, grace_us=3600 * 10**6)
    assert r.marked >= 1 and r.deleted == 0  # phase 1 only marks (and may repack), never deletes
    assert names_before <= {n for n, _ in repo.backend.list("packs/")}
    r = prune(repo, grace_us=0)
    assert r.deleted >= 1
    assert pack_bytes(repo) < before - (2 << 20)
    assert read_all(repo, new) == {"cd/photo": big_new, "Manifest.db": b"v2"}
    assert check(repo, read_data=True).ok
    assert repo.view(repo.device_key(DEV), refresh=True).get(old.id).forgotten


def test_writer_never_dedups_against_a_prune_candidate(repo):
    photo = os.urandom(2 << 20)
    snapshot(repo, {"ab/photo": photo})
    snapshot(repo, {"ab/other": b"x" * 100})
    view = repo.view(repo.device_key(DEV), refresh=True)
    apply_forget(repo, plan_forget(view, Policy(last=1)), "test")
    prune(repo, grace_us=3600 * 10**6)  # the photo's pack is now a candidate
    again = snapshot(repo, {"ab/photo": photo})  # the photo comes back (e.g. restored from "Recently deleted")
    assert again.stats["new_raw"] >= len(photo)  # written again, not deduplicated against the doomed pack
    prune(repo, grace_us=0)
    assert read_all(repo, again) == {"ab/photo": photo}
    assert check(repo, read_data=True).ok


def test_sweep_keeps_a_candidate_that_a_later_commit_needs(repo):
    photo = os.urandom(1 << 20)
    snapshot(repo, {"ab/photo": photo})
    snapshot(repo, {"ab/x": b"x"})
    view = repo.view(repo.device_key(DEV), refresh=True)
    apply_forget(repo, plan_forget(view, Policy(last=1)), "test")
    prune(repo, grace_us=10**12)
    # A writer that started before the mark reuses the photo's blob and commits before the sweep.
    w = SnapshotWriter(repo, DEV, {"name": "p"}, incremental=True)
    w.sink._avoid = set()  # simulate: it read the markers before prune wrote them
    fw = w.open_file("ab/photo")
    fw.write(photo)
    fw.close()
    rec = w.commit("test")
    assert rec.stats["new_raw"] < len(photo)
    from phonevault.store import prune as prune_mod

    res = prune_mod.PruneResult()
    prune_mod._sweep(repo, prune_mod.candidate_packs(repo), res)
    assert read_all(repo, rec)["ab/photo"] == photo
    assert check(repo, read_data=True).ok


def test_two_writers_same_device_one_wins(repo):
    snapshot(repo, {"a": b"base"})
    w1 = SnapshotWriter(repo, DEV, {"name": "p"}, incremental=True)
    w2 = SnapshotWriter(repo, DEV, {"name": "p"}, incremental=True)
    for w, d in ((w1, b"one"), (w2, b"two")):
        fw = w.open_file("b")
        fw.write(d)
        fw.close()
    w1.commit("first")
    with pytest.raises(ConcurrentCommit):
        w2.commit("second")
    assert len(repo.view(repo.device_key(DEV), refresh=True).snapshots) == 2
    # the loser's data is not lost: rerunning it dedups and commits
    w3 = SnapshotWriter(repo, DEV, {"name": "p"}, incremental=True)
    fw = w3.open_file("b")
    fw.write(b"two")
    fw.close()
    assert w3.commit("again").stats["new_raw"] < 100


def test_racing_appenders_threads_all_land_in_distinct_segments(repo):
    from phonevault.store.events import SnapshotTagged

    snap = snapshot(repo, {"a": b"x"})
    key = repo.device_key(DEV)
    errors = []

    def tagger(n):
        try:
            repo.append(key, [SnapshotTagged(snap.id, f"t{n}", 0)])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=tagger, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    view = repo.view(key, refresh=True)
    assert sorted(view.get(snap.id).tags) == sorted(f"t{n}" for n in range(8))
    assert view.last_seq == 8


def test_damaged_objects_are_named_and_do_not_spread(repo, tmp_path):
    from tests.conftest import reopen

    a = snapshot(repo, {"ab/a": os.urandom(100_000)})
    b = snapshot(repo, {"cd/b": os.urandom(100_000)})
    # damage one data pack: flip a byte in the middle
    packs = sorted(repo.backend.list("packs/"), key=lambda x: x[1])
    name, size = packs[-1]
    path = repo.backend.root / name
    raw = bytearray(path.read_bytes())
    raw[size // 3] ^= 0xFF
    path.write_bytes(bytes(raw))
    report = check(repo, read_data=True)
    assert not report.ok and any(name in e for e in report.errors)
    # reading the damaged snapshot fails with a named error; the other reads fine
    results = []
    for rec in (a, b):
        try:
            read_all(repo, rec)
            results.append("ok")
        except CorruptObject as e:
            assert "packs/" in str(e)
            results.append("corrupt")
    assert sorted(results) == ["corrupt", "ok"]
    # a damaged event segment: named, the rest of the log still projects
    seg = sorted(repo.backend.list("events/"))[-1][0]
    (repo.backend.root / seg).write_bytes(b"garbage")
    fresh = reopen(repo, cache_root=tmp_path / "fresh-cache")
    view = fresh.view(fresh.device_key(DEV))
    assert [s.id for s in view.snapshots] == [a.id]
    assert any(seg in w for w in fresh.damaged_segments(view.key))
    assert not check(fresh).ok
    # and a new commit still gets a fresh seq, never overwriting the damaged one
    w = SnapshotWriter(fresh, DEV, {"name": "p"}, incremental=True)
    w.commit("after damage")
    assert fresh.view(view.key, refresh=True).last_seq == 2
    fresh.close()


def test_pruned_reused_pack_aborts_commit(repo):
    snapshot(repo, {"ab/a": os.urandom(300_000)})
    w = SnapshotWriter(repo, DEV, {"name": "p"}, incremental=False)
    fw = w.open_file("ab/a")
    fw.write(
        b"".join(repo.read_file(load_tree(repo.view(repo.device_key(DEV)).head_record.tree, repo.get_blob)["ab/a"]))
    )
    fw.close()
    for name, _ in list(repo.backend.list("packs/")):
        repo.backend.delete(name)
    with pytest.raises(PhonevaultError, match="pruned meanwhile"):
        w.commit("test")
