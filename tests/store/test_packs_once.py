"""A written pack's entries are packed once, from its records: the pack header, the index object and the cache's
locations must be exactly what the lists and maps built per blob gave before (the old construction is the oracle),
and writing a pack of PACK_BLOBS small blobs must not build a Python object per blob (tracemalloc bound). A pack's
blobs are found by id through PackLocations' own table, which must answer as a dict of id -> last record does."""

from __future__ import annotations

import random
import tracemalloc

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.backends.memory import MemoryBackend
from phonevault.store.blobsink import PACK_BLOBS
from phonevault.store.crypto import MasterKey
from phonevault.store.index import INDEX_AD, RECORD, decode_index, index_name, write_index
from phonevault.store.packs import (
    DATA,
    DELTA,
    HEADER_AD,
    PACK_FORMAT,
    TRAILER,
    TREE,
    BlobLocation,
    PackLocations,
    PackWriter,
    pack_entries,
    pack_name,
    seal_blob,
)

KEY = MasterKey(bytes(range(32)))
U64 = st.integers(0, 2**64 - 1)
rows = st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 255), U64, U64, U64), max_size=40)


@given(rows)
def test_pack_entries_is_packb_of_the_list_of_lists(entries):
    assert pack_entries(iter(entries), len(entries)) == msgpack.packb([list(e) for e in entries])


# a pack's blobs: (index of an id in a small pool, so ids repeat now and then; type; plaintext size; raw length)
blobs = st.lists(
    st.tuples(st.integers(0, 30), st.sampled_from([DATA, TREE, DELTA]), st.integers(0, 3000), U64),
    min_size=1,
    max_size=60,
)


def old_write(records: list[tuple[bytes, int, int, int, int]], pack_id: str) -> tuple[bytes, bytes, dict]:
    """The header and index plaintexts and the locations as PackWriter.finish and write_index made them before."""
    entries = [[bid, typ, off, length, raw] for bid, typ, off, length, raw in records]
    locations = {e[0]: BlobLocation(pack_id, e[2], e[3], e[4], e[1]) for e in entries}
    index = [[bid, loc.type, loc.offset, loc.length, loc.raw_length] for bid, loc in locations.items()]
    return msgpack.packb([PACK_FORMAT, entries]), msgpack.packb([1, pack_id, index]), locations


def written(backend, pack: list[tuple[int, int, int, int]], seed: int):
    rnd = random.Random(seed)
    pool = [rnd.randbytes(3000) for _ in range(31)]
    w, records = PackWriter(backend, KEY), []
    for i, typ, size, raw in pack:
        plain = pool[i][:size]
        blob_id = KEY.blob_id(plain)
        sealed = seal_blob(KEY, blob_id, plain, compress=i % 2 == 0)
        records.append((blob_id, typ, w.size, len(sealed), raw))
        w.add(blob_id, typ, sealed, raw)
    pack_id, locations = w.finish()
    return pack_id, locations, records


@settings(max_examples=80)
@given(blobs, st.integers(0, 2**32))
def test_header_index_and_locations_are_those_of_the_old_construction(pack, seed):
    backend = MemoryBackend()
    pack_id, locations, records = written(backend, pack, seed)
    header, index, old_locations = old_write(records, pack_id)
    data = backend.get(pack_name(pack_id))
    hlen = TRAILER.unpack(data[-TRAILER.size :])[0]
    assert KEY.open(data[-TRAILER.size - hlen : -TRAILER.size], HEADER_AD, "header") == header
    name = write_index(backend, KEY, pack_id, locations)
    assert KEY.open(backend.get(name), INDEX_AD, name) == index
    # the map a caller sees: the same pairs in the same order, whatever its type (a plain map if an id came twice)
    assert list(locations.items()) == list(old_locations.items())
    assert list(locations) == list(old_locations) and len(locations) == len(old_locations)
    assert locations == old_locations and decode_index(KEY, name, backend.get(name)) == old_locations
    for bid, loc in old_locations.items():
        assert locations[bid] == loc and bid in locations
    # a map that is not a written pack's (a header read back: repair) is packed in its order, as before
    write_index(backend, KEY, pack_id, dict(old_locations))
    assert KEY.open(backend.get(name), INDEX_AD, name) == index


@settings(max_examples=40)
@given(blobs, st.integers(0, 2**32))
def test_pack_locations_by_id_is_the_rows_sorted(pack, seed):
    pack_id, locations, records = written(MemoryBackend(), pack, seed)
    if isinstance(locations, PackLocations):
        assert list(locations.by_id()) == sorted(records)


def test_an_id_is_found_only_where_a_record_starts():
    pack_id, locations, records = written(MemoryBackend(), [(n, DATA, 100 + n, n) for n in range(5)], 1)
    assert isinstance(locations, PackLocations)
    inside = b"".join(RECORD.pack(*r) for r in records)[40:72]  # 32 bytes of the records that are no record's id
    assert inside not in locations and locations.get(inside) is None and locations.get(b"short") is None


def test_the_cache_holds_the_same_locations_from_a_written_pack_as_from_a_map(make_repo):
    a, b = make_repo("a"), make_repo("b")
    rnd, w = random.Random(5), PackWriter(a.backend, a.key)
    for n in range(3000):  # past INDEX_BATCH: several transactions
        plain = rnd.randbytes(50 + n % 7)
        blob_id = a.key.blob_id(plain)
        w.add(blob_id, [DATA, TREE][n % 2], seal_blob(a.key, blob_id, plain, False), len(plain) + 2**40)
    pack_id, locations = w.finish()
    assert isinstance(locations, PackLocations)
    a.cache.add_index(index_name(pack_id), locations)
    b.cache.add_index(index_name(pack_id), dict(locations.items()))
    for blob_id, loc in locations.items():
        assert a.cache.lookup(blob_id) == loc == b.cache.lookup(blob_id)
    assert a.cache.index_plan([index_name(pack_id)]) == ([], False)


def test_writing_a_pack_of_many_small_blobs_builds_no_object_per_blob(repo):
    """finish, its index object and its cache load, as a blob sink's pack-writing thread runs them, for PACK_BLOBS
    blobs: ~100 bytes a blob at the peak (the packed entries, the sealed header, the sealed index: ~45 each, never
    all three at once); ~470 when the entries were built as lists, then as a map, then again, then sorted."""
    rnd, w = random.Random(7), PackWriter(repo.backend, repo.key)
    for _ in range(PACK_BLOBS):
        plain = rnd.randbytes(240)
        blob_id = repo.key.blob_id(plain)
        w.add(blob_id, DATA, seal_blob(repo.key, blob_id, plain, False), len(plain))
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        pack_id, locations = w.finish()
        repo.cache.add_index(write_index(repo.backend, repo.key, pack_id, locations), locations)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert peak < 150 * PACK_BLOBS, peak / PACK_BLOBS
    assert repo.cache.lookup(next(iter(locations))) is not None


# ids drawn from few 8-byte prefixes, so that many share a first slot and probe past each other
ids = st.builds(
    lambda p, t: p + t, st.sampled_from([bytes(8), b"\xff" * 8, b"a" * 8]), st.binary(min_size=24, max_size=24)
)


@settings(max_examples=60)
@given(st.lists(st.tuples(ids, st.integers(0, 2), U64), max_size=300), st.lists(ids, max_size=20))
def test_pack_locations_find_a_blob_as_a_dict_of_its_last_record_does(added, others):
    locations, model, rows = PackLocations(), {}, []
    for n, (blob_id, typ, raw) in enumerate(added):
        locations.add(blob_id, typ, n, n + 1, raw)
        model[blob_id] = (blob_id, typ, n, n + 1, raw)
        rows.append(model[blob_id])
        assert len(locations) == len(model) and locations.records == len(rows)
    for blob_id in list(model) + others:
        assert locations.row(blob_id) == model.get(blob_id)
        assert (blob_id in locations) == (blob_id in model)
    assert list(locations.rows()) == rows
    assert dict(locations.items()) == {b: BlobLocation("", r[2], r[3], r[4], r[1]) for b, r in model.items()}
    assert "text" not in locations and locations.get(b"short") is None


def test_a_pack_being_filled_holds_no_object_per_blob(repo):
    """A PackWriter of PACK_BLOBS small blobs, their ids and sealed bytes let go by the caller as a blob sink does: its
    records and id table, ~73-89 bytes a blob beside its bytes; ~195 with a dict of id -> record number."""
    rnd = random.Random(8)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        w = PackWriter(repo.backend, repo.key)
        for _ in range(PACK_BLOBS):
            plain = rnd.randbytes(240)
            blob_id = repo.key.blob_id(plain)
            w.add(blob_id, DATA, seal_blob(repo.key, blob_id, plain, False), len(plain))
        del plain, blob_id
        w._settle()  # the last stage handed to the appending thread (≤ 1 MiB) is written and let go
        held = tracemalloc.get_traced_memory()[0] - start - len(w._buf)  # less its bytes not yet written out
    finally:
        tracemalloc.stop()
    assert held < 100 * PACK_BLOBS, held / PACK_BLOBS
    w.finish()
