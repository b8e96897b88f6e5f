"""The import's reader process: answers in order, as `_read_small` would here, and the import goes on without it;
the progress total from the walk's shards: exact once every shard is listed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.sync.folderwalk import Total, walk
from phonevault.sync.smallreads import ReaderProcess, SmallReads, _read_small


def _files(root: Path, sizes: list[int]) -> list[tuple[str, int]]:
    out = []
    for i, size in enumerate(sizes):
        p = root / f"f{i:04d}"
        p.write_bytes(os.urandom(size))
        out.append((str(p), size))
    return out


def _same(a: list, b: list) -> bool:
    """Results compare as bytes/None, and an OSError by its errno."""
    key = [(type(x).__name__, x.errno if isinstance(x, OSError) else x) for x in a]
    return key == [(type(x).__name__, x.errno if isinstance(x, OSError) else x) for x in b]


def test_batches_are_answered_in_order_as_read_here(tmp_path):
    files = _files(tmp_path, [0, 1, 100, SmallReads.MAX - 1, SmallReads.MAX, SmallReads.MAX + 5, 4096])
    files.append((str(tmp_path / "missing"), 10))  # an OSError, by errno
    grown = tmp_path / "f0006"
    listed = [(p, 10 if p == str(grown) else s) for p, s in files]  # listed smaller than it is: read to its end
    with ReaderProcess() as reader:
        tickets = [reader.submit(listed[i : i + 3]) for i in range(0, len(listed), 3)]
        got = [x for t in tickets for x in reader.result(t)]
    assert _same(got, _read_small(listed))
    assert got[6] == grown.read_bytes() and got[4] is None and got[5] is None
    assert isinstance(got[-1], OSError) and got[-1].strerror


def test_a_discarded_batch_is_dropped_and_the_next_still_answered(tmp_path):
    files = _files(tmp_path, [10, 20, 30, 40])
    with ReaderProcess() as reader:
        first = reader.submit(files[:2])
        second = reader.submit(files[2:])
        reader.discard(first)
        assert _same(reader.result(second), _read_small(files[2:]))


def test_batches_not_answered_when_the_child_dies_are_read_here(tmp_path):
    files = _files(tmp_path, [10, 20, 30, 40, 50])
    with ReaderProcess() as reader:
        first = reader.submit(files[:2])
        assert _same(reader.result(first), _read_small(files[:2]))
        reader._proc.kill()
        reader._proc.wait()
        rest = [reader.submit(files[2:4]), reader.submit(files[4:])]
        assert _same(reader.result(rest[0]) + reader.result(rest[1]), _read_small(files[2:]))


def _regular_bytes(root: Path) -> int:
    """The oracle: the regular files' bytes under `root` (links and other entries not counted)."""
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st_ = os.lstat(os.path.join(dirpath, name))
            total += st_.st_size if stat.S_ISREG(st_.st_mode) else 0
    return total


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 5000), max_size=6), max_size=5),
    st.lists(st.integers(0, 5000), max_size=3),
    st.booleans(),
)
def test_the_total_is_exact_once_every_shard_is_listed(tmp_path_factory, shards, top, link):
    root = tmp_path_factory.mktemp("total")
    for i, sizes in enumerate(shards):
        (root / f"{i:02x}" / "sub").mkdir(parents=True)
        for j, size in enumerate(sizes):
            (root / f"{i:02x}" / ("sub" if j % 2 else "") / f"f{j}").write_bytes(b"x" * size)
    for j, size in enumerate(top):
        (root / f"top{j}").write_bytes(b"y" * size)
    if link:  # a link is no regular file: counted by neither
        (root / "link").symlink_to(root / "top0" if top else root)
    total = Total(root)
    assert total.value() == (None if shards else sum(top))  # nothing listed yet: no estimate but a flat folder's
    for shard, files, _empty in walk(root):
        total.add(shard, files)
        assert total.value() is not None
    assert total.value() == _regular_bytes(root)


def test_the_estimate_takes_the_folders_not_listed_at_the_mean_of_those_listed(tmp_path):
    for i in range(4):
        (tmp_path / f"{i:02x}").mkdir()
        (tmp_path / f"{i:02x}" / "f").write_bytes(b"z" * 100)
    (tmp_path / "Manifest.db").write_bytes(b"m" * 1000)
    total, shards = Total(tmp_path), walk(tmp_path)
    shard, files, _empty = next(shards)
    total.add(shard, files)
    assert total.value() == 1000 + 4 * 100  # one folder of four listed: the other three taken at its 100 bytes


def test_the_child_exits_when_the_import_is_gone(tmp_path):
    """A SIGKILLed import closes the child's stdin: it exits rather than outlive the import."""
    reader = ReaderProcess()
    try:
        reader.submit(_files(tmp_path, [10]))
        reader._proc.stdin.close()
        assert reader._proc.wait(timeout=30) == 0
    finally:
        reader.close()


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=40), st.integers(1, 9), st.integers(1, 50))
def test_small_reads_take_every_file_in_walk_order(tmp_path_factory, sizes, batch, cap):
    root = tmp_path_factory.mktemp("small")
    files = _files(root, sizes)
    window = [0, 0]
    old = SmallReads.BATCH_FILES, SmallReads.WINDOW_FILES
    SmallReads.BATCH_FILES, SmallReads.WINDOW_FILES = batch, cap
    in_flight = []
    try:
        with ReaderProcess() as reader:
            small = SmallReads(reader, [p for p, _ in files], sizes, window)
            got = []
            for i in range(len(files)):
                got.append(small.take(i))
                in_flight.append(window[1])
            small.close()
    finally:
        SmallReads.BATCH_FILES, SmallReads.WINDOW_FILES = old
    assert got == [Path(p).read_bytes() for p, _ in files]
    assert window == [0, 0]
    # asked for ahead: at most the cap, overshot by one batch begun below it
    assert max(in_flight) <= cap + batch - 1
