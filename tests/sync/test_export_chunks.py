"""Export's and extract's large-file read (`store.repository.ChunkReader`): each chunk read ahead on a helper
thread and opened into reused buffers must give exactly what `read_file` gives, for stored and compressed chunks
of any size, file after file through one reader; a damaged or missing chunk raises for its file, after the chunks
before it; and an export of a phone with large files stays bit-exact."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phonevault.store.errors import CorruptObject, MissingObject
from phonevault.store.packs import pack_name
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import ChunkReader
from phonevault.store.writer import SnapshotWriter
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.export import export_snapshot
from phonevault.sync.mobilesync import import_folder
from phonevault.sync.writeout import FileWriters

UDID = "00008030-0000000000000001"
COUNTER = itertools.count()


def content(seed: int, size: int, compressible: bool) -> bytes:
    rng = random.Random(seed)
    if compressible:  # zstd stores these chunks compressed (flag 1)
        words = [rng.randbytes(rng.randint(1, 12)) for _ in range(50)]
        out = bytearray()
        while len(out) < size:
            out += rng.choice(words)
        return bytes(out[:size])
    return rng.randbytes(size)  # stored as they are (flag 0)


def stored_files(repo, files: list[tuple[int, bool]]):
    with SnapshotWriter(repo, UDID, DeviceRecord("p"), incremental=False) as w:
        entries = [w.put_bytes(f"HomeDomain/f{i}", 0o100644, 0, content(i, n, z)) for i, (n, z) in enumerate(files)]
        w.commit("test")
    return entries


def joined(reader: ChunkReader, entry) -> bytes:
    return b"".join(bytes(piece) for piece in reader.pieces(entry))  # each view copied before the next is asked


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(st.tuples(st.integers(0, 3 << 20), st.booleans()), min_size=1, max_size=5))
def test_pieces_equal_read_file_for_stored_and_compressed_chunks(make_repo, files):
    repo = make_repo(f"vault-{next(COUNTER)}")
    entries = stored_files(repo, files)
    with ChunkReader(repo) as reader:  # one reader, file after file: its buffers reused, grown, never resized
        for e, (n, z) in zip(entries, files, strict=True):
            got = joined(reader, e)
            assert got == b"".join(repo.read_file(e)) == content(entries.index(e), n, z)


def test_a_damaged_chunk_raises_after_the_chunks_before_it_and_the_next_file_reads(repo):
    big, other = stored_files(repo, [(12 << 20, False), (2 << 20, True)])
    assert len(big.chunks) >= 3
    victim = repo.cache.lookup(big.chunks[1])
    path = Path(repo.backend.location) / pack_name(victim.pack)
    data = bytearray(path.read_bytes())
    data[victim.offset + victim.length // 2] ^= 1
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    with ChunkReader(repo) as reader:
        pieces = reader.pieces(big)
        assert bytes(next(pieces)) == repo.get_blob(big.chunks[0])
        with pytest.raises(CorruptObject, match="authentication failed"):
            next(pieces)
        assert joined(reader, other) == b"".join(repo.read_file(other))


def test_a_missing_pack_raises_missing_object(repo):
    (big,) = stored_files(repo, [(6 << 20, False)])
    for c in big.chunks:
        (Path(repo.backend.location) / pack_name(repo.cache.lookup(c).pack)).unlink(missing_ok=True)
    with ChunkReader(repo) as reader, pytest.raises(MissingObject):
        joined(reader, big)


def test_export_of_a_phone_with_large_files_is_bit_exact(repo, tmp_path, monkeypatch):
    monkeypatch.setattr(FileWriters, "SMALL", 256 << 10)  # files above it are written through ChunkReader
    phone = SyntheticPhone(seed=5, size=24 << 20)
    dev = phone.write_backup(tmp_path / "src")
    snap = import_folder(repo, dev).snapshot
    sizes = [p.stat().st_size for p in dev.rglob("*") if p.is_file()]
    assert sum(s > FileWriters.SMALL for s in sizes) >= 5
    view = repo.view(snap.device_key)
    result = export_snapshot(repo, view, snap, tmp_path / "out")
    src = {p.relative_to(dev).as_posix(): p.read_bytes() for p in dev.rglob("*") if p.is_file()}
    out = {p.relative_to(result.path).as_posix(): p.read_bytes() for p in result.path.rglob("*") if p.is_file()}
    assert out == src
