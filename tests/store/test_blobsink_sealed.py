"""`BlobSink.put_sealed` (a blob sealed elsewhere under this vault's key, as `copy` does on its reader threads) must
change nothing but who seals: mixed with `put` in any order, the sink writes the same pack layouts (blob ids,
types, offsets, lengths, raw lengths, in the same packs in the same order) as the same blobs all given to `put`,
whatever the number of sealing workers; every blob reads back, in flight and written; a known blob is not stored
again. Real LocalBackend vaults, real LMDB caches (tests/store/test_pipeline.py's twins and layouts)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.blobsink import BlobSink
from phonevault.store.packs import DATA, DELTA, TREE, seal_blob
from tests.store.test_pipeline import PACK, layout, twin_vaults

items = st.lists(
    st.tuples(
        st.sampled_from([DATA, DATA, TREE, DELTA]),
        st.one_of(st.binary(max_size=200), st.integers(1, 40_000).map(lambda n: bytes([n % 251]) * n)),
        st.booleans(),  # compress
        st.booleans(),  # given sealed (put_sealed) rather than to put
    ),
    max_size=50,
)


@settings(max_examples=25, deadline=None)
@given(items=items)
def test_blobs_given_sealed_lay_out_as_if_put(tmp_path_factory, items) -> None:
    root = tmp_path_factory.mktemp("sealed")
    repos = twin_vaults(root, 3)
    try:
        layouts = []
        for n, (repo, sealers) in enumerate(zip(repos, (2, 0, 2), strict=True)):
            sink = BlobSink(repo, pack_writes=2, sealers=sealers, pack_size=PACK)
            try:
                ids = []
                for kind, data, compress, given_sealed in items:
                    if n and given_sealed:  # the first vault puts everything: the oracle
                        blob_id = repo.key.blob_id(data)
                        known = sink.known(blob_id)
                        new = sink.put_sealed(kind, blob_id, seal_blob(repo.key, blob_id, data, compress), len(data))
                        assert new is not known
                    else:
                        blob_id = sink.put(kind, data, compress)[0]
                    ids.append(blob_id)
                assert all(sink.get(i) == it[1] for i, it in zip(ids, items, strict=True))  # in flight
                sink.flush()
            finally:
                sink.close()
            assert all(repo.get_blob(i) == it[1] for i, it in zip(ids, items, strict=True))
            assert sink.stats.new_blobs == len(set(ids))
            assert sink.stats.new_raw == sum(
                len(d) for d in {i: it[1] for i, it in zip(ids, items, strict=True)}.values()
            )
            layouts.append(layout(repo, sink.stats.packs))
        assert layouts[1] == layouts[0] and layouts[2] == layouts[0]
    finally:
        for r in repos:
            r.close()
