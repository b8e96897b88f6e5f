"""A device backup's memory against its number of files: the Manifest.db read back from the vault (the catalog a
backup builds once committed, and any `ls` on a cold cache) goes through a sealed image on disk
(store/sealedimage.py) and a read-only SQLite VFS over it (sync/sealeddb.py), never whole in memory, and gives the
same catalog as the file read directly. Real SQLite, real LMDB, a real vault."""

from __future__ import annotations

import os
import plistlib
import random
import sqlite3
import tracemalloc
from pathlib import Path

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.errors import CacheCorrupt
from phonevault.store.sealedimage import BLOCK, SEAL_OVERHEAD, SealedImage
from phonevault.sync.catalog import _row, load_catalog
from phonevault.sync.manifest import MANIFEST_DB_SCHEMA, CatalogEntry, file_id, read_manifest_db
from phonevault.sync.mbfile import encode_mbfile
from phonevault.sync.mobilesync import import_folder
from phonevault.sync.sealeddb import CACHE_KIB, SealedManifest
from tests.conftest import reopen

UDID = "00008030-00000000000000C5"


@given(
    seed=st.integers(0, 2**32),
    size=st.integers(0, 3 * BLOCK + 7),
    pieces=st.lists(st.integers(1, BLOCK + 3), min_size=1, max_size=8),
    reads=st.lists(st.tuples(st.integers(0, 3 * BLOCK + 20), st.integers(0, 2 * BLOCK + 5)), max_size=12),
)
@settings(max_examples=60)
def test_a_sealed_image_reads_back_any_range(repo, seed, size, pieces, reads):
    """Written in pieces of any size, read at any offset and length: exactly the bytes' slice (the oracle)."""
    data = random.Random(seed).randbytes(size)
    with SealedImage(repo.cache) as image:
        at, i = 0, 0
        while at < size:
            step = pieces[i % len(pieces)]
            image.write(data[at : at + step])
            at, i = at + step, i + 1
        image.finish()
        assert image.size == size
        for offset, amount in reads:
            assert image.read(offset, amount) == data[offset : offset + amount]


def test_a_sealed_image_holds_no_plaintext_and_refuses_a_changed_block(repo):
    secret = b"CameraRollDomain/Media/DCIM/IMG_0001.HEIC " * 4000
    with SealedImage(repo.cache) as image, SealedImage(repo.cache) as other:
        for im in (image, other):
            im.write(secret)
            im.finish()
        raw = os.pread(image._file.fileno(), 1 << 20, 0)
        assert len(raw) == len(secret) + SEAL_OVERHEAD * -(-len(secret) // BLOCK)
        assert b"CameraRollDomain" not in raw
        # A block of another image, at the same position, does not open here (each image binds its blocks).
        os.pwrite(image._file.fileno(), os.pread(other._file.fileno(), BLOCK + SEAL_OVERHEAD, 0), 0)
        with pytest.raises(CacheCorrupt):
            image.read(0, 10)


def write_manifest(path: Path, n: int) -> list[CatalogEntry]:
    """A Manifest.db of `n` phone-named rows (one MBFile archive shared by all: the parse decodes it once)."""
    conn = sqlite3.connect(path)
    for statement in MANIFEST_DB_SCHEMA:
        conn.execute(statement)
    blob = encode_mbfile({"Size": 7, "Mode": 0o100644, "LastModified": 1, "ProtectionClass": 3})
    rows = [("HomeDomain", f"Library/Caches/thumb-{i:06d}-{'x' * 60}.plist") for i in range(n)]
    conn.executemany("INSERT INTO Files VALUES (?, ?, ?, 1, ?)", ((file_id(d, r), d, r, blob) for d, r in rows))
    conn.commit()
    conn.execute("PRAGMA journal_mode = WAL")  # as a phone leaves it: read as rollback mode from the image
    conn.close()
    return list(read_manifest_db(path))


def test_a_manifest_db_from_the_vault_is_parsed_without_holding_it(repo, tmp_path):
    """The catalog of a stored Manifest.db ~6 times SQLite's page cache: the same rows as the file read directly,
    SQLite's memory stays within its page cache, and Python's peak is far below the file's size."""
    dev = tmp_path / UDID
    dev.mkdir()
    expected = write_manifest(dev / "Manifest.db", 20_000)
    size = (dev / "Manifest.db").stat().st_size
    assert size > 6 * CACHE_KIB * 1024
    (dev / "Info.plist").write_bytes(plistlib.dumps({"Target Identifier": UDID, "Device Name": "S"}))
    snap = import_folder(repo, dev).snapshot

    fresh = reopen(repo, tmp_path / "cold-cache")  # nothing cached: the catalog is parsed from the vault
    try:
        apsw.memory_high_water(True)
        tracemalloc.start()
        try:
            catalog = load_catalog(fresh, fresh.snapshot_record(snap.device_key, snap.id))
            _current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert apsw.memory_high_water() < CACHE_KIB * 1024 + (2 << 20)
        assert peak < size / 2, (peak, size)
        assert [_row(c) for c in catalog] == [_row(c) for c in expected]
        assert catalog.problems == ()
    finally:
        fresh.close()


def test_what_is_not_a_database_is_refused_as_sqlite_refuses_it(repo):
    for data in (b"", b"SQLite format 3\x00" + b"\x00" * 40, os.urandom(8192)):
        with SealedImage(repo.cache) as image:
            image.write(data)
            image.finish()
            source = SealedManifest(image)
            with pytest.raises(sqlite3.DatabaseError):
                conn = source.connect()
                list(conn.execute("SELECT name FROM sqlite_master"))
            source.close()
