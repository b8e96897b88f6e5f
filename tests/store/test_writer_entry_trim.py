"""An import's stat-cache hits are looked up in the blob index one chunk at a time (store/writer.py `put_entry`),
and those lookups are trimmed as a stored chunk's are: every TRIM_LOOKUPS the cache's map is unmapped, so a shard
of many reused files (a day-2 import's shard with one changed file, whose other files are each checked) maps a few
hundred lookups' pages, not the shard's. Real LMDB cache, this process's own /proc/self/smaps (Linux only)."""

from __future__ import annotations

import sys

import pytest

from phonevault.store.packs import BlobLocation
from phonevault.store.records import DeviceRecord
from phonevault.store.trees import FileEntry
from phonevault.store.writer import SnapshotWriter

from .test_spilled_trim import mapped

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="resident pages are read from /proc/self/smaps")

LOOKUPS = SnapshotWriter.TRIM_LOOKUPS


def _index(repo, n: int) -> list[bytes]:
    ids = [repo.key.blob_id(b"blob %d" % i) for i in range(n)]
    repo.cache.add_index("index-a", {i: BlobLocation("ab" * 32, k, 100, 90, 0) for k, i in enumerate(ids)})
    return ids


@pytest.mark.parametrize("chunks", [1, 3])
def test_put_entry_lookups_are_unmapped_as_they_go(repo, chunks: int) -> None:
    mdb = (repo.cache.path / "data.mdb").resolve()
    with SnapshotWriter(repo, "udid-trim", DeviceRecord(), incremental=False) as w:
        ids = _index(repo, 40_000)  # after the writer caught the cache up with the vault's (no) index objects
        picks = ids[::7]  # spread over the index, as a shard's files' chunks are
        repo.cache.trim()
        seen, done = [], 0
        for k in range(4 * LOOKUPS):  # 4 or 12 trims
            first = k * chunks
            entry = FileEntry(f"ab/file-{k:05d}", 100, 0o100644, 0, tuple(picks[first : first + chunks]))
            assert w.put_entry(entry)
            done += chunks
            if done % LOOKUPS == 0:
                seen.append(mapped(mdb))  # the trim came with the lookup that made it a multiple
        assert len(seen) >= 3
        assert max(seen) < 256 << 10, seen
        # The same lookups without the writer's trims: what a shard's put_entry calls mapped before.
        repo.cache.trim()
        assert all(repo.cache.lookup(i) is not None for i in picks[: 4 * LOOKUPS])
        assert mapped(mdb) > max(1 << 20, 4 * max(seen)), "the lookups mapped little: the test would show nothing"
    assert repo.cache.notes == []


def test_put_entry_still_refuses_an_unknown_chunk_and_counts_its_lookups(repo) -> None:
    unknown = repo.key.blob_id(b"not stored")
    with SnapshotWriter(repo, "udid-trim", DeviceRecord(), incremental=False) as w:
        ids = _index(repo, 1_000)
        assert not w.put_entry(FileEntry("ab/gone", 100, 0o100644, 0, (ids[0], unknown, ids[1])))
        assert w.get("ab/gone") is None
        assert w._untrimmed == 2  # looked up: the known chunk and the unknown one; not the one after it
        assert w.put_entry(FileEntry("ab/kept", 100, 0o100644, 0, (ids[0], ids[1])))
        assert w.get("ab/kept") is not None
        assert w.stats.reused_files == 1
