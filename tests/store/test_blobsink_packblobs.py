"""The blob sink's bounds on what a pack holds per blob (store/blobsink.py): a pack is handed off at `pack_blobs`
blobs even far below its target size, so a pack of small plists does not hold ~60 000 records, ids and locations;
and a pack already written is let go at the next blob put, not kept until the next hand-off.

Oracles: every written pack holds the blobs of its kind in put order, cut every `pack_blobs` (the pack size being
out of reach), whatever the number of packs in flight and of sealing workers; every blob reads back in flight and
written. A written pack's writer is gone (weak reference) and its id listed in `stats.packs` after one more put,
with the next pack far from full. Real LocalBackend vaults, real LMDB caches.
"""

from __future__ import annotations

import gc
import threading
import weakref
from concurrent.futures import wait

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.blobsink import BlobSink
from phonevault.store.packs import DATA, DELTA, TREE
from tests.store.test_pipeline import layout, twin_vaults

CONFIGS = [(1, 0), (3, 0), (1, 2), (3, 3)]  # (pack writes in flight, sealing workers)
DEADLINE_S = 60.0

small = st.lists(
    st.tuples(st.sampled_from([DATA, DATA, TREE, DELTA]), st.binary(max_size=120), st.booleans()),
    max_size=60,
)


def _cut(ids: list[bytes], n: int) -> list[list[bytes]]:
    return [ids[at : at + n] for at in range(0, len(ids), n)]


@settings(max_examples=20, deadline=None)
@given(items=small, pack_blobs=st.integers(1, 9))
def test_packs_are_cut_every_pack_blobs_in_put_order(tmp_path_factory, items, pack_blobs) -> None:
    root = tmp_path_factory.mktemp("packblobs")
    repos = twin_vaults(root, len(CONFIGS))
    try:
        for repo, (writes, sealers) in zip(repos, CONFIGS, strict=True):
            sink = BlobSink(repo, pack_writes=writes, sealers=sealers, pack_blobs=pack_blobs)
            new: dict[bool, list[bytes]] = {True: [], False: []}  # data blobs, tree and delta blobs: in put order
            try:
                ids = []
                for kind, data, compress in items:
                    blob_id, fresh = sink.put(kind, data, compress)
                    ids.append(blob_id)
                    if fresh:
                        new[kind == DATA].append(blob_id)
                assert all(sink.get(i) == it[1] for i, it in zip(ids, items, strict=True))  # open or in flight
                sink.flush()
            finally:
                sink.close()
            assert all(repo.get_blob(i) == it[1] for i, it in zip(ids, items, strict=True))
            packs = [[entry[1] for entry in pack] for pack in layout(repo, sink.stats.packs)]  # by offset
            assert sorted(packs) == sorted(_cut(new[True], pack_blobs) + _cut(new[False], pack_blobs))
    finally:
        for r in repos:
            r.close()


def test_a_written_pack_is_let_go_at_the_next_put(repo) -> None:
    sink = BlobSink(repo, pack_writes=2, sealers=0, pack_blobs=4)
    try:
        first = weakref.ref(sink._writer(DATA))
        # The write waits until the hand-off is checked: a write that ended first was retired at once (flaky).
        gate, write = threading.Event(), sink._write_pack
        sink._write_pack = lambda writer: (gate.wait(DEADLINE_S), write(writer))[1]
        ids = [sink.put(DATA, b"plist %d " % i * 20, True)[0] for i in range(4)]  # the 4th hands the pack off
        assert first() is not None and sink.stats.packs == []
        gate.set()
        done, _ = wait([future for _writer, future in sink._inflight], timeout=DEADLINE_S)
        assert len(done) == 1, "the pack write did not end in time"
        later = sink.put(DATA, b"the next pack's first blob", True)[0]
        gc.collect()
        assert first() is None  # its buffer, records and ids went with it
        assert len(sink.stats.packs) == 1
        assert [repo.locate(i).pack for i in ids] == sink.stats.packs * 4  # found in the index from now on
        assert all(sink.known(i) for i in ids)
        assert sink.get(later) == b"the next pack's first blob"
        sink.flush()
        assert len(sink.stats.packs) == 2
    finally:
        sink.close()
