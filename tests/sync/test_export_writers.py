"""Export's small-file writers (sync/writeout.py `FileWriters`): on two threads, a folder's files are written by one
writer at a time (two writers creating in one folder queue on its lock), the next folder goes to the writer with
less to do, and every file reads back with its bytes, mode and mtime whatever the order of folders."""

from __future__ import annotations

import os
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phonevault.store.trees import FileEntry
from phonevault.sync.writeout import FileWriters


class Watched(FileWriters):
    """FileWriters that records, for each bundle it writes, which thread wrote which folder and what else was being
    written at the same moment (the real files are written as usual)."""

    def __init__(self, writers: int) -> None:
        self.lock = threading.Lock()
        self.busy: dict[str, str] = {}  # thread -> folder it is writing now
        self.clashes: list[str] = []  # folders two threads wrote at once
        self.threads_of: dict[str, set[str]] = {}
        super().__init__(writers)

    def _write(self, bundle):
        folder = os.path.dirname(bundle[0][0])
        me = threading.current_thread().name
        assert all(os.path.dirname(p) == folder for p, *_ in bundle)  # a bundle holds one folder's files
        with self.lock:
            if folder in self.busy.values():
                self.clashes.append(folder)
            self.busy[me] = folder
            self.threads_of.setdefault(folder, set()).add(me)
        try:
            super()._write(bundle)
        finally:
            with self.lock:
                del self.busy[me]


FILES = st.lists(
    st.tuples(st.integers(0, 4), st.binary(max_size=2000), st.sampled_from([0o644, 0o600, 0o4755, 0o000])),
    min_size=1,
    max_size=400,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=FILES, writers=st.sampled_from([0, 1, 2, 3]))
def test_files_of_many_folders_read_back_and_no_folder_is_written_by_two_threads_at_once(
    tmp_path_factory, files, writers
):
    root = tmp_path_factory.mktemp("w")
    for d in range(5):
        (root / f"d{d}").mkdir()
    with Watched(writers) as w:
        for i, (d, data, mode) in enumerate(files):
            e = FileEntry(path=f"d{d}/f{i}", size=len(data), mode=0o100000 | mode, mtime_ns=i * 1000 + 7, chunks=())
            w.submit(str(root / e.path), e, data)
    assert w.clashes == []
    for i, (d, data, mode) in enumerate(files):
        p = root / f"d{d}" / f"f{i}"
        st_ = os.stat(p)
        assert p.read_bytes() == data
        assert (st_.st_mode & 0o7777, st_.st_mtime_ns) == (mode, i * 1000 + 7)


def test_folders_in_turn_are_written_by_both_writers(tmp_path):
    """A snapshot's shards come a folder at a time: each folder's files go to one writer, and with the first still
    busy the next folder goes to the other, so both create files at once in different folders."""
    folders = [f"{i:02x}" for i in range(16)]
    with Watched(2) as w:
        for f in folders:
            (tmp_path / f).mkdir()
            for i in range(3 * FileWriters.BUNDLE_FILES):
                e = FileEntry(path=f"{f}/{i}", size=100, mode=0o100644, mtime_ns=0, chunks=())
                w.submit(str(tmp_path / e.path), e, b"x" * 100)
    assert w.clashes == []
    assert {name for names in w.threads_of.values() for name in names} == {"export-0", "export-1"}
    assert sorted(len(os.listdir(tmp_path / f)) for f in folders) == [3 * FileWriters.BUNDLE_FILES] * 16
