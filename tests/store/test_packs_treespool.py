"""A tree pack (tree, delta and catalog blobs only, full at TREE_PACK_SIZE) on a backend that spools is written to its
file once it holds more than SPOOL_STAGE, as a data pack is (store/packs.py `_spool_trees`): the same pack as one built
in memory (blobs, header entries, trailer; the header's nonce aside), every blob readable while it fills and after,
nothing visible but a temporary file until `finish`, and a tree pack within SPOOL_STAGE stays in memory."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.backends.local import LocalBackend
from phonevault.store.backends.memory import MemoryBackend
from phonevault.store.crypto import content_hash
from phonevault.store.packs import DELTA, SPOOL_STAGE, TRAILER, TREE, TREE_PACK_SIZE, PackWriter, pack_name

from .test_packs_buffers import KEY, blob
from .test_packs_spool import temporaries

TARGET = 4 * TREE_PACK_SIZE  # a blob sink's data target is 16 MiB: tree packs are full well before it


def fill(backend, blobs, kinds) -> PackWriter:
    w = PackWriter(backend, KEY, TARGET)
    for (blob_id, sealed), kind in zip(blobs, kinds, strict=True):
        w.add(blob_id, kind, sealed, len(sealed) - 29)
    return w


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32), sizes=st.lists(st.sampled_from([60, 5000, 200 << 10, SPOOL_STAGE]), max_size=10))
def test_a_spooled_tree_pack_is_the_in_memory_tree_pack(tmp_path_factory, seed, sizes):
    rnd = random.Random(seed)
    blobs = [blob(rnd, n) for n in [*sizes, 10]]
    kinds = [rnd.choice((TREE, DELTA)) for _ in blobs]
    memory, local = MemoryBackend(), LocalBackend(tmp_path_factory.mktemp("trees") / "v")
    m, d = fill(memory, blobs, kinds), fill(local, blobs, kinds)
    spooled = sum(len(s) for _b, s in blobs) > SPOOL_STAGE
    assert len(temporaries(local.root)) == (1 if spooled else 0)
    assert list(local.list("packs/")) == []
    for blob_id, sealed in blobs:  # while it fills: from the file or the stage
        assert d.sealed(blob_id) == bytes(sealed)
    mem_id, mem_loc = m.finish()
    disk_id, disk_loc = d.finish()
    mem, disk = memory.get(pack_name(mem_id)), local.get(pack_name(disk_id))
    body = b"".join(bytes(s) for _b, s in blobs)
    assert disk[: len(body)] == mem[: len(body)] == body and len(disk) == len(mem)
    assert content_hash(disk) == disk_id
    assert {b: (v.offset, v.length, v.raw_length, v.type) for b, v in disk_loc.items()} == {
        b: (v.offset, v.length, v.raw_length, v.type) for b, v in mem_loc.items()
    }
    assert TRAILER.unpack(disk[-TRAILER.size :])[1:] == TRAILER.unpack(mem[-TRAILER.size :])[1:]
    assert not temporaries(local.root)
    for blob_id, sealed in blobs:  # after: from the backend
        assert d.sealed(blob_id) == bytes(sealed)


def test_a_tree_pack_holds_at_most_the_stage_in_memory_until_full(tmp_path):
    rnd, backend = random.Random(9), LocalBackend(tmp_path / "v")
    w = PackWriter(backend, KEY, TARGET)
    while not w.full():
        blob_id, sealed = blob(rnd, 100 << 10)
        w.add(blob_id, TREE, sealed, 100 << 10)
        assert len(w._buf) <= SPOOL_STAGE  # the stage; the rest is in the file
    assert TREE_PACK_SIZE <= w.size < TREE_PACK_SIZE + (128 << 10)
    pack_id, _loc = w.finish()
    assert [n for n, _s in backend.list("packs/")] == [pack_name(pack_id)]
