"""The sealing queue's bound (store/blobsink.py SEAL_QUEUE_BYTES): after every `put` the plaintext waiting for or in
sealing is at most SEAL_QUEUE_BYTES plus the blob just put, whatever the blob sizes (media-sized chunks, up to the
coarse maximum, among small ones) and the number of sealing workers; and the bound changes nothing the sink writes:
the same pack layouts as with no workers at all (no queue), every blob read back in flight and once written. Real
LocalBackend vaults and LMDB caches (tests/store/test_pipeline.py's twins and layouts)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.blobsink import SEAL_QUEUE_BYTES, BlobSink
from phonevault.store.chunker import COARSE
from phonevault.store.packs import DATA, TARGET_PACK_SIZE
from tests.store.test_pipeline import layout, twin_vaults

sizes = st.lists(
    st.sampled_from([100, 5000, 256 << 10, 1 << 20, 3 << 20, SEAL_QUEUE_BYTES, COARSE.max_size]), min_size=1, max_size=8
)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32), sizes=sizes)
def test_the_queue_holds_at_most_its_bound_and_the_packs_are_as_without_it(tmp_path_factory, seed, sizes) -> None:
    rnd = random.Random(seed)
    blobs = [rnd.randbytes(n) for n in sizes]
    repos = twin_vaults(tmp_path_factory.mktemp("queue"), 2)
    try:
        layouts = []
        for repo, sealers in zip(repos, (0, 2), strict=True):
            sink = BlobSink(repo, pack_writes=1, sealers=sealers, pack_size=TARGET_PACK_SIZE)
            try:
                ids = []
                for data in blobs:
                    ids.append(sink.put(DATA, data, False)[0])
                    assert sink._unsealed_bytes <= SEAL_QUEUE_BYTES + len(data)
                assert all(sink.get(i) == d for i, d in zip(ids, blobs, strict=True))  # in flight
                sink.flush()
            finally:
                sink.close()
            assert all(repo.get_blob(i) == d for i, d in zip(ids, blobs, strict=True))
            layouts.append(layout(repo, sink.stats.packs))
        assert layouts[1] == layouts[0]
    finally:
        for r in repos:
            r.close()


def test_the_bound_leaves_room_for_two_workers_of_average_coarse_chunks() -> None:
    """Each of two sealing workers has an average media chunk to seal (the caller's next waits beside them)."""
    assert SEAL_QUEUE_BYTES >= 2 * COARSE.avg_size
    assert SEAL_QUEUE_BYTES <= 2 << 20  # at 4 MiB a 3.3 GB phone's import peak held ~5 MB more (its comment)
