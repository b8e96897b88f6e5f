"""Export's and extract's large-file read (`store.repository.ChunkReader`): each chunk opened into reused buffers
must give exactly what `read_file` gives, for stored and compressed chunks of any size, file after file through one
reader; a damaged or missing chunk raises for its file, after the chunks before it; an export of a phone with large
files stays bit-exact; and looking up thousands of chunks keeps the cache's map bounded."""

from __future__ import annotations

import dataclasses
import itertools
import mmap
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phonevault.store.errors import CorruptObject, MissingObject
from phonevault.store.packs import BlobLocation, pack_name
from phonevault.store.records import DeviceRecord
from phonevault.store.repository import TRIM_LOOKUPS, ChunkReader, NotReadHere, PackFiles
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


def mapped_cache_kib(repo) -> int:
    """Resident KiB of this process's map of the cache's data.mdb (/proc/self/smaps)."""
    path, rss, inside = os.path.realpath(repo.cache.path / "data.mdb"), 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields[0].endswith(":"):  # a map's first line: range perms offset dev inode [path]
                inside = fields[-1] == path
            elif inside and fields[0] == "Rss:":
                rss += int(fields[1])
    return rss


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="resident memory per map is read from Linux's /proc")
def test_locating_thousands_of_chunks_keeps_the_caches_map_bounded(repo):
    """A reader of a file of thousands of chunks (a 1 000 000-file phone's Manifest.db) looks each one up: every
    TRIM_LOOKUPS lookups the cache's pages are unmapped, so what stays mapped is a few lookups' pages, not the pages
    of every lookup since the start (54 MB of data.mdb exporting a 300 000-file phone)."""
    rng = random.Random(7)
    ids = [rng.randbytes(32) for _ in range(20_000)]  # a cache of ~3 MB: 127 random lookups map most of it
    repo.cache.add_index("index/" + "ab" * 32, {b: BlobLocation("cd" * 32, i, 100, 100, 0) for i, b in enumerate(ids)})
    repo.cache.trim()
    rng.shuffle(ids)
    for bid in ids[: 2 * TRIM_LOOKUPS]:  # the plain lookup, never unmapped: what the reader kept before
        repo.cache.lookup(bid)
    untrimmed = mapped_cache_kib(repo)
    repo.cache.trim()
    seen = []
    for n, bid in enumerate(ids[2 * TRIM_LOOKUPS :][: 3 * TRIM_LOOKUPS], 1):
        assert repo.locate_needed(bid) is not None
        seen.append(mapped_cache_kib(repo) if n % TRIM_LOOKUPS in (0, TRIM_LOOKUPS - 1) else 0)
    before_trim = [seen[k * TRIM_LOOKUPS - 2] for k in (1, 2, 3)]
    after_trim = [seen[k * TRIM_LOOKUPS - 1] for k in (1, 2, 3)]
    assert all(a < b for a, b in zip(after_trim, before_trim, strict=True)), (before_trim, after_trim)
    assert max(after_trim) <= 512 < untrimmed  # one lookup's pages (root, branch, leaf and their neighbours)


def test_the_next_chunks_read_ahead_is_advice_only(repo):
    """`will_need` (ChunkReader asks it for the next chunk while this one is written) keeps one descriptor, of the
    last pack it advised; a pack gone meanwhile (moved by prune) is no error there: the read that follows retries
    it. Each ChunkReader has its own (readers on two threads), closed when it is left."""
    (big,) = stored_files(repo, [(12 << 20, False)])
    want = b"".join(repo.read_file(big))  # the backend's own descriptors, if it keeps any, counted in `before`
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    before = fds()
    packs = PackFiles(repo.backend)
    packs.will_need(repo.cache.lookup(big.chunks[1]))
    packs.will_need(repo.cache.lookup(big.chunks[2]))
    assert fds() == before + 1
    packs.will_need(BlobLocation("ef" * 32, 0, 100, 100, 0))  # no such pack: the last descriptor goes, none comes
    assert fds() == before
    packs.will_need(repo.cache.lookup(big.chunks[0]))
    with ChunkReader(repo) as reader, ChunkReader(repo) as other:
        assert joined(reader, big) == want
        assert fds() == before + 2
        assert joined(other, big) == want
        assert fds() == before + 3
    assert fds() == before + 1
    packs.close()
    assert fds() == before


def test_a_local_vaults_chunks_are_read_into_the_kept_buffer(repo):
    """`read_into` (ChunkReader's read of a local vault) puts the sealed bytes `sealed_blob` gives into the buffer it
    is handed; a short read (a location past the pack's end) or a pack that is not there gives None: the caller
    then reads the chunk the usual way, which retries a move and names the damage."""
    (big,) = stored_files(repo, [(3 << 20, False)])
    buf = mmap.mmap(-1, 8 << 20)
    packs = PackFiles(repo.backend)
    for c in big.chunks:
        loc = repo.cache.lookup(c)
        assert bytes(packs.read_into(loc, buf)) == repo.sealed_blob(c, loc)[0]
    assert packs.read_into(dataclasses.replace(loc, offset=loc.offset + (1 << 30)), buf) is None
    assert packs.read_into(dataclasses.replace(loc, pack="ef" * 32), buf) is None
    packs.close()


def test_located_pieces_read_without_the_cache_or_refuse(repo):
    """`located_pieces` (a large file written on export's second thread) gives `read_file`'s bytes from locations
    found beforehand, and a chunk it cannot read as located (a pack that is not there) raises NotReadHere instead
    of asking the cache (not shared between threads) or naming damage: the caller writes that file itself."""
    (big,) = stored_files(repo, [(12 << 20, True)])
    located = [repo.cache.lookup(c) for c in big.chunks]
    with ChunkReader(repo) as reader:
        assert b"".join(bytes(p) for p in reader.located_pieces(big, located)) == b"".join(repo.read_file(big))
        moved = [*located[:-1], dataclasses.replace(located[-1], pack="ef" * 32)]
        with pytest.raises(NotReadHere):
            for _piece in reader.located_pieces(big, moved):
                pass
