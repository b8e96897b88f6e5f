"""Data packs spooled to a temporary file (LocalBackend.spool): the same bytes as a pack built in memory, its blobs
readable while it fills and while it is written, and nothing visible after a crash or a failed write but a
`.tmp-*` file that the sweep removes."""

from __future__ import annotations

import gc
import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phonevault.store.backends.local import LocalBackend
from phonevault.store.backends.memory import MemoryBackend
from phonevault.store.crypto import content_hash
from phonevault.store.packs import (
    DATA,
    POOL_BLOB,
    SPOOL_STAGE,
    TRAILER,
    PackWriter,
    open_blob,
    pack_name,
    parse_header,
)

from .test_packs_buffers import KEY, blob


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


def fill(backend, blobs: list[tuple[bytes, bytes]], target: int) -> PackWriter:
    w = PackWriter(backend, KEY, target)
    for blob_id, sealed in blobs:
        w.add(blob_id, DATA, sealed, len(sealed) - 29)
    return w


SIZES = st.lists(
    st.sampled_from([0, 100, 5000, POOL_BLOB - 30, POOL_BLOB, SPOOL_STAGE - 29, SPOOL_STAGE + 1]), max_size=8
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32), SIZES)
def test_a_spooled_pack_is_the_in_memory_pack(tmp_path, seed, sizes):
    """Oracle: the same blobs through MemoryBackend (no spool, the pack built in memory). The headers differ only by
    their nonce, so the blobs' bytes, the header's entries and the trailer's layout are compared."""
    rnd = random.Random(seed)
    blobs = [blob(rnd, n) for n in [*sizes, 10]]
    memory, local = MemoryBackend(), LocalBackend(tmp_path / f"v{seed}-{len(sizes)}")
    mem_id, mem_loc = fill(memory, blobs, 4 * POOL_BLOB).finish()
    disk_id, disk_loc = fill(local, blobs, 4 * POOL_BLOB).finish()
    mem, disk = memory.get(pack_name(mem_id)), local.get(pack_name(disk_id))
    body = b"".join(bytes(s) for _i, s in blobs)
    assert disk[: len(body)] == mem[: len(body)] == body
    assert len(disk) == len(mem)
    assert content_hash(disk) == disk_id  # the incremental hash names the file's bytes
    assert {b: (v.offset, v.length, v.raw_length, v.type) for b, v in disk_loc.items()} == {
        b: (v.offset, v.length, v.raw_length, v.type) for b, v in mem_loc.items()
    }
    assert parse_header(KEY, disk_id, disk, len(disk)).keys() == disk_loc.keys()
    assert TRAILER.unpack(disk[-TRAILER.size :])[1:] == TRAILER.unpack(mem[-TRAILER.size :])[1:]
    assert not temporaries(local.root)


def test_blobs_are_readable_from_an_open_spooled_pack_and_after_it_is_written(tmp_path):
    rnd, backend = random.Random(5), LocalBackend(tmp_path / "v")
    blobs = [blob(rnd, n) for n in (300, POOL_BLOB, 2000, SPOOL_STAGE + 5, 70, 40)]
    w = fill(backend, blobs, 64 << 20)
    assert len(temporaries(backend.root)) == 1  # spooled from the first media-sized blob on
    assert list(backend.list("packs/")) == []  # and not visible as a pack
    for blob_id, sealed in blobs:  # some from the file, the last from the stage
        assert w.sealed(blob_id) == bytes(sealed)
        open_blob(KEY, blob_id, w.sealed(blob_id), "open pack")
    pack_id, _loc = w.finish()
    assert not temporaries(backend.root)
    assert [n for n, _s in backend.list("packs/")] == [pack_name(pack_id)]
    for blob_id, sealed in blobs:  # now from the backend
        assert w.sealed(blob_id) == bytes(sealed)


def test_a_small_pack_is_not_spooled(tmp_path):
    rnd, backend = random.Random(6), LocalBackend(tmp_path / "v")
    w = fill(backend, [blob(rnd, 100) for _ in range(20)], 64 << 20)
    assert not temporaries(backend.root)
    w.finish()


def test_a_dropped_writer_removes_its_temporary_file(tmp_path):
    rnd, backend = random.Random(7), LocalBackend(tmp_path / "v")
    w = fill(backend, [blob(rnd, POOL_BLOB)], 64 << 20)
    assert len(temporaries(backend.root)) == 1
    del w
    gc.collect()
    assert not temporaries(backend.root)
    assert list(backend.list("")) == []


def test_a_failed_spool_write_fails_the_pack_not_the_blob(tmp_path):
    """A full disk while blobs are added must not raise from `add` (a caller may take that OSError for its source
    file's and go on, the pack then missing a blob's bytes): `finish` raises it, and nothing is published."""
    rnd, backend = random.Random(8), LocalBackend(tmp_path / "v")
    w = fill(backend, [blob(rnd, POOL_BLOB)], 64 << 20)
    spool = w._spool
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, spool._fd)  # the file's descriptor now writes to a full device (ENOSPC)
    os.close(full)
    blob_id, sealed = blob(rnd, SPOOL_STAGE + 1)
    w.add(blob_id, DATA, sealed, SPOOL_STAGE + 1)  # no error here
    with pytest.raises(OSError):
        w.finish()
    with pytest.raises(OSError):
        w.sealed(next(iter(w.pending)))
    assert not temporaries(backend.root)
    assert list(backend.list("packs/")) == []


CHILD = """
import os, random, signal, sys
from phonevault.store.backends.local import LocalBackend
from phonevault.store.crypto import MasterKey
from phonevault.store.packs import DATA, POOL_BLOB, PackWriter, seal_blob
key, rnd = MasterKey(bytes(range(32))), random.Random(1)
w = PackWriter(LocalBackend(sys.argv[1]), key, 64 << 20)
for n in (POOL_BLOB, 3 << 20, 500):
    plain = rnd.randbytes(n)
    blob_id = key.blob_id(plain)
    w.add(blob_id, DATA, seal_blob(key, blob_id, plain, False), n)
w._settle()  # written (the appending thread writes behind the caller)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_leaves_no_pack_and_the_sweep_removes_its_temporary(tmp_path):
    root = tmp_path / "v"
    p = subprocess.run([sys.executable, "-c", CHILD, str(root)], capture_output=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    backend = LocalBackend(root)
    assert list(backend.list("")) == []
    left = temporaries(root)
    assert len(left) == 1 and left[0].parent == root / "packs" and left[0].stat().st_size >= 3 << 20
    assert backend.sweep_temporaries() == 0  # younger than an hour: may be a running writer's
    assert backend.sweep_temporaries(min_age=0) == 1
    assert not temporaries(root)


def test_blobs_stay_readable_while_another_thread_writes_the_pack(tmp_path):
    """`finish` runs on a pack-writing thread and moves the stage's bytes to the file while the caller's thread may
    read a blob of the pack (BlobSink.get): every read gives the blob's bytes, before, during and after."""
    rnd, backend = random.Random(9), LocalBackend(tmp_path / "v")
    # Written at once, then a stage ~100 bytes short of SPOOL_STAGE: the header makes `finish` write the stage out.
    small = (SPOOL_STAGE - 100) // 4 - 29  # a sealed blob is 29 bytes longer than its plaintext
    blobs = [blob(rnd, SPOOL_STAGE)] + [blob(rnd, small) for _ in range(4)]
    for _round in range(20):
        w = fill(backend, blobs, 64 << 20)
        done = threading.Thread(target=w.finish)
        done.start()
        while done.is_alive():
            for blob_id, sealed in blobs[1:]:
                assert w.sealed(blob_id) == bytes(sealed)
        done.join()
        for blob_id, sealed in blobs:
            assert w.sealed(blob_id) == bytes(sealed)
