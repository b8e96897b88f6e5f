"""The import's reader process: answers in order, as `_read_small` would here, and the import goes on without it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.sync.folderwalk import folder_bytes
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
        reader.start_total(tmp_path)
        assert reader.total() == folder_bytes(tmp_path)  # counted here instead


def test_the_total_is_counted_while_batches_are_read(tmp_path):
    (tmp_path / "sub").mkdir()
    files = _files(tmp_path / "sub", [100, 2000])
    with ReaderProcess() as reader:
        reader.start_total(tmp_path)
        ticket = reader.submit(files)
        deadline = time.monotonic() + 30
        while reader.total() is None and time.monotonic() < deadline:
            reader._pump(block=True)  # wait on the pipe itself, not on a timer
        assert reader.total() == folder_bytes(tmp_path) == 2100
        assert _same(reader.result(ticket), _read_small(files))


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
@given(st.lists(st.integers(0, 3000), min_size=1, max_size=40), st.integers(1, 9))
def test_small_reads_take_every_file_in_walk_order(tmp_path_factory, sizes, batch):
    root = tmp_path_factory.mktemp("small")
    files = _files(root, sizes)
    window = [0]
    old = SmallReads.BATCH_FILES
    SmallReads.BATCH_FILES = batch
    try:
        with ReaderProcess() as reader:
            small = SmallReads(reader, [p for p, _ in files], sizes, window)
            got = [small.take(i) for i in range(len(files))]
            small.close()
    finally:
        SmallReads.BATCH_FILES = old
    assert got == [Path(p).read_bytes() for p, _ in files]
    assert window == [0]
