"""A coarse chunker's buffer (10 MiB, whole 2 MiB pages) is advised for transparent huge pages, a fine one's (1.07 MiB)
is not; the chunks are the same either way (tests/store/test_chunker.py). Read from the kernel's own account of the
mapping (/proc/self/smaps VmFlags: `hg` = MADV_HUGEPAGE), whether or not huge pages were free to back it."""

from __future__ import annotations

import mmap
import os

import pytest

from phonevault.store.chunker import COARSE, FINE, StreamChunker
from tests.store.smaps import mapping_field

pytestmark = pytest.mark.skipif(
    not hasattr(mmap, "MADV_HUGEPAGE")
    or not os.path.exists("/proc/self/smaps")
    or not os.path.exists("/sys/kernel/mm/transparent_hugepage"),
    reason="Linux with transparent huge pages",
)


def vm_flags(buf: mmap.mmap) -> set[str]:
    return set(mapping_field(buf, "VmFlags").split())


def test_a_coarse_buffer_asks_for_huge_pages_and_a_fine_one_does_not():
    data = os.urandom(3 << 19)
    coarse, fine = StreamChunker(COARSE), StreamChunker(FINE)
    assert list(coarse.feed(data)) == []  # below the cut threshold: all still in the buffer
    list(fine.feed(data[: 512 << 10]))
    assert "hg" in vm_flags(coarse._buf)
    assert "hg" not in vm_flags(fine._buf)
    assert b"".join(coarse.finish()) == data
