"""What `check` keeps resident, read from the kernel (/proc/self/pagemap), not from check's own counters.

The walk looks up every chunk of every file in the cache's memory-mapped index (data.mdb). A warm lookup maps a
leaf and a branch page with the kernel's fault-around (64 KiB each), so the pages mapped between two unmappings grow
with the lookups in between, and the index's spread with the vault's files: `Repository.locate_needed` unmaps them
every TRIM_LOOKUPS lookups once file-backed memory grew TRIM_GROWN (store/repository.py), which bounds data.mdb's
resident pages whatever the index's size (store/check.py's docstring).
`check --read-data` holds one pack and one map of its blobs: the pack's index object is compared with its header
as it unpacks, and agrees exactly when its whole decode does.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import tracemalloc

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.check import CheckReport, _read_pack, check
from phonevault.store.index import INDEX_AD, INDEX_FORMAT, decode_index, index_agrees, index_name, write_index
from phonevault.store.packs import DATA, BlobLocation, PackWriter, pack_name, parse_header, seal_blob
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


def packed(repo, n: int, seed: int = 1) -> tuple[str, dict[bytes, BlobLocation]]:
    """A data pack of `n` small blobs, in the vault with its index object (as a blob sink writes them)."""
    rnd, w = random.Random(seed), PackWriter(repo.backend, repo.key)
    for _ in range(n):
        plain = rnd.randbytes(60)
        blob_id = repo.key.blob_id(plain)
        w.add(blob_id, DATA, seal_blob(repo.key, blob_id, plain, False), len(plain))
    pack, locations = w.finish()
    write_index(repo.backend, repo.key, pack, locations)
    return pack, locations


def test_reading_a_pack_of_many_blobs_holds_one_map_of_them(repo):
    """A pack of PACK_BLOBS small blobs (a many-file phone's): its header's map is held while its blobs are read,
    and its index object is compared with it as it unpacks, not decoded into a second map (~3 MB more here)."""
    pack, _ = packed(repo, 16_384)
    data = repo.backend.get(pack_name(pack))
    tracemalloc.start()
    try:
        parse_header(repo.key, pack, data, len(data))
        header = tracemalloc.get_traced_memory()[1]  # the header's msgpack rows and its map
        tracemalloc.reset_peak()
        rep = CheckReport()
        _read_pack(repo, pack, len(data), rep, {})
        reading = tracemalloc.get_traced_memory()[1] - len(data)  # less the pack's bytes
    finally:
        tracemalloc.stop()
    assert rep.errors == [] and rep.blobs_checked == 16_384
    assert reading < 1.2 * header, (reading, header)  # 1.0 x; with the index decoded whole as well, 1.6 x


edits = st.lists(
    st.tuples(st.sampled_from(["swap", "twice", "drop", "offset", "type", "pack", "extra"]), st.integers(0, 5)),
    max_size=3,
)


@given(edits)
@settings(max_examples=60)
def test_an_index_agrees_with_its_header_exactly_when_its_whole_decode_does(make_repo, changes):
    repo = make_repo(f"v{os.urandom(4).hex()}")
    pack, header = packed(repo, 6)
    rows = [[bid, loc.type, loc.offset, loc.length, loc.raw_length] for bid, loc in header.items()]
    pack_id = pack
    for what, i in changes:
        i %= len(rows) or 1
        if not rows:
            break
        if what == "swap":
            rows[i], rows[-1] = rows[-1], rows[i]
        elif what == "twice":
            rows[(i + 1) % len(rows)] = list(rows[i])
        elif what == "drop":
            del rows[i]
        elif what == "offset":
            rows[i][2] += 1
        elif what == "type":
            rows[i][1] ^= 1
        elif what == "pack":
            pack_id = "0" * len(pack)
        else:
            rows.append([os.urandom(32), DATA, 10**6, 10, 10])
    name = index_name(pack)
    repo.backend.delete(name)
    repo.backend.put(name, repo.key.seal(msgpack.packb([INDEX_FORMAT, pack_id, rows]), INDEX_AD))
    assert index_agrees(repo.key, repo.backend, pack, header) == (
        decode_index(repo.key, name, repo.backend.get(name)) == header
    )
