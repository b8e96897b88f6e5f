"""An import plans and stages a shard from its packed listing (sync/folderwalk.py `_Packed`, `Paths`): a file's
(name, Stat), size and full path made on demand are those of the unpacked list, for any stat values a file system can
report and any choice of files."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from phonevault.sync.folderwalk import Paths, Stat, _Packed, walk

I64 = st.integers(-(2**63), 2**63 - 1)
stats = st.builds(Stat, st.integers(0, 2**63 - 1), st.integers(0, 0o177777), I64, st.integers(0, 2**64 - 1), I64)
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@given(st.lists(st.tuples(names, stats), max_size=40), st.data())
def test_packed_files_on_demand_are_the_unpacked_list(files, data):
    packed = _Packed.of(files)
    assert len(packed) == len(files)
    assert list(packed) == files == packed.unpacked()
    assert [packed[i] for i in range(len(files))] == files
    assert all(type(s) is Stat for _n, s in packed)
    assert list(packed.sizes()) == [(n, s.st_size) for n, s in files]
    picked = data.draw(st.lists(st.integers(0, max(len(files) - 1, 0)), max_size=len(files))) if files else []
    assert list(packed.sizes_at(picked)) == [files[i][1].st_size for i in picked]
    paths = Paths("/base" + os.sep, packed, picked)
    assert len(paths) == len(picked)
    assert [paths[n] for n in range(len(picked))] == [
        "/base" + os.sep + files[i][0].replace("/", os.sep) for i in picked
    ]


def test_walk_packed_gives_what_walk_gives(tmp_path):
    for rel in ("ab/one", "ab/deep/two", "cd/three", "top.plist"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    (tmp_path / "ef").mkdir()
    plain = list(walk(tmp_path))
    packed = list(walk(tmp_path, packed=True))
    assert [(s, list(f), e) for s, f, e in packed] == plain
    assert all(isinstance(f, _Packed) for _s, f, _e in packed)
