"""The cache's map is unmapped by what the reads mapped, not by how many there were (`Cache.trim(growth)`,
store/residency.py `Growth`): a trim with a growth budget leaves the map alone until the process's file-backed
resident memory grew that much since the last trim, then unmaps it, as the pack writer's puts (add_index) and an
import's lookups (store/writer.py) do. Real LMDB cache, this process's own /proc/self/smaps (Linux only)."""

from __future__ import annotations

import mmap
import os
import sys

import pytest

from phonevault.store.packs import BlobLocation
from phonevault.store.residency import Growth

from .test_spilled_trim import mapped

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="resident pages are read from /proc/self/statm")


def _index(repo, n: int) -> list[bytes]:
    ids = [repo.key.blob_id(b"blob %d" % i) for i in range(n)]
    repo.cache.add_index("index-a", {i: BlobLocation("ab" * 32, k, 100, 90, 0) for k, i in enumerate(ids)})
    return ids


def test_a_trim_with_a_budget_unmaps_once_the_reads_mapped_that_much(repo) -> None:
    cache = repo.cache
    ids = _index(repo, 30_000)
    mdb = (cache.path / "data.mdb").resolve()
    cache.trim()
    assert mapped(mdb) < 256 << 10
    assert all(cache.lookup(i) is not None for i in ids)  # maps the whole index: several MB
    walked = mapped(mdb)
    assert walked > 2 << 20, "the lookups mapped little: the test would show nothing"
    cache.trim(1 << 30)  # not grown that much: left mapped
    assert mapped(mdb) == walked
    cache.trim(1 << 20)  # grown past 1 MiB since the last trim: unmapped
    assert mapped(mdb) < 256 << 10
    cache.trim(1 << 20)  # nothing grown since: nothing to do, and nothing breaks
    assert cache.lookup(ids[0]) is not None
    assert cache.notes == []


def test_growth_counts_file_backed_pages_as_they_are_mapped(tmp_path) -> None:
    data = tmp_path / "data"
    data.write_bytes(b"x" * (4 << 20))
    growth = Growth()
    growth.reset()
    assert not growth.past(1 << 20)
    with open(data, "rb") as f:
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as view:
            assert sum(view[i] for i in range(0, len(view), 4096)) == ord("x") * 1024  # touches every page
            assert growth.past(2 << 20)
            growth.reset()
            assert not growth.past(2 << 20)


def test_writing_derived_values_leaves_the_map_unmapped(repo) -> None:
    """Writing overflow values maps pages of data.mdb (LMDB looks through its free list for runs of free pages):
    ~7 MB here, 47 MB for a 1 000 000-file import's catalog, its peak RSS. `derived_put_many` unmaps after each
    transaction."""
    cache = repo.cache
    mdb = (cache.path / "data.mdb").resolve()
    for _round in range(4):  # the same keys rewritten: their old pages go to LMDB's free list
        cache.derived_put_many((b"churn %d" % i, os.urandom(300_000)) for i in range(40))
    cache.trim()
    catalog = [(b"catalog %d" % i, os.urandom(330_000)) for i in range(120)]  # 40 MB, 10 transactions
    cache.derived_put_many(catalog)
    assert mapped(mdb) < 2 << 20  # 7 MB before
    assert cache.derived_get(b"catalog 7") == catalog[7][1]
    assert cache.notes == []
