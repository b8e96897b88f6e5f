import os
import threading
from pathlib import Path

import pytest

from phonevault.store.check import check
from phonevault.store.errors import ConcurrentCommit, CorruptObject, PackPruned
from phonevault.store.history import apply_forget, plan_forget
from phonevault.store.prune import prune
from phonevault.store.records import DeviceRecord
from phonevault.store.retention import Policy
from phonevault.store.trees import load_tree
from phonevault.store.writer import SnapshotWriter

DEV = "udid-1"


def snapshot(repo, files: dict[str, bytes], incremental=False):
    w = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=incremental)
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
    assert again.stats.new_raw >= len(photo)  # written again, not deduplicated against the doomed pack
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
    w = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=True)
    w.sink._avoid = set()  # simulate: it read the markers before prune wrote them
    fw = w.open_file("ab/photo")
    fw.write(photo)
    fw.close()
    rec = w.commit("test")
    assert rec.stats.new_raw < len(photo)
    from phonevault.store import prune as prune_mod

    res = prune_mod.PruneResult()
    prune_mod._sweep(repo, prune_mod.candidate_packs(repo), res)
    assert read_all(repo, rec)["ab/photo"] == photo
    assert check(repo, read_data=True).ok


def test_two_writers_same_device_one_wins(repo):
    snapshot(repo, {"a": b"base"})
    w1 = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=True)
    w2 = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=True)
    for w, d in ((w1, b"one"), (w2, b"two")):
        fw = w.open_file("b")
        fw.write(d)
        fw.close()
    w1.commit("first")
    with pytest.raises(ConcurrentCommit):
        w2.commit("second")
    assert len(repo.view(repo.device_key(DEV), refresh=True).snapshots) == 2
    # the loser's data is not lost: rerunning it dedups and commits
    w3 = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=True)
    fw = w3.open_file("b")
    fw.write(b"two")
    fw.close()
    assert w3.commit("again").stats.new_raw < 100


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
    w = SnapshotWriter(fresh, DEV, DeviceRecord("p"), incremental=True)
    w.commit("after damage")
    assert fresh.view(view.key, refresh=True).last_seq == 2
    fresh.close()


def test_pruned_reused_pack_aborts_commit(repo):  # a pack deleted behind prune's back: still no bad commit
    snapshot(repo, {"ab/a": os.urandom(300_000)})
    w = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=False)
    fw = w.open_file("ab/a")
    fw.write(
        b"".join(repo.read_file(load_tree(repo.view(repo.device_key(DEV)).head_record.tree, repo.get_blob)["ab/a"]))
    )
    fw.close()
    for name, _ in list(repo.backend.list("packs/")):
        repo.backend.delete(name)
    with pytest.raises(PackPruned, match="pruned meanwhile"):
        w.commit("test")
    assert len(repo.view(repo.device_key(DEV), refresh=True).snapshots) == 1


# --------------------------------------------------------------------------------------------------- prune against
# a commit in flight. The tester ran `prune --grace 0` 1.5 s into an import: the import exited 0 and `check` found
# 4 048 blobs missing, because prune swept the import's own packs and the import did not check its own packs.


def stage(w, files: dict[str, bytes]) -> None:
    for p, d in files.items():
        fw = w.open_file(p)
        fw.write(d)
        fw.close()


def writer_markers(repo) -> list[str]:
    return sorted(n for n, _ in repo.backend.list("writers/"))


@pytest.fixture
def other(repo, tmp_path):
    """A second process's view of the same vault: its own Repository and cache (as `phonevault prune` would be)."""
    from tests.conftest import reopen

    r = reopen(repo, cache_root=tmp_path / "other-cache")
    yield r
    r.close()


def test_prune_grace_0_during_a_backup_keeps_its_packs_and_the_commit_is_whole(repo, other):
    files = {f"ab/{i}": os.urandom(150_000) for i in range(6)}
    w = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=False)
    stage(w, files)
    w.sink.flush()  # its packs are on disk, referenced by nothing yet
    assert w.stats.packs and len(writer_markers(repo)) == 1
    r = prune(other, grace_us=0)
    assert (r.running_backups, r.deleted) == (1, 0)
    assert r.held == r.marked >= len(w.stats.packs)  # marked (unreferenced), but not swept
    rec = w.commit("test")
    assert writer_markers(repo) == []
    assert read_all(repo, rec) == files
    assert check(other, read_data=True).ok
    # With the backup finished, the next prune drops the marker and deletes nothing the snapshot needs.
    r = prune(other, grace_us=0)
    assert (r.held, r.running_backups, r.deleted) == (0, 0, 0)
    assert list(other.backend.list("prune/")) == []
    assert check(other, read_data=True).ok


def test_a_pack_a_running_backup_reuses_from_a_forgotten_snapshot_is_kept(repo, other):
    photo = os.urandom(1 << 20)
    snapshot(repo, {"ab/photo": photo})
    snapshot(repo, {"ab/x": b"x"})
    view = repo.view(repo.device_key(DEV), refresh=True)
    apply_forget(repo, plan_forget(view, Policy(last=1)), "test")  # the photo's only snapshot is forgotten
    w = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=True)
    stage(w, {"ab/photo": photo})  # the photo is back: deduplicated against the forgotten snapshot's pack
    assert w.sink.reused_packs
    r = prune(other, grace_us=0)
    assert r.held >= 1 and r.deleted == 0
    rec = w.commit("test")
    assert rec.stats.new_raw < len(photo)
    r = prune(other, grace_us=0)  # the sweep sees the new commit: the photo's pack is live again
    assert r.held == 0
    assert read_all(other, rec)["ab/photo"] == photo
    assert check(other, read_data=True).ok


def test_grace_keeps_its_meaning_and_an_old_marker_waits_for_an_older_backup(repo, other):
    snapshot(repo, {"ab/old": os.urandom(200_000)})
    snapshot(repo, {"ab/new": b"n"})
    view = repo.view(repo.device_key(DEV), refresh=True)
    w = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=True)  # started before the mark
    apply_forget(repo, plan_forget(view, Policy(last=1)), "test")
    r = prune(other, grace_us=10**12)
    assert r.marked >= 1 and r.pending == r.marked and r.deleted == 0
    r = prune(other, grace_us=0)  # grace passed for that marker, but the backup that started before it runs on
    assert r.held >= 1 and r.deleted == 0 and r.pending == 0
    w.close()  # the backup is abandoned: nothing holds the marker any more
    assert writer_markers(repo) == []
    r = prune(other, grace_us=0)
    assert r.held == 0 and r.deleted >= 1
    assert check(other, read_data=True).ok


def test_a_stale_writer_marker_never_blocks_prune(repo, other):
    from phonevault.store.prune import WRITER_STALE_US, seal_writer_marker
    from phonevault.store.repository import now_us

    snapshot(repo, {"ab/old": os.urandom(200_000)})
    snapshot(repo, {"ab/new": b"n"})
    view = repo.view(repo.device_key(DEV), refresh=True)
    apply_forget(repo, plan_forget(view, Policy(last=1)), "test")
    # A backup killed hours ago left its marker, last refreshed just over the stale age ago; and one unreadable.
    dead = "writers/" + "d" * 32
    t = now_us()
    repo.backend.put(dead, seal_writer_marker(repo.key, dead, t - 3 * 3600 * 10**6, t - WRITER_STALE_US - 10**6))
    repo.backend.put("writers/" + "e" * 32, b"garbage")
    r = prune(other, grace_us=0)
    assert r.running_backups == 0 and r.held == 0 and r.deleted >= 1 and r.stale_writers == 2
    assert any(dead in n and "killed or crashed" in n for n in r.notes)
    assert writer_markers(repo) == []
    assert check(other, read_data=True).ok


def test_a_writer_whose_own_pack_was_swept_raises_pack_pruned_and_commits_nothing(repo, other):
    """The last line of defence: a writer paused for longer than the stale age (a laptop asleep mid-backup) loses
    its protection; its check before committing catches the deleted pack."""
    from phonevault.store.prune import WRITER_STALE_US, seal_writer_marker
    from phonevault.store.repository import now_us

    files = {"ab/a": os.urandom(300_000)}
    w = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=False)
    stage(w, files)
    w.sink.flush()
    (name,) = writer_markers(repo)
    t = now_us()
    repo.backend.put(name, seal_writer_marker(repo.key, name, t - WRITER_STALE_US * 2, t - WRITER_STALE_US * 2))
    r = prune(other, grace_us=0)
    assert r.stale_writers == 1 and r.deleted >= 1
    with pytest.raises(PackPruned, match="run it again"):
        w.commit("test")
    assert repo.view(repo.device_key(DEV), refresh=True).snapshots == ()
    assert check(other).ok
    # Run again: it stores the data anew and commits.
    rec = snapshot(repo, files)
    assert read_all(repo, rec) == files and check(repo, read_data=True).ok


def test_the_writer_marker_lives_exactly_as_long_as_the_writer(repo, monkeypatch):
    import gc
    import time

    from phonevault.store.prune import read_writers
    from phonevault.store.writer import WriterRegistration

    monkeypatch.setattr(WriterRegistration, "REFRESH_S", 0.02)
    w = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=False)
    (first,) = read_writers(repo)[0]
    assert first.refreshed_us == first.started_us
    deadline = time.monotonic() + 30
    while (m := read_writers(repo)[0][0]).refreshed_us == first.refreshed_us:  # the daemon thread refreshes it
        assert time.monotonic() < deadline, "the writer marker was never refreshed"
        time.sleep(0.01)
    assert m.started_us == first.started_us
    w.commit("one")
    assert writer_markers(repo) == []
    # Every way a writer ends removes its marker: close, a context manager, a failed commit, being dropped.
    w = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=True)
    w.close()
    with SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=True):
        assert len(writer_markers(repo)) == 1
    loser = SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=True)
    snapshot(repo, {"x": b"x"})
    with pytest.raises(ConcurrentCommit):
        loser.commit("late")
    SnapshotWriter(repo, DEV, DeviceRecord("p"), incremental=True)  # dropped at once
    gc.collect()
    assert writer_markers(repo) == []


def test_cli_prune_grace_0_while_an_import_runs_holds_its_packs(pv, cli_env, tmp_path):
    """The tester's reproduction, made deterministic: an import is held at its progress hook once its first pack is
    on disk, `phonevault prune --grace 0` runs in another process, then the import finishes."""
    import json
    import time
    from pathlib import Path

    from phonevault.store.backends.local import LocalBackend
    from phonevault.store.repository import Repository
    from phonevault.sync.emulator.phone import SyntheticPhone
    from phonevault.sync.mobilesync import import_folder
    from tests.conftest import PASSWORD

    pv("init", check=True)
    folder = SyntheticPhone(seed=11, size=2 << 20).write_backup(tmp_path / "src")
    big = folder / "ff" / ("ff" + "0" * 38)
    big.parent.mkdir(exist_ok=True)
    # 72 MiB: with 1 pack in flight (a disk's pack_writes) the second full pack's hand-off (32 MiB sealed, so at
    # most 50 MiB read, behind a 10 MiB chunker buffer and an 8 MiB sealing queue) waits until the first pack and
    # its index are written, with 22 MiB or more of reads (progress calls) to come; at 2 in flight (the memory
    # backend's) 6 MiB were left. 40 MiB left it to thread timing.
    with open(big, "wb") as f:
        for _ in range(72):
            f.write(os.urandom(1 << 20))
    repo = Repository.open(LocalBackend(Path(cli_env["PHONEVAULT_REPO"])), PASSWORD, cache_root=tmp_path / "lib")
    held, release = threading.Event(), threading.Event()
    outcome: dict = {}

    def hook(_done: int, _total: int) -> None:
        if not held.is_set() and any(True for _ in repo.backend.list("index/")):
            held.set()
            assert release.wait(120), "the test never released the import"

    def run() -> None:
        try:
            outcome["result"] = import_folder(repo, folder, progress=hook)
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 120
        while not held.wait(0.05) and t.is_alive():
            assert time.monotonic() < deadline, "the import is stuck"
        assert held.is_set(), f"the import never wrote a pack before finishing: {outcome}"
        r = pv("prune", "--grace", "0", "--json", check=True, timeout=120)
        doc = json.loads(r.stdout)
        assert doc["running_backups"] == 1 and doc["held_packs"] >= 1 and doc["deleted_packs"] == 0, doc
        r = pv("prune", "--grace", "0", check=True, timeout=120)
        assert "1 backup(s) running" in r.stdout and "a prune after that frees them" in r.stdout, r.stdout
    finally:
        release.set()
        t.join(120)
    assert "error" not in outcome, outcome
    snap = outcome["result"].snapshot
    stored = load_tree(snap.tree, repo.get_blob)[big.relative_to(folder).as_posix()]
    assert b"".join(repo.read_file(stored)) == big.read_bytes()
    repo.close()
    assert pv("check", "--read-data").returncode == 0
    doc = json.loads(pv("prune", "--grace", "0", "--json", check=True).stdout)  # the import is over
    assert doc["running_backups"] == doc["held_packs"] == doc["deleted_packs"] == 0, doc
    assert pv("check", "--read-data").returncode == 0


def test_prune_never_sweeps_the_data_of_a_snapshot_whose_segment_it_could_not_read(repo, tmp_path):
    """One corrupted read of the segment that commits the current snapshot, during `prune --grace 0` with a cold
    cache: prune must refuse (or keep everything that segment could reference), never delete that snapshot's
    packs. The segment on disk is intact; only the read was bad (a flaky disk, a network filesystem)."""
    from pathlib import Path

    from phonevault.store.backends.faulty import FaultyBackend, FlipBit
    from phonevault.store.backends.local import LocalBackend
    from phonevault.store.errors import PhonevaultError
    from phonevault.store.repository import Repository
    from tests.conftest import PASSWORD, reopen

    snapshot(repo, {"ab/photo": os.urandom(1 << 20)})
    new_photo = os.urandom(1 << 20)
    new = snapshot(repo, {"cd/photo": new_photo})
    view = repo.view(repo.device_key(DEV), refresh=True)
    apply_forget(repo, plan_forget(view, Policy(last=1)), "test")  # the old one is forgotten: prune has work
    segment = f"events/{new.device_key}/{new.seq:010d}"
    flaky = FaultyBackend(LocalBackend(Path(repo.backend.location)), [FlipBit("get", None, bit=99, prefix=segment)])
    with Repository.open(flaky, PASSWORD, cache_root=tmp_path / "cold") as seen_through:
        try:
            prune(seen_through, grace_us=0)
        except PhonevaultError:
            pass  # refusing to prune a log it cannot read is the safe answer
    assert flaky.fired, "the corrupted read never happened"
    fresh = reopen(repo, cache_root=tmp_path / "after")
    try:
        assert read_all(fresh, new) == {"cd/photo": new_photo}
    finally:
        fresh.close()


def test_a_reader_opened_before_a_prune_reads_through_the_repack(repo, tmp_path):
    """Readers do not register with prune. One that located its blobs before a prune repacked their pack (live and
    dead blobs together, the dead ones forgotten) still reads them: the vanished pack sends it back to the index."""
    from tests.conftest import reopen

    keep, drop = os.urandom(1 << 20), os.urandom(1 << 20)
    old = snapshot(repo, {"ab/drop": drop, "cd/keep": keep})  # one data pack holds both
    new = snapshot(repo, {"cd/keep": keep, "Manifest.db": b"v2"})
    reader = reopen(repo, cache_root=tmp_path / "reader-cache")
    entry = load_tree(new.tree, reader.get_blob)["cd/keep"]
    assert all(reader.locate(c) is not None for c in entry.chunks)  # located before the prune
    apply_forget(repo, plan_forget(repo.view(repo.device_key(DEV), refresh=True), None, {old.id}), "test")
    result = prune(repo, grace_us=0)
    assert result.repacked >= 1 and result.deleted >= 1, result
    assert b"".join(reader.read_file(entry)) == keep
    reader.close()


def test_prune_keeps_an_unindexed_pack_while_a_live_snapshot_needs_a_blob_no_index_locates(repo, tmp_path):
    """An index object lost (deleted, or a disk that dropped it): check reports the snapshot's blobs as missing
    from the index, and the pack's own header can rebuild it. A prune run meanwhile must leave the pack, so the
    repair still brings the snapshot back whole."""
    from phonevault.store.errors import PhonevaultError
    from phonevault.store.repair import repair_index
    from tests.conftest import reopen

    photo = os.urandom(1 << 20)
    snap = snapshot(repo, {"ab/photo": photo})
    data_pack = max(repo.backend.list("packs/"), key=lambda x: x[1])[0]
    repo.backend.delete(f"index/{data_pack.rsplit('/', 1)[1]}")
    fresh = reopen(repo, cache_root=tmp_path / "cold")
    try:
        assert not check(fresh).ok  # the damage is reported
        try:
            prune(fresh, grace_us=0)
        except PhonevaultError:
            pass  # refusing to prune while the index is incomplete is as good
        assert fresh.backend.exists(data_pack), "prune deleted the only copy of a live snapshot's data"
        repair_index(fresh)
        assert read_all(fresh, snap) == {"ab/photo": photo}
    finally:
        fresh.close()


def test_a_cache_catching_up_while_a_prune_replaces_an_index_object_loads_its_replacement(repo, tmp_path):
    """Another machine's cache catches up (`sync_index`: list index/, read what it lacks) while a prune repacks a
    pack: the index object it listed is gone when it reads it. The prune wrote the new pack's index first, so that
    is no damage: the catch-up lists again and loads the replacement, and reports nothing (a backup that had
    committed used to exit 1 with `missing object index/…`, benchmarks/s3_writers.py)."""
    from phonevault.store.backends.faulty import FaultyBackend
    from phonevault.store.backends.local import LocalBackend
    from phonevault.store.repository import Repository
    from tests.conftest import PASSWORD

    keep, drop = os.urandom(1 << 20), os.urandom(1 << 20)
    old = snapshot(repo, {"ab/drop": drop, "cd/keep": keep})  # one data pack holds both
    new = snapshot(repo, {"cd/keep": keep, "Manifest.db": b"v2"})
    apply_forget(repo, plan_forget(repo.view(repo.device_key(DEV), refresh=True), None, {old.id}), "test")
    data_pack = max(repo.backend.list("packs/"), key=lambda x: x[1])[0].rsplit("/", 1)[1]
    pruned: list = []

    def prune_first(method: str, name: str) -> None:
        if method == "get" and name == f"index/{data_pack}" and not pruned:
            pruned.append(prune(repo, grace_us=0))  # between the catch-up's listing and this read

    backend = FaultyBackend(LocalBackend(Path(repo.backend.location)), before=prune_first)
    other = Repository.open(backend, PASSWORD, cache_root=tmp_path / "other-cache")
    try:
        assert pruned and pruned[0].repacked >= 1, pruned
        assert not backend.exists(f"index/{data_pack}")  # the listed object really went
        assert other.warnings == []
        entry = load_tree(new.tree, other.get_blob)["cd/keep"]
        assert all(other.locate(c) is not None for c in entry.chunks)  # the replacement is loaded, not reloaded later
        assert b"".join(other.read_file(entry)) == keep
    finally:
        other.close()


def test_commits_landing_during_a_prune_are_located_by_it(repo, tmp_path):
    """A prune re-reads the logs three times (live set before the sweep, at the mark, after its marker); another
    machine may commit before each. Every new commit's trees must be found through index objects written before it:
    with two such commits in one prune, the second used to be `missing object blob …: not in any index` and the
    prune stopped (benchmarks/s3_writers.py). Afterwards every snapshot reads back whole."""
    from phonevault.store.backends.faulty import FaultyBackend
    from phonevault.store.backends.local import LocalBackend
    from phonevault.store.repository import Repository
    from tests.conftest import PASSWORD

    old = snapshot(repo, {"ab/old": os.urandom(1 << 20)})
    snapshot(repo, {"ab/new": os.urandom(1 << 20)})
    apply_forget(repo, plan_forget(repo.view(repo.device_key(DEV), refresh=True), None, {old.id}), "test")
    landed: dict = {}

    def commit_meanwhile(method: str, name: str) -> None:
        if method == "list" and name.startswith("writers/") and len(landed) < 2:
            files = {f"cd/during-{len(landed)}": os.urandom(64 << 10)}
            landed[snapshot(repo, files)] = files  # another machine (its own cache) commits before the listing

    backend = FaultyBackend(LocalBackend(Path(repo.backend.location)), before=commit_meanwhile)
    pruner = Repository.open(backend, PASSWORD, cache_root=tmp_path / "pruner-cache")
    try:
        result = prune(pruner, grace_us=0)
        assert len(landed) == 2 and result.deleted >= 1, (landed, result)
        for rec, files in landed.items():
            assert read_all(pruner, rec) == files
        assert check(pruner, read_data=True).ok
    finally:
        pruner.close()
