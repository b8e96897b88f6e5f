"""The staged tree of a snapshot: safe paths for every caller, and edits whose cost is bounded by what they touch.

StagedTree is checked against an oracle — a plain dict edited by scanning every path, which is how the writer
worked before it had a folder index — under random sequences of the edits a device can ask for.
"""

from __future__ import annotations

import stat
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.errors import UnsafePath
from phonevault.store.records import DeviceRecord
from phonevault.store.staged import StagedTree
from phonevault.store.trees import FileEntry
from phonevault.store.writer import SnapshotWriter

DEV = "udid-bounds"
DIR = stat.S_IFDIR | 0o755


def entry(path: str, is_dir: bool = False, size: int = 1) -> FileEntry:
    return FileEntry(path, 0 if is_dir else size, DIR if is_dir else 0o100644, 0, () if is_dir else (b"c" * 32,))


# --------------------------------------------------------------------------------------------------- the oracle


def under(p: str, root: str) -> bool:
    return not root or p == root or p.startswith(root + "/")


class Oracle:
    def __init__(self) -> None:
        self.state: dict[str, FileEntry] = {}

    def subtree(self, path: str) -> list[str]:
        return [p for p in self.state if under(p, path)]

    def remove(self, path: str) -> int:
        gone = self.subtree(path)
        for p in gone:
            del self.state[p]
        return len(gone)

    def relocated(self, src: str, dst: str) -> list[FileEntry]:
        return [replace(self.state[p], path=dst + p[len(src) :]) for p in self.subtree(src)]

    def move(self, src: str, dst: str) -> int:
        if src == dst:
            return len(self.subtree(src))
        moved = self.relocated(src, dst)
        if moved:
            self.remove(src)
            self.remove(dst)
            self.state.update((e.path, e) for e in moved)
        return len(moved)

    def copy(self, src: str, dst: str) -> int:
        copied = self.relocated(src, dst)
        self.state.update((e.path, e) for e in copied)
        return len(copied)

    def children(self, path: str) -> list[tuple[str, FileEntry | None, bool]]:
        prefix = path + "/" if path else ""
        names = sorted({p[len(prefix) :].split("/")[0] for p in self.state if p.startswith(prefix)})
        return [(n, self.state.get(prefix + n), any(p.startswith(prefix + n + "/") for p in self.state)) for n in names]

    def drop_nonempty_dirs(self) -> None:
        for p in [p for p, e in self.state.items() if e.is_dir]:
            if any(q.startswith(p + "/") for q in self.state):
                del self.state[p]


paths = st.lists(st.sampled_from("abc"), min_size=1, max_size=4).map("/".join)
ops = st.one_of(
    st.tuples(st.just("file"), paths, st.integers(1, 9)),
    st.tuples(st.just("dir"), paths),
    st.tuples(st.just("remove"), paths | st.just("")),
    st.tuples(st.just("move"), paths, paths),
    st.tuples(st.just("copy"), paths, paths),
    st.tuples(st.just("drop")),
)


@settings(max_examples=300)
@given(st.lists(ops, max_size=40), paths | st.just(""))
def test_staged_tree_edits_agree_with_the_scanning_oracle(program, probe):
    tree, oracle = StagedTree(), Oracle()
    for op in program:
        kind = op[0]
        if kind == "file":
            tree.set(entry(op[1], size=op[2]))
            oracle.state[op[1]] = entry(op[1], size=op[2])
        elif kind == "dir":
            tree.set(entry(op[1], is_dir=True))
            oracle.state[op[1]] = entry(op[1], is_dir=True)
        elif kind == "remove":
            assert tree.remove(op[1]) == oracle.remove(op[1])
        elif kind in ("move", "copy"):
            src, dst = op[1], op[2]
            if under(dst, src) and (dst != src or kind == "copy"):
                with pytest.raises(UnsafePath):
                    getattr(tree, kind)(src, dst)
                continue
            assert getattr(tree, kind)(src, dst) == getattr(oracle, kind)(src, dst)
        else:
            tree.drop_nonempty_dirs()
            oracle.drop_nonempty_dirs()
        assert tree.state == oracle.state
    assert tree.children(probe) == oracle.children(probe)
    assert tree.count(probe, 10**6) == len(oracle.subtree(probe))
    assert tree.count(probe, 2) == min(2, len(oracle.subtree(probe)))
    # The index kept up through the edits is the index built from scratch.
    fresh = StagedTree(dict(tree.state))
    fresh.count("", 1)
    assert tree._kids is None or tree._kids == fresh._kids


def test_drop_nonempty_dirs_on_a_large_tree_of_folders():
    """The tester's device made ~100 000 folder entries; dropping the non-empty ones was O(n²) (14 rounds of copies:
    20 s; 17: over 300 s). Here 100 000 folders and files, half of the folders with something under them."""
    tree = StagedTree()
    for i in range(25_000):
        tree.set(entry(f"d{i}", is_dir=True))
        tree.set(entry(f"d{i}/f"))
        tree.set(entry(f"e{i}", is_dir=True))
        tree.set(entry(f"d{i}/sub", is_dir=True))
    tree.drop_nonempty_dirs()
    assert len(tree.state) == 75_000
    assert all(p.startswith("e") or "/" in p for p in tree.state)


# --------------------------------------------------------------------------------------------------- safe paths

UNSAFE = [
    "",
    "/etc/passwd",
    "../x",
    "a/../../b",
    "a//b",
    "a/",
    "./a",
    "a/./b",
    "a\x00b",
    "n" * 256,
    "é" * 128,  # 256 bytes of UTF-8
    "/".join(["d"] * 65),
    "/".join(["n" * 200] * 6),
]


@pytest.mark.parametrize("path", UNSAFE)
def test_the_writer_refuses_unsafe_paths_from_any_caller(repo, path):
    with SnapshotWriter(repo, DEV, DeviceRecord(), incremental=False) as w:
        fw = w.open_file("ok/f")
        fw.write(b"data")
        fw.close()
        attempts = [
            lambda: w.open_file(path),
            lambda: w.add_dir(path),
            lambda: w.put_entry(FileEntry(path, 0, 0o100644, 0)),
            lambda: w.copy("ok", path),
            lambda: w.move("ok", path),
        ]
        for attempt in attempts:
            with pytest.raises(UnsafePath):
                attempt()
        assert sorted(w.state) == ["ok/f"]


def test_paths_at_the_limits_are_staged(repo):
    ok = ["é" * 127, "/".join(["d"] * 64), "/".join(["n" * 200] * 5), "a b/c-d_e.f", "ab/ab" + "0" * 38]
    with SnapshotWriter(repo, DEV, DeviceRecord(), incremental=False) as w:
        for p in ok:
            fw = w.open_file(p)
            fw.write(p.encode())
            fw.close()
        rec = w.commit("limits")
    assert rec.stats.files == len(ok)


@pytest.mark.parametrize(("src", "dst"), [("a", "a/b"), ("a", "a/b/c"), ("a", "")])
def test_a_folder_is_never_copied_or_moved_into_itself(repo, src, dst):
    with SnapshotWriter(repo, DEV, DeviceRecord(), incremental=False) as w:
        w.add_dir("a/b")
        w.add_dir("a/c")
        for op in (w.copy, w.move):
            with pytest.raises(UnsafePath):
                op(src, dst)
        assert sorted(w.state) == ["a/b", "a/c"]


def test_a_copy_whose_results_would_be_unsafe_changes_nothing(repo):
    deep = "/".join(["d"] * 63)
    with SnapshotWriter(repo, DEV, DeviceRecord(), incremental=False) as w:
        w.add_dir(f"{deep}/x")
        w.add_dir("d/y")
        before = dict(w.state)
        with pytest.raises(UnsafePath, match="levels deep"):
            w.copy("d", "e/f")
        assert w.state == before


def test_moving_onto_an_ancestor_replaces_it(repo):
    with SnapshotWriter(repo, DEV, DeviceRecord(), incremental=False) as w:
        for p in ("a/b/x", "a/b/y", "a/z"):
            w.add_dir(p)
        assert w.move("a/b", "a") == 2
        assert sorted(w.state) == ["a/x", "a/y"]
        assert w.move("a", "a") == 2
