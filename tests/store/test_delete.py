"""Deleting and reclaiming space the way people expect: forget says why it keeps what it keeps, forgetting every
snapshot of a device is Apple's "Delete Backup", forgetting the current one moves "current" by an event, and one
prune with no backup running leaves the vault within 5 % of its live data, never growing by more than one pack on
the way; with a backup running it stays two-phase.

"Live data", here and in tests/cli/test_forget_prune.py, is the sum of the stored (sealed) lengths of the blobs live
snapshots need, each counted once: their root and shard nodes, their files' chunks, and the delta blobs of every
live snapshot and its ancestors (`live_data`, computed by walking trees, independently of store/prune.py). Pack
headers, index objects, event logs, keys, directories and file-system blocks are what the 5 % has to cover."""

from __future__ import annotations

import os
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonevault.store.backends.faulty import FaultyBackend
from phonevault.store.backends.local import LocalBackend
from phonevault.store.check import check
from phonevault.store.errors import ConcurrentCommit, LogUnreadable, SnapshotsPinned
from phonevault.store.events import HeadMoved, SnapshotForgotten, open_segment, segment_name
from phonevault.store.history import apply_forget, forget, pin, plan_forget, plan_forget_all
from phonevault.store.index import decode_index
from phonevault.store.projections import lineage
from phonevault.store.prune import prune
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import Repository, now_us
from phonevault.store.retention import Candidate, Policy, keep_reasons
from phonevault.store.trees import load_tree, read_root
from phonevault.store.writer import SnapshotWriter
from tests.conftest import PASSWORD, reopen

PHONE = "00008101-000A1B2C3D4E5F60"
IPAD = "00008030-001122334455667E"
DAY = 86_400 * 10**6
T0 = int(datetime(2026, 11, 1, 9, tzinfo=UTC).timestamp()) * 10**6


def commit(repo: Repository, files: dict[str, bytes], when: int, device: str = PHONE, name: str = "Ada’s iPhone"):
    w = SnapshotWriter(repo, device, DeviceRecord(name), incremental=False)
    for path, data in files.items():
        f = w.open_file(path)
        f.write(data)
        f.close()
    return w.commit("test", time_us=when)


def view_of(repo: Repository, device: str = PHONE):
    return repo.view(repo.device_key(device), refresh=True)


def read_all(repo: Repository, snap) -> dict[str, bytes]:
    return {p: b"".join(repo.read_file(e)) for p, e in load_tree(snap.tree, repo.get_blob).items()}


def live_blob_ids(repo: Repository) -> set[bytes]:
    needed: set[bytes] = set()
    for key in repo.device_keys():
        view = repo.view(key, refresh=True)
        for snap in view.live():
            needed.add(snap.tree)
            needed.update(ref.node for ref in read_root(snap.tree, repo.get_blob))
            for entry in load_tree(snap.tree, repo.get_blob).values():
                needed.update(entry.chunks)
            for rec in lineage(view, snap.id):
                needed.update(rec.deltas)
    return needed


def live_data(repo: Repository) -> int:
    """Live data as defined in the module docstring."""
    return sum(repo.locate_needed(b).length for b in live_blob_ids(repo))


def indexed_blobs(repo: Repository) -> set[bytes]:
    return {
        bid for name, _ in repo.backend.list("index/") for bid in decode_index(repo.key, name, repo.backend.get(name))
    }


def du(path: Path) -> int:
    """Bytes the folder takes on disk, as `du` counts them (allocated blocks, directories included)."""
    return int(
        subprocess.run(["du", "-s", "-B1", str(path)], check=True, capture_output=True, text=True).stdout.split()[0]
    )


def vault_bytes(backend) -> int:
    return sum(size for _, size in backend.list(""))


# --- forget explains itself ---------------------------------------------------------------------------------------


def test_forget_of_a_devices_only_snapshot_keeps_it_and_says_why(repo):
    only = commit(repo, {"Manifest.db": b"v1"}, T0)
    plan = plan_forget(view_of(repo), None, {only.id})
    assert (plan.keep, plan.forget, plan.reasons) == ([only], [], {only.id: "last snapshot"})
    apply_forget(repo, plan, "test")
    assert view_of(repo).live() == [only] and view_of(repo).head == only.id
    by_policy = plan_forget(view_of(repo), Policy(last=1))
    assert by_policy.reasons == {only.id: "current, keep-last 1"}


def test_forget_by_name_says_why_for_every_snapshot_of_the_device(repo):
    a, b, c = (commit(repo, {"Manifest.db": bytes([i])}, T0 + i * DAY) for i in range(3))
    pin(repo, view_of(repo), a)
    plan = plan_forget(view_of(repo), None, {a.id, b.id})
    assert plan.reasons == {a.id: "pinned", b.id: "named", c.id: "not named"}
    assert [s.id for s in plan.forget] == [b.id] and plan.head == c.id and not plan.moves_head
    # Named all: every one that may go goes but the last; pinned ones stay pinned.
    plan = plan_forget(view_of(repo), None, {b.id, c.id})
    assert plan.reasons == {a.id: "not named, pinned", b.id: "named", c.id: "named"}
    assert [s.id for s in plan.keep] == [a.id] and plan.head == a.id


def _oracle(cands: list[Candidate], policy: Policy) -> dict[bytes, set[str]]:
    """What each rule keeps, stated directly: the N newest; the newest of each of the N latest days/weeks/months."""
    out: dict[bytes, set[str]] = {}
    newest = sorted(cands, key=lambda c: c.time, reverse=True)
    for c in cands:
        if c.pinned:
            out.setdefault(c.id, set()).add("pinned")
        if c.head:
            out.setdefault(c.id, set()).add("current")
    for c in newest[: policy.last]:
        out.setdefault(c.id, set()).add(f"keep-last {policy.last}")
    for n, rule, bucket in (
        (policy.daily, "daily", lambda d: d.date()),
        (policy.weekly, "weekly", lambda d: d.isocalendar()[:2]),
        (policy.monthly, "monthly", lambda d: (d.year, d.month)),
    ):
        buckets: dict = {}
        for c in newest:
            buckets.setdefault(bucket(datetime.fromtimestamp(c.time / 1e6, UTC)), c)  # newest first: the first wins
        for key in sorted(buckets, reverse=True)[:n]:
            out.setdefault(buckets[key].id, set()).add(f"keep-{rule} {n}")
    return out


@given(
    times=st.lists(st.integers(0, 400 * 24), min_size=1, max_size=12, unique=True),
    flags=st.lists(st.booleans(), min_size=12, max_size=12),
    head=st.integers(0, 11),
    rules=st.tuples(*[st.integers(0, 4)] * 4).filter(any),
)
def test_keep_reasons_name_every_rule_that_keeps_a_snapshot(times, flags, head, rules):
    cands = [
        Candidate(bytes([i]), T0 + t * 3600 * 10**6, flags[i], i == head % len(times)) for i, t in enumerate(times)
    ]
    policy = Policy(*rules)
    got = keep_reasons(cands, policy)
    assert {i: set(r) for i, r in got.items()} == _oracle(cands, policy)
    order = ["pinned", "current", "keep-last", "keep-daily", "keep-weekly", "keep-monthly"]
    for reasons in got.values():  # in a stable order
        assert list(reasons) == sorted(reasons, key=lambda r: order.index(r.split(" ")[0]))


# --- what makes current -------------------------------------------------------------------------------------------


def test_forgetting_the_current_snapshot_makes_the_newest_one_left_current_by_an_event(repo):
    day1 = commit(repo, {"Manifest.db": b"1"}, T0 + DAY)
    day3 = commit(repo, {"Manifest.db": b"3"}, T0 + 3 * DAY)
    day2 = commit(repo, {"Manifest.db": b"2"}, T0 + 2 * DAY)  # an archived backup, imported last
    assert view_of(repo).head == day3.id
    plan = plan_forget(view_of(repo), None, {day3.id})
    assert plan.head == day2.id and plan.moves_head  # by backup date, not by commit order
    apply_forget(repo, plan, "test")
    view = view_of(repo)
    assert view.head == day2.id and [s.id for s in view.live()] == [day1.id, day2.id]
    # In the log: one segment, HeadMoved first (so the head is never what is forgotten), then the forget.
    name = segment_name(view.key, view.last_seq)
    events = open_segment(repo.key, name, repo.backend.get(name))
    assert [type(e) for e in events] == [HeadMoved, SnapshotForgotten]
    assert (events[0].snapshot, events[0].reason, events[1].snapshot) == (day2.id, "forgot current", day3.id)
    assert check(repo).ok


def test_a_backup_committed_while_forget_planned_is_not_replaced_by_an_older_one(repo):
    a = commit(repo, {"Manifest.db": b"a"}, T0)
    b = commit(repo, {"Manifest.db": b"b"}, T0 + DAY)
    stale = view_of(repo)
    c = commit(repo, {"Manifest.db": b"c"}, T0 + 2 * DAY)  # lands between the plan and its append
    with pytest.raises(ConcurrentCommit):
        apply_forget(repo, plan_forget(stale, None, {b.id}), "test")
    assert view_of(repo).head == c.id and len(view_of(repo).live()) == 3  # nothing appended
    done = forget(repo, stale, lambda v: plan_forget(v, None, {b.id}), "test")  # plans again on the new log
    assert not done.moves_head and view_of(repo).head == c.id
    assert [s.id for s in view_of(repo).live()] == [a.id, c.id]


def test_forget_all_refuses_pinned_snapshots_unless_asked_to_unpin_them(repo):
    a = commit(repo, {"Manifest.db": b"a"}, T0)
    commit(repo, {"Manifest.db": b"b"}, T0 + DAY)
    pin(repo, view_of(repo), a)
    with pytest.raises(SnapshotsPinned, match=a.hex[:8]):
        plan_forget_all(view_of(repo))
    assert len(view_of(repo).live()) == 2
    apply_forget(repo, plan_forget_all(view_of(repo), unpin=True), "all")
    view = view_of(repo)
    assert view.live() == [] and view.head is None and not view.get(a.id).pinned


def test_after_forget_all_the_device_has_no_current_snapshot_and_its_next_backup_of_any_date_is_current(repo):
    commit(repo, {"Manifest.db": b"a"}, T0 + 5 * DAY)
    ipad = commit(repo, {"Manifest.db": b"i"}, T0, device=IPAD, name="Ada’s iPad")
    plan = plan_forget_all(view_of(repo))
    assert plan.head is None and plan.reasons == {s.id: "all" for s in plan.forget}
    apply_forget(repo, plan, "all")
    assert (view_of(repo).head, view_of(repo).live()) == (None, [])
    assert view_of(repo, IPAD).head == ipad.id  # another device is untouched
    older = commit(repo, {"Manifest.db": b"archived"}, T0 + DAY)  # dated before the forgotten one
    assert view_of(repo).head == older.id and older.parent is None  # starts from nothing
    assert check(repo).ok


# --- prune --------------------------------------------------------------------------------------------------------


def test_forget_all_then_one_prune_leaves_the_vault_within_5_percent_of_its_live_data(repo, tmp_path):
    shared = {f"s{i}/shared": os.urandom(1 << 20) for i in range(2)}  # the same files on both devices
    phone = commit(repo, {**shared, **{f"p{i}/photo": os.urandom(1 << 20) for i in range(4)}}, T0)
    ipad_files = {**shared, **{f"i{i}/photo": os.urandom(1 << 20) for i in range(6)}}
    ipad = commit(repo, ipad_files, T0 + DAY, device=IPAD, name="Ada’s iPad")
    assert ipad.stats.new_raw < 7 << 20  # the shared files were deduplicated against the phone's pack
    apply_forget(repo, plan_forget_all(view_of(repo)), "all")
    r = prune(repo)  # the default: no grace period
    fresh = reopen(repo, cache_root=tmp_path / "fresh")
    try:
        live = live_data(fresh)
        assert r.live_bytes == live and r.deleted >= 1 and r.repacked >= 1 and r.pending == r.held == 0
        assert du(Path(repo.backend.location)) <= 1.05 * live, (du(Path(repo.backend.location)), live)
        assert indexed_blobs(fresh) == live_blob_ids(fresh)  # nothing of the phone's but what the iPad needs
        assert list(fresh.backend.list("prune/")) == []
        assert read_all(fresh, ipad) == ipad_files
        assert check(fresh, read_data=True).ok
    finally:
        fresh.close()
    assert phone.id not in {s.id for s in view_of(repo).live()}


def test_repacking_never_grows_the_vault_by_more_than_one_pack(tmp_path, make_repo):
    """Six packs half live (y_k live, x_k forgotten) are repacked into packs of about two sources each: each source
    is deleted as soon as the new pack holding its blobs is written, so the vault's peak size stays within one new
    pack of its size before prune; copying everything first would have grown it by all the copies."""
    repo = make_repo()
    ys = {f"y{k}/keep": os.urandom(200_000) for k in range(6)}
    for k in range(6):
        commit(repo, {**dict(list(ys.items())[: k + 1]), f"x{k}/gone": os.urandom(200_000)}, T0 + k * DAY)
    last = commit(repo, ys, T0 + 6 * DAY)
    apply_forget(repo, plan_forget(view_of(repo), Policy(last=1)), "test")
    root = Path(repo.backend.location)
    inner = LocalBackend(root)
    sizes: list[int] = []

    def measure(method: str, _name: str) -> None:
        if method in ("put", "put_exclusive", "delete"):
            sizes.append(vault_bytes(inner))  # what the vault holds after the previous write or delete

    packs_before = {n for n, _ in inner.list("packs/")}
    before = vault_bytes(inner)
    with Repository.open(FaultyBackend(inner, before=measure), PASSWORD, cache_root=tmp_path / "p") as pruner:
        r = prune(pruner, max_unused=0, pack_size=450_000)
    sizes.append(vault_bytes(inner))
    new_packs = [size for name, size in inner.list("packs/") if name not in packs_before]
    assert r.repacked >= 6 and len(new_packs) >= 3
    assert r.repacked_bytes > 2 * max(new_packs)  # all copies first would break the bound below
    assert max(sizes) <= before + max(new_packs) + 64_000, (max(sizes) - before, new_packs)  # + its index object
    assert sizes[-1] < before - 1_000_000
    with reopen(repo, cache_root=tmp_path / "after") as fresh:
        assert read_all(fresh, last) == ys and check(fresh, read_data=True).ok


@pytest.fixture
def other(repo, tmp_path):
    """Another process's view of the same vault (as `phonevault prune` would have)."""
    r = reopen(repo, cache_root=tmp_path / "other-cache")
    yield r
    r.close()


def test_a_backup_running_during_prune_keeps_it_two_phase_and_a_prune_after_it_frees_the_rest(repo, other, tmp_path):
    old = commit(repo, {"ab/old": os.urandom(3 << 20)}, T0)
    commit(repo, {"cd/new": os.urandom(3 << 20)}, T0 + DAY)  # (a few MiB: file-system blocks stay under 5 %)
    apply_forget(repo, plan_forget(view_of(repo), None, {old.id}), "test")
    w = SnapshotWriter(repo, PHONE, DeviceRecord("Ada’s iPhone"), incremental=True)  # a backup, running
    f = w.open_file("ef/more")
    f.write(os.urandom(2 << 20))
    f.close()
    w.sink.flush()
    before = vault_bytes(other.backend)
    r = prune(other)
    assert (r.deleted, r.repacked, r.running_backups) == (0, 0, 1)
    assert r.held == r.marked >= 2 and r.held_bytes > 1 << 20
    assert r.running_since == [w._registration.started_us]
    assert vault_bytes(other.backend) <= before + 4096  # a marker, no copies
    rec = w.commit("test")
    r = prune(other)
    assert r.held == 0 and r.deleted >= 1 and list(other.backend.list("prune/")) == []
    with reopen(repo, cache_root=tmp_path / "fresh") as fresh:
        assert du(Path(repo.backend.location)) <= 1.05 * live_data(fresh)
        assert set(read_all(fresh, rec)) == {"cd/new", "ef/more"} and check(fresh, read_data=True).ok


def test_a_writer_that_started_before_the_mark_but_registered_after_it_avoids_what_prune_deleted(repo, tmp_path):
    """No grace period is needed: a writer whose marker prune's second look did not see puts that marker after the
    prune marker existed, and reads the prune markers after that, so it never depends on a pack prune deletes. Here
    the writer has taken its start time and its marker's put is held in flight while prune runs to the end."""
    photo = os.urandom(1 << 20)
    old = commit(repo, {"ab/photo": photo}, T0)
    commit(repo, {"cd/x": b"x"}, T0 + DAY)
    apply_forget(repo, plan_forget(view_of(repo), None, {old.id}), "test")
    at_put, go = threading.Event(), threading.Event()

    def hold(method: str, name: str) -> None:
        if method == "put" and name.startswith("writers/") and not at_put.is_set():
            at_put.set()
            assert go.wait(60), "the test never let the writer go"

    writer_repo = Repository.open(
        FaultyBackend(LocalBackend(Path(repo.backend.location)), before=hold), PASSWORD, cache_root=tmp_path / "w"
    )
    chunks = {c for e in load_tree(old.tree, writer_repo.get_blob).values() for c in e.chunks}
    assert all(writer_repo.locate(c) is not None for c in chunks)  # its cache knows the photo's pack: tempting
    outcome: dict = {}

    def backup() -> None:
        try:
            w = SnapshotWriter(writer_repo, PHONE, DeviceRecord("Ada’s iPhone"), incremental=True)
            f = w.open_file("ab/photo")  # the photo is back on the phone
            f.write(photo)
            f.close()
            outcome["started"] = w._registration.started_us
            outcome["rec"] = w.commit("test")
        except BaseException as e:  # noqa: BLE001 - reported below
            outcome["error"] = e

    t = threading.Thread(target=backup, daemon=True)
    t.start()
    try:
        assert at_put.wait(60), "the writer never registered"
        marked_after = now_us()
        r = prune(repo)
        assert r.running_backups == 0 and r.deleted >= 1 and r.held == 0  # its marker was not there yet
    finally:
        go.set()
        t.join(60)
    assert "error" not in outcome, outcome
    assert outcome["started"] < marked_after  # it started before prune marked
    rec = outcome["rec"]
    assert rec.stats.new_raw >= len(photo)  # stored again: it never reused the pack prune deleted
    assert read_all(writer_repo, rec)["ab/photo"] == photo
    assert check(writer_repo, read_data=True).ok
    writer_repo.close()


def test_prune_deletes_nothing_while_a_device_log_cannot_be_read(repo, tmp_path):
    old = commit(repo, {"ab/old": os.urandom(300_000)}, T0)
    new = commit(repo, {"cd/new": os.urandom(300_000)}, T0 + DAY)
    apply_forget(repo, plan_forget(view_of(repo), None, {old.id}), "test")
    path = Path(repo.backend.location) / segment_name(new.device_key, new.seq)
    data = bytearray(path.read_bytes())
    data[40] ^= 1
    path.write_bytes(bytes(data))
    objects = sorted(repo.backend.list(""))
    with reopen(repo, cache_root=tmp_path / "cold") as cold:
        with pytest.raises(LogUnreadable, match=f"{new.seq:010d}"):
            prune(cold)
    assert sorted(repo.backend.list("")) == objects
