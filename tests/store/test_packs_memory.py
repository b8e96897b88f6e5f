"""What a pack holds in memory, read from the kernel (/proc/self/pagemap and maps), not from the writer's own counters.

A written pack gives its buffer back at once (it is then read from the backend), a kept buffer holds no pages past
the pack target, pack buffers are not inherited by a forked child, and a pack of tree blobs is full at
TREE_PACK_SIZE while a pack of data blobs fills to its target.
"""

from __future__ import annotations

import ctypes
import gc
import os
import random
import struct
import sys

import pytest

from phonevault.store.backends.memory import MemoryBackend
from phonevault.store.crypto import MasterKey
from phonevault.store.packs import (
    DATA,
    DELTA,
    POOL_BLOB,
    TREE,
    TREE_PACK_SIZE,
    PackBuffers,
    PackWriter,
    anonymous_map,
    open_blob,
    pack_name,
    seal_blob,
)

KEY = MasterKey(bytes(range(32)))
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/pagemap")


def blob(rnd: random.Random, n: int) -> tuple[bytes, bytes]:
    plain = rnd.randbytes(n)
    blob_id = KEY.blob_id(plain)
    return blob_id, seal_blob(KEY, blob_id, plain, False)


def address(buf) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def mapped(start: int) -> bool:
    """Whether a map of this process starts at `start` or covers it (/proc/self/maps)."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
            if lo <= start < hi:
                return True
    return False


def resident(buf) -> int:
    """Resident bytes of exactly `buf`'s pages (/proc/self/pagemap: bit 63 of a page's entry). Not the Rss of the
    map in /proc/self/smaps: the kernel merges a new anonymous map with an adjacent one of the same flags (another
    test's pooled buffer), and their Rss is then counted as one, which made this test fail once in a full run."""
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(address(buf) // page * 8)
        entries = f.read(-(-len(buf) // page) * 8)
    return sum(1 for (e,) in struct.iter_unpack("<Q", entries) if e >> 63) * page


def test_a_written_pack_gives_its_buffer_to_the_next_and_is_read_from_the_backend():
    rnd, backend = random.Random(3), MemoryBackend()
    first = PackWriter(backend, KEY, POOL_BLOB)
    kept = [blob(rnd, 3 * POOL_BLOB // 2), blob(rnd, 100)]
    for blob_id, sealed in kept:
        first.add(blob_id, DATA, sealed, 0)
    pack_id, locations = first.finish()
    # `first` is still alive (a blob sink keeps it until it retires it), yet the next pack reuses its pages:
    # overwrite them all with other bytes.
    second = PackWriter(backend, KEY, POOL_BLOB)
    for blob_id, sealed in [blob(rnd, 3 * POOL_BLOB // 2), blob(rnd, 3 * POOL_BLOB // 2)]:
        second.add(blob_id, DATA, sealed, 0)
    data = backend.get(pack_name(pack_id))
    for blob_id, sealed in kept:
        loc = locations[blob_id]
        assert first.sealed(blob_id) == bytes(sealed) == data[loc.offset : loc.offset + loc.length]
        open_blob(KEY, blob_id, first.sealed(blob_id), "pack")
    assert first.sealed(os.urandom(32)) is None


@linux_only
def test_a_kept_buffer_holds_no_pages_past_the_target():
    pool, target = PackBuffers(), 1 << 20
    buf = pool.take(2 * target + (8 << 20))
    buf[:] = b"\x01" * len(buf)  # every page written, as a pack past its target by a large blob
    assert resident(buf) >= len(buf) - 4096
    pool.give(buf, target)
    assert resident(buf) <= target + os.sysconf("SC_PAGE_SIZE")
    assert pool.take(target) is buf  # the same map, for the next pack
    assert buf[:target] == b"\x01" * target and buf[target:] == bytes(len(buf) - target)


@linux_only
def test_a_forked_child_does_not_inherit_a_pack_buffer():
    buf = anonymous_map(4 << 20)
    buf[:] = b"\x02" * len(buf)
    start = address(buf)
    pid = os.fork()
    if pid == 0:  # the child only looks at its own maps: touching the buffer would fault
        os._exit(0 if not mapped(start) else 1)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert mapped(start) and resident(buf) == len(buf)


def test_tree_packs_are_full_at_the_tree_size_and_data_packs_at_the_target():
    rnd, backend = random.Random(4), MemoryBackend()
    target = 4 * TREE_PACK_SIZE
    tree, data = PackWriter(backend, KEY, target), PackWriter(backend, KEY, target)
    while not tree.full():
        blob_id, sealed = blob(rnd, 200 << 10)
        tree.add(blob_id, TREE if len(tree) % 2 else DELTA, sealed, 0)
        data.add(blob_id, DATA, sealed, 0)
    assert TREE_PACK_SIZE <= tree.size < TREE_PACK_SIZE + (256 << 10)
    assert not data.full()
    while not data.full():
        blob_id, sealed = blob(rnd, 1 << 20)
        data.add(blob_id, DATA, sealed, 0)
    assert target <= data.size < target + (2 << 20)
    # A pack that takes one data blob fills to the target, whatever came first.
    mixed = PackWriter(backend, KEY, target)
    for kind in (TREE, DATA):
        blob_id, sealed = blob(rnd, TREE_PACK_SIZE)
        mixed.add(blob_id, kind, sealed, 0)
    assert not mixed.full()
    for w in (tree, data, mixed):
        w.finish()
    gc.collect()
