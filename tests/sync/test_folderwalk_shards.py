"""The import's walk lists each top-level folder on its own (several at once on a pool's threads) and must give what
one os.walk of the whole folder gives: the same shards in the same order, the same entries and empty folders, the
top level last. The oracle is that single walk, as the import did it before the folders were listed apart."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.sync.folderwalk import FileAhead, Stat, walk


def _one_walk(folder: Path) -> list:
    """One os.walk of the whole folder, shard by shard (the import's walk before it listed folders apart)."""
    out, top = [], ([], [])
    shard, files, empty_dirs = "", [], []
    for dirpath, dirs, names in os.walk(folder):
        for link in [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            dirs.remove(link)
            names.append(link)
        dirs.sort()
        rel_dir = os.path.relpath(dirpath, folder).replace(os.sep, "/")
        prefix = "" if rel_dir == "." else rel_dir + "/"
        here = rel_dir.partition("/")[0] if prefix else ""
        if here != shard and shard:
            out.append((shard, files, empty_dirs))
            files, empty_dirs = [], []
        shard = here
        into = top if not shard else (files, empty_dirs)
        if not dirs and not names and prefix:
            (top if "/" not in rel_dir else into)[1].append((rel_dir, Stat.of(os.stat(dirpath))))
        for name in sorted(names):
            into[0].append((prefix + name, Stat.of(os.lstat(os.path.join(dirpath, name)))))
    if shard:
        out.append((shard, files, empty_dirs))
    out.append(("", top[0], sorted(top[1])))
    return out


# A folder: top-level files, then per top-level folder a list of (subfolder depth, file count), an empty one, a link.
_tree = st.tuples(
    st.integers(0, 3),
    st.lists(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), max_size=3), max_size=7),
    st.booleans(),
    st.booleans(),
)


def _make(root: Path, tree) -> None:
    top, folders, link_top, link_inner = tree
    for i in range(top):
        (root / f"top{i}").write_bytes(b"t" * i)
    for f, parts in enumerate(folders):
        shard = root / f"{f * 37 % 256:02x}"  # not created in sorted order
        shard.mkdir()
        for p, (depth, count) in enumerate(parts):
            d = shard.joinpath(*[f"s{p}{k}" for k in range(depth)])
            d.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                (d / f"f{j}").write_bytes(b"x" * j)
        if link_inner and parts:
            (shard / "link").symlink_to(root)
    if link_top:
        (root / "zz-link").symlink_to(root)


@settings(max_examples=60, deadline=None)
@given(_tree, st.integers(1, 4))
def test_the_walk_lists_what_one_walk_of_the_folder_lists(tmp_path_factory, tree, ahead):
    root = tmp_path_factory.mktemp("walk")
    _make(root, tree)
    expected = _one_walk(root)
    assert list(walk(root)) == expected
    with ThreadPoolExecutor(ahead) as pool:
        assert list(walk(root, pool, ahead)) == expected


def test_a_walk_left_early_ends_with_its_pool(tmp_path):
    for i in range(20):
        (tmp_path / f"{i:02x}").mkdir()
        (tmp_path / f"{i:02x}" / "f").write_bytes(b"z")
    with ThreadPoolExecutor(2) as pool:
        shards = walk(tmp_path, pool, 4)
        assert next(shards)[0] == "00"
        shards.close()  # an import that failed: the shards asked for are cancelled or finish, nothing hangs
    assert next(walk(tmp_path))[0] == "00"


def test_file_ahead_reads_a_file_in_steps_and_ignores_what_it_cannot_open(tmp_path, monkeypatch):
    data = tmp_path / "data.mdb"
    data.write_bytes(os.urandom(10_000))
    monkeypatch.setattr(FileAhead, "STEP", 4096)  # three advices
    with FileAhead(data):
        pass
    with FileAhead(tmp_path / "missing"), FileAhead(tmp_path):  # no such file; a folder: no error, nothing read
        pass
    assert data.stat().st_size == 10_000
