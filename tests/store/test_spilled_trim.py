"""A device backup's commit looks up each shard's tree node and delta blobs in the cache while it pops the spilling
tree's shards (store/spilled.py `SpilledShards.pop`): the pages those lookups map of the index (data.mdb) are
unmapped as the next shard is merged, so what the commit maps does not grow with the index. Real LMDB cache, this
process's own /proc/self/smaps (Linux only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from phonevault.store.packs import BlobLocation
from phonevault.store.spilled import SpillingTree
from phonevault.store.trees import FileEntry

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="resident pages are read from /proc/self/smaps")


def mapped(path: Path) -> int:
    """Resident bytes of this process's maps of `path`."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and not head.endswith(":"):
                inside = line.rstrip("\n").endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1]) * 1024
    return total


def test_the_commits_lookups_are_unmapped_shard_by_shard(repo) -> None:
    ids = [repo.key.blob_id(b"blob %d" % i) for i in range(20_000)]
    repo.cache.add_index("index-a", {i: BlobLocation("ab" * 32, n, 100, 90, 0) for n, i in enumerate(ids)})
    mdb = (repo.cache.path / "data.mdb").resolve()
    tree = SpillingTree(repo.cache, limit=100)
    try:
        for i in range(1000):
            tree.set(FileEntry(f"{i % 256:02x}/file-{i:04d}", i, 0o100644, i, (ids[i],)))
        shards = tree.by_shard()
        seen = []
        for shard in sorted(shards.keys()):
            assert len(shards.pop(shard, [])) in (3, 4)
            seen.append(mapped(mdb))
            assert all(repo.locate(i) is not None for i in ids[::50])  # what a shard's writes look up, and more
        assert mapped(mdb) > max(256 << 10, 4 * max(seen)), "the lookups mapped nothing: the test would show nothing"
        assert max(seen) < 256 << 10  # right after each pop: at most a few pages, not the last shard's lookups
    finally:
        tree.close()
