"""A snapshot's added/modified/removed counts agree with `diff`: a file is modified when its bytes differ, and the
same bytes with another mtime or mode (a restore, then the next backup, rewrites every file) are not."""

from phonevault.store.records import DeviceRecord
from phonevault.store.writer import SnapshotWriter


def commit(repo, files: dict[str, tuple[bytes, int, int]], incremental: bool):
    with SnapshotWriter(repo, "00008030-STATS", DeviceRecord("Ada's iPhone"), incremental=incremental) as w:
        for path, (data, mode, mtime) in files.items():
            fw = w.open_file(path, mode, mtime)
            fw.write(data)
            fw.close()
        return w.commit("test")


def test_only_a_change_of_bytes_counts_as_modified(repo):
    day0 = {f"ab/{i:040x}": (f"file {i}".encode() * 50, 0o100644, 10**18 + i) for i in range(6)}
    commit(repo, day0, incremental=False)
    day1 = dict(day0)
    for path in list(day1)[:3]:  # rewritten in place: new mtimes and one new mode, same bytes
        data, _mode, mtime = day1[path]
        day1[path] = (data, 0o100600, mtime + 10**9)
    changed = list(day1)[3]
    day1[changed] = (b"new bytes", 0o100644, day1[changed][2] + 10**9)
    day1["cd/" + "f" * 40] = (b"added", 0o100644, 1)
    del day1[list(day1)[4]]
    stats = commit(repo, day1, incremental=False).stats
    assert (stats.added, stats.modified, stats.removed) == (1, 1, 1)
