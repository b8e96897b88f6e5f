"""The blob sink's pipeline (store/blobsink.py): packs written several at once and blobs sealed on worker threads
must change nothing but the speed.

Oracles: every blob put reads back as its plaintext; each new blob is in exactly one written pack; two vaults with
the same key given the same puts write the same pack layouts (blob ids, types, offsets, lengths, in the same packs
in the same order) whatever the number of packs in flight and of sealing workers; and a pack write that fails surfaces at flush, every
time, so a snapshot built over it is never committed. Real LocalBackend vaults, real LMDB caches.
"""

from __future__ import annotations

import errno
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.backends.faulty import Fail, FaultyBackend
from phonevault.store.backends.local import LocalBackend
from phonevault.store.blobsink import BlobSink
from phonevault.store.packs import DATA, DELTA, TREE, open_blob, open_stored, read_header, seal_blob
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import Repository
from phonevault.store.writer import SnapshotWriter
from tests.conftest import FAST_SCRYPT, PASSWORD

PACK = 64 << 10  # small packs: a few hundred KiB of blobs make many of them
CONFIGS = [(1, 0), (3, 0), (1, 2), (3, 3)]  # (pack writes in flight, sealing workers); (1, 0): the old sink


def twin_vaults(root: Path, n: int) -> list[Repository]:
    """`n` empty vaults sharing one key (the first's config and key objects, copied before anything is written),
    each with its own cache, so the same puts give the same blob ids in each."""
    first = Repository.init(LocalBackend(root / "v0"), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=root / "c0")
    repos = [first]
    for i in range(1, n):
        backend = LocalBackend(root / f"v{i}")
        for name, _size in first.backend.list(""):
            backend.put(name, first.backend.get(name))
        repos.append(Repository.open(backend, PASSWORD, cache_root=root / f"c{i}"))
    return repos


def layout(repo: Repository, packs: list[str]) -> list[list[tuple]]:
    """Each written pack's blobs as its header lists them, in the sink's pack order (ids differ: random nonces)."""
    sizes = dict(repo.backend.list("packs/"))
    out = []
    for pack in packs:
        header = read_header(repo.backend, repo.key, pack, sizes[f"packs/{pack[:2]}/{pack}"])
        out.append(sorted((loc.offset, bid, loc.type, loc.length, loc.raw_length) for bid, loc in header.items()))
    return out


blobs = st.lists(
    st.tuples(
        st.sampled_from([DATA, DATA, TREE, DELTA]),
        st.one_of(st.binary(max_size=200), st.integers(1, 40_000).map(lambda n: bytes([n % 251]) * n)),
        st.booleans(),
    ),
    max_size=60,
)


@settings(max_examples=25)
@given(items=blobs)
def test_packs_in_flight_decode_to_the_blobs_put_and_lay_out_the_same(tmp_path_factory, items):
    root = tmp_path_factory.mktemp("twins")
    repos = twin_vaults(root, len(CONFIGS))
    try:
        layouts = []
        for repo, (writes, sealers) in zip(repos, CONFIGS, strict=True):
            sink = BlobSink(repo, pack_writes=writes, sealers=sealers, pack_size=PACK)
            try:
                ids = [sink.put(kind, data, compress)[0] for kind, data, compress in items]
                assert all(sink.get(i) == data for i, (_k, data, _c) in zip(ids, items, strict=True))  # in flight
                sink.flush()
            finally:
                sink.close()
            for blob_id, (_kind, data, _c) in zip(ids, items, strict=True):
                assert repo.get_blob(blob_id) == data
            found = layout(repo, sink.stats.packs)
            stored = [entry[1] for pack in found for entry in pack]
            assert sorted(stored) == sorted(set(ids))  # each new blob once, in one pack
            assert sink.stats.new_blobs == len(set(ids))
            layouts.append(found)
        assert all(lay == layouts[0] for lay in layouts)
    finally:
        for r in repos:
            r.close()


@pytest.mark.parametrize(("writes", "sealers"), CONFIGS)
@pytest.mark.parametrize("nth", [1, 3])
def test_a_failed_pack_write_surfaces_at_every_flush_and_nothing_commits(tmp_path, writes, sealers, nth):
    """The import skips a source file that raises OSError and goes on (sync/mobilesync.py); a pack write failing
    under that file's write must still stop the commit, not be taken for an unreadable file."""
    Repository.init(LocalBackend(tmp_path / "v"), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=tmp_path / "c").close()
    faulty = FaultyBackend(LocalBackend(tmp_path / "v"), [Fail("put", nth=nth, errno=errno.EIO, prefix="packs/")])
    repo = Repository.open(faulty, PASSWORD, cache_root=tmp_path / "c")
    try:
        writer = SnapshotWriter(repo, "udid-fault", DeviceRecord(name="phone"), incremental=False)
        writer.sink = _small_packs(writer.sink, writes, sealers)
        skipped = 0
        for i in range(40):
            try:
                fw = writer.open_file(f"f{i:02}", 0o100644, 0)
                fw.write(random.Random(i).randbytes(20_000))  # incompressible: 40 files fill a dozen packs
                fw.close()
            except OSError:
                skipped += 1  # what the import does with an unreadable source file
        with pytest.raises(OSError) as first:
            writer.sink.flush()
        assert faulty.fired, "the fault was never injected"  # after flush: the write may still be in flight before
        with pytest.raises(OSError) as again:
            writer.commit("test")
        assert first.value.errno == again.value.errno == errno.EIO
    finally:
        repo.close()
    fresh = Repository.open(LocalBackend(tmp_path / "v"), PASSWORD, cache_root=tmp_path / "c2")
    try:
        assert [v for v in fresh.devices() if v.head is not None] == []
        assert not list(fresh.backend.list("events/"))
    finally:
        fresh.close()


def _small_packs(sink: BlobSink, writes: int, sealers: int) -> BlobSink:
    """The writer's sink with small packs (many pack writes from little data); nothing was put in it yet."""
    sink.close()
    return BlobSink(sink.repo, pack_writes=writes, sealers=sealers, pack_size=PACK)


def test_blobs_sealed_on_several_threads_at_once_open_again(repo):
    """zstandard contexts are not thread-safe: one compressor shared by the sealing workers corrupted the heap
    ("double free or corruption" in an import). Each thread has its own (store/packs.py)."""
    texts = [(f"row {i} " * 4000).encode()[: 20_000 + i] for i in range(200)]

    def seal_and_open(text: bytes) -> bytes:
        blob_id = repo.key.blob_id(text)
        return open_blob(repo.key, blob_id, seal_blob(repo.key, blob_id, text, True), "test")

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(seal_and_open, texts)) == texts


@pytest.mark.parametrize("sealers", [0, 2])
def test_a_blob_sealed_from_its_stored_form_in_another_vault_opens_to_its_plaintext(make_repo, sealers):
    """copy re-seals a blob's stored form (compressed as the source stored it) rather than compressing again."""
    src, dst = make_repo("src"), make_repo("dst")
    text = b"row of a database page " * 2000
    src_id = src.key.blob_id(text)
    sealed = seal_blob(src.key, src_id, text, True)
    plain, stored = open_stored(src.key, src_id, sealed, "source")
    assert plain == text and len(stored) < len(text) // 10  # its compressed form
    sink = BlobSink(dst, sealers=sealers)
    try:
        blob_id, new = sink.put(DATA, plain, False, stored)  # compress=False: the stored form decides, not this
        sink.flush()
    finally:
        sink.close()
    assert new and blob_id == dst.key.blob_id(text) != src_id
    assert dst.get_blob(blob_id) == text
    assert dst.locate(blob_id).length == len(sealed)  # kept compressed: the same stored length
