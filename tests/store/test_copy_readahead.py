"""`copy`'s read-ahead (store/copy.py `_read_ahead`): a run of chunks stored one after another in a source pack is
read with one ranged read and opened as one task; that must change nothing but the speed.

Oracle: whatever chunks are asked for, in whatever order and with repeats, each comes back as the plaintext that was
put, in the order asked, with its stored form (flag || payload) opening to that plaintext, whatever the group and
read-ahead sizes. A chunk whose pack is gone is read again by `get_blob`, which says what is missing. Real
LocalBackend vault, real LMDB cache.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store import copy as copymod
from phonevault.store.backends.local import LocalBackend
from phonevault.store.blobsink import BlobSink
from phonevault.store.crypto import OVERHEAD
from phonevault.store.errors import MissingObject
from phonevault.store.packs import DATA, open_stored, pack_name
from phonevault.store.repository import Repository
from tests.conftest import FAST_SCRYPT, PASSWORD

PACK = 48 << 10  # small packs: a few hundred KiB of blobs make several


def _vault(root, contents: list[bytes], compress: bool) -> tuple[Repository, list[bytes]]:
    repo = Repository.init(LocalBackend(root / "v"), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=root / "c")
    sink = BlobSink(repo, pack_writes=2, sealers=2, pack_size=PACK)
    try:
        ids = [sink.put(DATA, data, compress)[0] for data in contents]
        sink.flush()
    finally:
        sink.close()
    return repo, ids


def _plain_of(stored: bytes) -> bytes:
    return stored[1:] if stored[:1] == b"\x00" else zstandard.ZstdDecompressor().decompress(stored[1:])


contents = st.lists(
    st.one_of(st.binary(min_size=1, max_size=300), st.integers(1, 20_000).map(lambda n: bytes([n % 251]) * n)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=20, deadline=None)
@given(
    data=st.data(),
    items=contents,
    compress=st.booleans(),
    group=st.sampled_from([1, 4 << 10, 64 << 10, 1 << 20]),
    gap=st.sampled_from([0, 512, 64 << 10]),
    ahead=st.sampled_from([0, 8 << 10, 4 << 20]),
)
def test_chunks_come_back_in_order_as_put(tmp_path_factory, monkeypatch, data, items, compress, group, gap, ahead):
    root = tmp_path_factory.mktemp("readahead")
    repo, ids = _vault(root, items, compress)
    plain = dict(zip(ids, items, strict=True))
    try:
        # in pack order (runs), shuffled, and with repeats
        asked = ids + data.draw(st.lists(st.sampled_from(ids), max_size=30)) + ids[::-1]
        with monkeypatch.context() as m:
            m.setattr(copymod, "READ_GROUP_BYTES", group)
            m.setattr(copymod, "READ_GAP", gap)
            m.setattr(copymod, "READ_AHEAD_BYTES", ahead)
            with ThreadPoolExecutor(2) as pool:
                got = list(copymod._read_ahead(repo, iter(asked), pool, lambda p, s: (p, s)))
        assert [p for p, _s in got] == [plain[c] for c in asked]
        assert all(stored is not None and _plain_of(stored) == p for p, stored in got)
    finally:
        repo.close()


def test_a_chunk_whose_pack_is_gone_is_read_again_and_named_missing(tmp_path) -> None:
    items = [bytes([i]) * 9000 for i in range(1, 30)]  # several packs of several blobs each
    repo, ids = _vault(tmp_path, items, compress=False)
    try:
        gone = repo.locate(ids[-1]).pack
        assert repo.locate(ids[0]).pack != gone
        repo.backend.delete(pack_name(gone))
        with ThreadPoolExecutor(2) as pool:
            reader = copymod._read_ahead(repo, iter(ids), pool, lambda p, s: (p, s))
            firsts = [next(reader)[0] for c in ids if repo.locate(c).pack != gone]
            assert firsts == [p for c, p in zip(ids, items, strict=True) if repo.locate(c).pack != gone]
            with pytest.raises(MissingObject):
                next(reader)
    finally:
        repo.close()


@settings(max_examples=15, deadline=None)
@given(items=contents, compress=st.booleans())
def test_resealed_chunks_open_in_the_target_as_put_in_the_source(tmp_path_factory, items, compress) -> None:
    """What the read-ahead hands the target (`_resealer`: id, sealed, raw length) is what the target's own write
    path would have made of the chunk: its id is the target's keyed hash, and it opens under the target's key to
    the source's stored form and the plaintext, whether the source stored it compressed or not."""
    root = tmp_path_factory.mktemp("reseal")
    src, ids = _vault(root / "src", items, compress)
    dst = Repository.init(LocalBackend(root / "dst"), "other", scrypt_n=FAST_SCRYPT, cache_root=root / "dc")
    try:
        with ThreadPoolExecutor(2) as pool:
            got = list(copymod._read_ahead(src, iter(ids), pool, copymod._resealer(dst.key)))
        for (blob_id, sealed, raw_length), plain in zip(got, items, strict=True):
            assert blob_id == dst.key.blob_id(plain) and raw_length == len(plain)
            opened, stored = open_stored(dst.key, blob_id, bytes(sealed), "target")
            assert opened == plain and _plain_of(stored) == plain
            assert (stored[:1] == b"\x01") == (len(sealed) < len(plain) + 1 + OVERHEAD)  # zstd only when smaller
    finally:
        src.close()
        dst.close()
