"""The event log against a dict model: random put/remove/commit/rollback/forget/pin/prune/reopen sequences.

After every step: each live snapshot reads back exactly the model's content, its tree checkpoint equals the fold
of its deltas, the head is where the model says, and a rebuilt cache sees the same history."""

import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from phonevault.store.backends.local import LocalBackend
from phonevault.store.check import check
from phonevault.store.history import apply_forget, pin, plan_forget, rollback
from phonevault.store.projections import fold_state
from phonevault.store.prune import prune
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import Repository
from phonevault.store.retention import Policy
from phonevault.store.trees import load_tree
from phonevault.store.writer import SnapshotWriter

PATHS = ["Manifest.db", "Info.plist", "ab/ab01", "ab/ab02", "cd/cd01", "ef/ef99", "ef/ef98"]
CONTENT = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 20_000)),
)
DEVICE = "00008101-000A1B2C3D4E5F60"


class VaultMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        self.repo = Repository.init(LocalBackend(self.tmp / "r"), "pw", scrypt_n=2**10, cache_root=self.tmp / "c0")
        self.working: dict[str, bytes] = {}
        self.snaps: dict[bytes, dict[str, bytes]] = {}
        self.order: list[bytes] = []
        self.forgotten: set[bytes] = set()
        self.pinned: set[bytes] = set()
        self.head: bytes | None = None
        self.reopens = 0

    def teardown(self):
        self.repo.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def live(self) -> list[bytes]:
        return [s for s in self.order if s not in self.forgotten]

    @rule(path=st.sampled_from(PATHS), data=CONTENT)
    def put(self, path, data):
        self.working[path] = data

    @rule(path=st.sampled_from(PATHS))
    def remove(self, path):
        self.working.pop(path, None)

    @rule(incremental=st.booleans())
    def commit(self, incremental):
        w = SnapshotWriter(self.repo, DEVICE, DeviceRecord("test phone"), incremental=incremental)
        base = self.snaps[self.head] if (incremental and self.head) else {}
        for path in base.keys() - self.working.keys():
            w.remove(path)
        for path, data in self.working.items():
            if base.get(path) != data:
                fw = w.open_file(path, 0o100644, len(data))
                for i in range(0, len(data), 4096):
                    fw.write(data[i : i + 4096])
                fw.close()
        rec = w.commit("test")
        self.snaps[rec.id] = dict(self.working)
        self.order.append(rec.id)
        self.head = rec.id

    @precondition(lambda self: len(self.live()) > 1)
    @rule(i=st.integers(0, 100))
    def rollback_to(self, i):
        target = self.live()[i % len(self.live())]
        view = self.repo.view(self.repo.device_key(DEVICE), refresh=True)
        rollback(self.repo, view, view.get(target))
        self.head = target
        self.working = dict(self.snaps[target])

    @precondition(lambda self: len(self.live()) > 1)
    @rule(i=st.integers(0, 100))
    def forget_one(self, i):
        target = self.live()[i % len(self.live())]
        view = self.repo.view(self.repo.device_key(DEVICE), refresh=True)
        apply_forget(self.repo, plan_forget(view, Policy(), {target}), "test")
        if target not in self.pinned:
            self.forgotten.add(target)
            if target == self.head:  # the newest backup left becomes current (commits here are dated in order)
                self.head = self.live()[-1]

    @precondition(lambda self: self.live())
    @rule(i=st.integers(0, 100))
    def pin_one(self, i):
        target = self.live()[i % len(self.live())]
        view = self.repo.view(self.repo.device_key(DEVICE), refresh=True)
        pin(self.repo, view, view.get(target))
        self.pinned.add(target)

    @rule()
    def prune_now(self):
        prune(self.repo, grace_us=0)

    @rule()
    def reopen_with_fresh_cache(self):
        self.repo.close()
        self.reopens += 1
        self.repo = Repository.open(LocalBackend(self.tmp / "r"), "pw", cache_root=self.tmp / f"c{self.reopens}")

    @invariant()
    def history_matches_model(self):
        if not self.order:
            return
        view = self.repo.view(self.repo.device_key(DEVICE), refresh=True)
        assert view.head == self.head
        assert [s.id for s in view.live()] == self.live()
        for sid in self.live():
            rec = view.get(sid)
            tree = load_tree(rec.tree, self.repo.get_blob)
            assert tree == fold_state(view, sid, self.repo.get_blob)
            got = {p: b"".join(self.repo.read_file(e)) for p, e in tree.items()}
            assert got == self.snaps[sid]
        report = check(self.repo)
        assert report.ok, report.errors


VaultMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
TestVault = VaultMachine.TestCase


def test_rollback_then_new_backup_keeps_every_earlier_snapshot(repo):
    """A rollback then a new backup: the new one is staged on the rolled-back version; all others stay readable."""
    contents = [{"a/1": b"one"}, {"a/1": b"one", "a/2": b"two"}, {"a/2": b"two!"}]
    ids = []
    for c in contents:
        w = SnapshotWriter(repo, DEVICE, DeviceRecord(), incremental=False)
        for p, d in c.items():
            fw = w.open_file(p)
            fw.write(d)
            fw.close()
        ids.append(w.commit("t").id)
    view = repo.view(repo.device_key(DEVICE), refresh=True)
    rollback(repo, view, view.get(ids[0]))
    w = SnapshotWriter(repo, DEVICE, DeviceRecord(), incremental=True)
    fw = w.open_file("a/3")
    fw.write(b"three")
    fw.close()
    new = w.commit("t")
    assert new.parent == ids[0]
    view = repo.view(repo.device_key(DEVICE), refresh=True)
    expected = contents + [{"a/1": b"one", "a/3": b"three"}]
    for sid, c in zip([*ids, new.id], expected, strict=True):
        tree = load_tree(view.get(sid).tree, repo.get_blob)
        assert {p: b"".join(repo.read_file(e)) for p, e in tree.items()} == c
    assert check(repo).ok
