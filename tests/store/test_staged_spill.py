"""The spilling staged tree (store/spilled.py) against a plain dict oracle and the in-memory StagedTree: any sequence
of set/remove/move/copy/drop_nonempty_dirs, with reads between, gives the same entries, counts and listings, however
small its memory limit (it spills after every few entries, so most operations merge sealed batches back). Real
cache, real sealed spool files."""

from __future__ import annotations

import os
import stat
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.errors import UnsafePath
from phonevault.store.spilled import SpillingTree
from phonevault.store.staged import StagedTree
from phonevault.store.trees import FileEntry

paths = st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=3).map("/".join)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("set"), paths, st.booleans(), st.integers(0, 9)),
        st.tuples(st.just("remove"), st.one_of(paths, st.just(""))),
        st.tuples(st.just("move"), paths, paths),
        st.tuples(st.just("copy"), paths, paths),
        st.tuples(st.just("drop")),
        st.tuples(st.just("read"), st.one_of(paths, st.just(""))),
    ),
    max_size=40,
)


def entry(path: str, is_dir: bool, n: int) -> FileEntry:
    if is_dir:
        return FileEntry(path, 0, stat.S_IFDIR | 0o755, n)
    return FileEntry(path, n, 0o100644, n, (bytes([n]) * 32,))


def below(p: str, path: str) -> bool:
    return p == path or p.startswith(path + "/")


class Oracle:
    """What the staged tree means, as a dict: subtrees by prefix, nothing else."""

    def __init__(self) -> None:
        self.d: dict[str, FileEntry] = {}

    def remove(self, path: str) -> int:
        gone = [p for p in self.d if not path or below(p, path)]
        for p in gone:
            del self.d[p]
        return len(gone)

    def _relocated(self, src: str, dst: str) -> list[FileEntry]:
        if not src or not dst or dst.startswith(src + "/"):
            raise UnsafePath(dst, src, "refused")
        return [replace(e, path=dst + p[len(src) :]) for p, e in self.d.items() if below(p, src)]

    def move(self, src: str, dst: str) -> int:
        if src == dst:
            return sum(below(p, src) for p in self.d)
        moved = self._relocated(src, dst)
        if moved:
            self.remove(src)
            self.remove(dst)
            self.d.update((e.path, e) for e in moved)
        return len(moved)

    def copy(self, src: str, dst: str) -> int:
        if src == dst:
            raise UnsafePath(dst, src, "refused")
        copied = self._relocated(src, dst)
        self.d.update((e.path, e) for e in copied)
        return len(copied)

    def drop(self) -> None:
        for p in [p for p, e in self.d.items() if e.is_dir and any(q.startswith(p + "/") for q in self.d)]:
            del self.d[p]


def outcome(f, *args):
    try:
        return f(*args)
    except UnsafePath:
        return "refused"


@given(ops=ops, limit=st.integers(1, 6), base=st.lists(st.tuples(paths, st.booleans(), st.integers(0, 9))))
@settings(max_examples=300)
def test_a_spilling_tree_is_the_dict_oracle_and_the_staged_tree(repo, ops, limit, base):
    """`base`: the starting content (a parent snapshot's), given to the spilling tree as a reader per shard."""
    oracle, plain = Oracle(), StagedTree()
    for args in base:
        e = entry(*args)
        oracle.d[e.path] = e
        plain.set(e)
    shards: dict[str, list[FileEntry]] = {}
    for e in oracle.d.values():
        shards.setdefault(e.path.partition("/")[0] if "/" in e.path else "", []).append(e)
    readers = {s: (lambda es=es: iter(es)) for s, es in shards.items()}
    spilled = SpillingTree(repo.cache, limit=limit, base=readers)
    try:
        assert dict(spilled.state.items()) == oracle.d and len(spilled) == len(oracle.d)
        for op in ops:
            kind, args = op[0], op[1:]
            if kind == "set":
                e = entry(*args)
                oracle.d[e.path] = e
                plain.set(e)
                spilled.set(e)
            elif kind == "drop":
                oracle.drop()
                plain.drop_nonempty_dirs()
                spilled.drop_nonempty_dirs()
            elif kind == "read":
                (path,) = args
                assert spilled.get(path) == oracle.d.get(path) if path else True
                assert spilled.count(path, 10**6) == plain.count(path, 10**6)
                assert spilled.children(path) == plain.children(path)
            else:
                want = outcome(getattr(oracle, kind), *args)
                assert outcome(getattr(plain, kind), *args) == want
                assert outcome(getattr(spilled, kind), *args) == want
            assert plain.state == oracle.d
            assert dict(spilled.state.items()) == oracle.d
            assert len(spilled) == len(spilled.state) == len(oracle.d)
        by_shard = spilled.by_shard()
        shards = by_shard.keys()
        assert shards == {p.partition("/")[0] if "/" in p else "" for p in oracle.d}
        taken = {e.path: e for s in sorted(shards) for e in by_shard.pop(s, [])}
        assert taken == oracle.d and len(spilled) == 0
    finally:
        spilled.close()


def test_a_large_tree_spills_and_reads_back_sealed(repo):
    """10 000 entries with a limit of 1 000: at most the limit is in memory; every lookup, a move of a whole shard
    and the commit's shards read back what was staged; the spool holds no path in plaintext."""
    tree = SpillingTree(repo.cache, limit=1000)
    want = {}
    for i in range(10_000):
        e = FileEntry(f"{i % 256:02x}/file-{i:05d}-private", i, 0o100644, i, (i.to_bytes(32, "big"),))
        tree.set(e)
        want[e.path] = e
        assert len(tree._mem) <= 1000
    raw = os.pread(tree._spool._file.fileno(), 1 << 26, 0)  # the spool, unlinked: read through its descriptor
    assert len(raw) > 100_000 and b"private" not in raw
    assert all(tree.state[p] == e for p, e in list(want.items())[::97])
    assert "zz/nothing" not in tree.state
    assert tree.move("07", "moved") == 40
    for p in [p for p in want if p.startswith("07/")]:
        e = want.pop(p)
        want["moved" + p[2:]] = replace(e, path="moved" + p[2:])
    assert len(tree) == len(want)
    by_shard = tree.by_shard()
    got = {}
    for shard in sorted(by_shard.keys()):
        got.update((e.path, e) for e in by_shard.pop(shard, []))
    assert got == want
    tree.close()


def test_a_path_below_a_file_is_refused_as_before(repo):
    tree = SpillingTree(repo.cache, limit=1)
    with pytest.raises(UnsafePath):
        tree.set(FileEntry("a/../b", 1, 0o100644, 0))
    tree.close()
