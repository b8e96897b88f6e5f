"""Chunks handed out as read-only views instead of copies (StreamChunker.finish, chunk_bytes of bytes), and BlobSink
sealing such a view later without copying it: the same chunks as copies would be, the same pack layouts as bytes
given to `put`, and every blob reads back as its bytes. Real LocalBackend vaults and LMDB caches."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.blobsink import BlobSink
from phonevault.store.chunker import COARSE, FINE, StreamChunker, chunk_bytes
from phonevault.store.packs import DATA
from tests.store.test_pipeline import PACK, layout, twin_vaults


def stream(data: bytes, block: int, profile) -> list[bytes | memoryview]:
    sc = StreamChunker(profile)
    out = []
    for pos in range(0, len(data), block):
        out += list(sc.feed(data[pos : pos + block]))
    return out + list(sc.finish())


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=200_000), st.integers(1, 80_000))
def test_finished_chunks_are_read_only_views_equal_to_copies(data, block):
    chunks = stream(data, block, FINE)
    assert [bytes(c) for c in chunks] == [bytes(c.data) for c in _cuts(data, FINE)]
    assert b"".join(chunks) == data
    for c in chunks:  # the last buffer's chunks are views nobody can write through
        assert isinstance(c, bytes) or (isinstance(c, memoryview) and c.readonly)
    assert [bytes(c) for c in chunk_bytes(data, FINE)] == [bytes(c) for c in chunks]
    assert all(isinstance(c, memoryview) and c.readonly for c in chunk_bytes(data, FINE))
    assert all(isinstance(c, bytes) for c in chunk_bytes(bytearray(data), FINE))  # a mutable buffer is copied


def test_a_finished_view_outlives_the_chunker():
    data = bytes(range(256)) * 4096  # 1 MiB: below the coarse cut threshold, so every chunk comes from finish
    sc = StreamChunker(COARSE)
    list(sc.feed(data))
    chunks = list(sc.finish())
    del sc
    assert chunks and all(isinstance(c, memoryview) for c in chunks)
    assert b"".join(chunks) == data


def _cuts(data: bytes, profile):
    from pyfastcdc import FastCDC

    return list(FastCDC(profile.avg_size, min_size=profile.min_size, max_size=profile.max_size).cut_buf(data))


@settings(max_examples=15, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=30_000), max_size=30))
def test_views_put_lay_out_as_bytes_put_and_read_back(tmp_path_factory, blobs):
    """Oracle: the same blobs given to `put` as bytes. With sealing workers a view is sealed after `put` returned."""
    root = tmp_path_factory.mktemp("views")
    repos = twin_vaults(root, 2)
    try:
        layouts = []
        for as_view, repo in enumerate(repos):
            sink = BlobSink(repo, pack_writes=2, sealers=2, pack_size=PACK)
            try:
                ids = [sink.put(DATA, memoryview(b) if as_view else b, False)[0] for b in blobs]
                for blob_id, b in zip(ids, blobs, strict=True):  # in flight: from the sealing queue or an open pack
                    got = sink.get(blob_id)
                    assert isinstance(got, bytes) and got == b
                sink.flush()
            finally:
                sink.close()
            for blob_id, b in zip(ids, blobs, strict=True):
                assert repo.get_blob(blob_id) == b
            layouts.append(layout(repo, sink.stats.packs))
        assert layouts[0] == layouts[1]
    finally:
        for repo in repos:
            repo.close()
