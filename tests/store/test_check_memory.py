"""What `check` keeps resident, read from the kernel (/proc/self/pagemap), not from check's own counters.

The walk looks up every chunk of every file in the cache's memory-mapped index (data.mdb). A warm lookup maps a
leaf and a branch page with the kernel's fault-around (64 KiB each), so the pages mapped between two unmappings grow
with the lookups in between, and the index's spread with the vault's files: check unmaps them every CHECK_TRIM
lookups, which bounds data.mdb's resident pages whatever the index's size (store/check.py's docstring).
"""

from __future__ import annotations

import os
import struct
import sys

import pytest

from phonevault.store.check import check
from phonevault.store.packs import DATA, BlobLocation
from phonevault.store.records import DeviceRecord
from phonevault.store.residency import find_map
from phonevault.store.writer import SnapshotWriter

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/pagemap")
PAGE = os.sysconf("SC_PAGE_SIZE")


def resident(span: tuple[int, int]) -> int:
    """Bytes of the pages of `span` mapped in this process (/proc/self/pagemap: bit 63 of a page's entry)."""
    start, end = span
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(start // PAGE * 8)
        entries = f.read((end - start) // PAGE * 8)
    return sum(1 for (e,) in struct.iter_unpack("<Q", entries) if e >> 63) * PAGE


@linux_only
def test_the_walk_keeps_little_of_the_index_mapped_however_large_it_is(repo):
    with SnapshotWriter(repo, "udid-check-memory", DeviceRecord("phone"), incremental=False) as w:
        for i in range(1200):
            fw = w.open_file(f"{i % 4:02x}/{i}")
            fw.write(os.urandom(40))
            fw.close()
        w.commit("day 0")
    # A vault of many files: 80 000 more blobs in the index (in a real pack, under a real index object's name, so
    # sync_index keeps them), which spread the snapshot's 1 200 chunks over ~20 MB of data.mdb.
    name = next(n for n, _ in repo.backend.list("index/"))
    pack = repo.locate(next(iter(repo.view(repo.device_keys()[0]).live())).tree).pack
    repo.cache.add_index(name, {os.urandom(32): BlobLocation(pack, 0, 40, 40, DATA) for _ in range(80_000)})
    mdb = os.path.realpath(repo.cache.path / "data.mdb")
    assert os.path.getsize(mdb) > 16 << 20
    start, end = find_map(mdb)
    span = (start, start + os.path.getsize(mdb))
    most = 0
    lookup = repo.cache.lookup

    def measured(blob_id: bytes):
        nonlocal most
        found = lookup(blob_id)
        most = max(most, resident(span))
        return found

    repo.cache.lookup = measured
    repo.cache.trim()
    report = check(repo)
    assert report.ok, report.errors
    # ~5 MB here between two unmappings; unmapped every 128 lookups only (locate_needed's own trim), ~12 MB
    assert 0 < most < 8 << 20, most
