"""A shard listed ahead is held packed (sync/folderwalk.py `_Packed`): handed out, it is the same (name, Stat) list as
the files' lstat gives, for any stat values a file system can report (inodes past 2**63, mtimes before 1970)."""

from __future__ import annotations

import os
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonevault.sync.folderwalk import Stat, _Names, _Packed, _walk_shard

I64 = st.integers(-(2**63), 2**63 - 1)
stats = st.builds(Stat, st.integers(0, 2**63 - 1), st.integers(0, 0o177777), I64, st.integers(0, 2**64 - 1), I64)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=20), stats), max_size=50))
def test_packed_files_unpack_as_listed(files):
    packed = _Packed(_Names(), array("q"), array("Q"))
    for name, s in files:
        packed.names.append(name)
        packed.fields.extend((s.st_size, s.st_mode, s.st_mtime_ns, s.st_ctime_ns))
        packed.inodes.append(s.st_ino)
    got = packed.unpacked()
    assert got == files
    assert all(type(s) is Stat for _n, s in got)


# Any str a listing can hold: os.scandir gives bytes that are not UTF-8 as lone surrogates (U+DC80..U+DCFF).
names = st.text(st.characters(blacklist_categories=()) | st.sampled_from("\udc80\udcff\ud800/"), max_size=12)


@given(st.lists(names, max_size=40))
def test_names_give_back_what_was_appended(want):
    got = _Names()
    for name in want:
        got.append(name)
    assert len(got) == len(want)
    assert list(got) == want
    assert [got[i] for i in range(len(want))] == want
    assert [got[-i] for i in range(1, len(want) + 1)] == [want[-i] for i in range(1, len(want) + 1)]
    for past in (len(want), -len(want) - 1):
        with pytest.raises(IndexError):
            got[past]


def test_a_listed_shard_unpacks_as_lstat_gives(tmp_path):
    (tmp_path / "ab" / "deep").mkdir(parents=True)
    for rel in ("ab/one", "ab/two", "ab/deep/three"):
        (tmp_path / rel).write_bytes(rel.encode())
    os.utime(tmp_path / "ab/two", ns=(0, -1_000_000_123))  # before 1970
    (name, files, empty_dirs), empty_top = _walk_shard(tmp_path, "ab")
    assert (name, empty_dirs, empty_top) == ("ab", [], None)
    want = [(rel, Stat.of(os.lstat(tmp_path / rel))) for rel in ("ab/one", "ab/two", "ab/deep/three")]
    assert files.unpacked() == want
