"""`ChunkReader` opens a local vault's chunk in place, in the buffer it was read into: the bytes are `read_file`'s,
no second (opened) buffer is ever made for it, and a chunk whose tag does not check raises instead of giving the
unauthenticated bytes the buffer then holds."""

from __future__ import annotations

import random

import pytest

from phonevault.store.errors import CorruptObject
from phonevault.store.packs import pack_name
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import ChunkReader
from phonevault.store.writer import SnapshotWriter

UDID = "00008030-0000000000000002"


def stored(repo, sizes: list[int]):
    rng = random.Random(7)
    with SnapshotWriter(repo, UDID, DeviceRecord("p"), incremental=False) as w:
        entries = [w.put_bytes(f"HomeDomain/f{i}", 0o100644, 0, rng.randbytes(n)) for i, n in enumerate(sizes)]
        w.commit("test")
    return entries


def test_a_local_vaults_chunks_open_in_place_without_a_second_buffer(repo):
    entries = stored(repo, [12 << 20, 1, 0, 3 << 20])
    with ChunkReader(repo) as reader:
        for e in entries:
            assert b"".join(bytes(p) for p in reader.pieces(e)) == b"".join(repo.read_file(e))
        assert len(reader._opened) == 0  # every chunk opened where it was read


def test_a_chunk_whose_tag_does_not_check_raises(repo):
    (big,) = stored(repo, [2 << 20])
    loc = repo.cache.lookup(big.chunks[0])
    path = repo.backend.root / pack_name(loc.pack)
    with open(path, "r+b") as f:  # one byte of the ciphertext flipped
        f.seek(loc.offset + loc.length // 2)
        b = f.read(1)
        f.seek(loc.offset + loc.length // 2)
        f.write(bytes([b[0] ^ 1]))
    with ChunkReader(repo) as reader, pytest.raises(CorruptObject):
        for _piece in reader.pieces(big):
            pass
