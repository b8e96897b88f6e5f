"""A coarse chunker cuts from CUT_AHEAD (2 MiB) on, not only once a whole max chunk is buffered: a video streamed
through it maps ~3-4 MiB of its 10 MiB buffer, not all of it, and its chunks are still exactly those of one cut over
the whole file, also where a chunk runs past the buffer (a cut that frees nothing) and the file comes in small
blocks. Pages are read from the kernel's account of the buffer's mapping (/proc/self/smaps Rss)."""

from __future__ import annotations

import io
import os
import random

import pytest

from phonevault.store.chunker import COARSE, CUT_AHEAD, FEED_ROOM, HUGE_PAGE, StreamChunker, chunk_bytes
from tests.store.smaps import mapping_field


def mapped_bytes(buf) -> int:
    return int(mapping_field(buf, "Rss").split()[0]) << 10


def read_through(data: bytes, block: int) -> tuple[list, StreamChunker]:
    sc, f, out = StreamChunker(COARSE), io.BytesIO(data), []
    while sc.read_from(f, block):
        out += list(sc.ready())
    return out, sc


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux")
def test_a_streamed_file_maps_a_few_mib_of_the_buffer_not_all_of_it():
    data = random.Random(7).randbytes(48 << 20)
    whole = chunk_bytes(data, COARSE)
    out, sc = read_through(data, 1 << 20)
    mapped = mapped_bytes(sc._buf)  # pages once written stay mapped until finish: the high-water mark
    out += list(sc.finish())
    assert out == whole
    # The longest chunk still being cut, a block, and the cut-ahead: whole huge pages at most (10 MiB before)
    bound = max(len(c) for c in whole) + FEED_ROOM + CUT_AHEAD
    assert mapped <= -(-bound // HUGE_PAGE) * HUGE_PAGE
    assert mapped < COARSE.max_size


@pytest.mark.parametrize("block", [64 << 10, 1 << 20, 3 << 20])
def test_chunks_running_past_the_cut_ahead_come_out_as_one_cut_gives_them(block):
    """Zeros are cut only at max_size (8 MiB): every cut in them frees nothing until the buffer holds a whole one."""
    rnd = random.Random(block)
    data = rnd.randbytes(3 << 20) + bytes(20 << 20) + rnd.randbytes(5 << 20) + bytes(9 << 20) + rnd.randbytes(1000)
    whole = chunk_bytes(data, COARSE)
    assert max(len(c) for c in whole) == COARSE.max_size
    out, sc = read_through(data, block)
    assert out + list(sc.finish()) == whole
    sc, fed = StreamChunker(COARSE), []
    for i in range(0, len(data), block):
        fed += list(sc.feed(data[i : i + block]))
    assert fed + list(sc.finish()) == whole


def test_a_chunker_used_again_after_a_long_chunk_cuts_from_the_cut_ahead_again():
    """After a file whose last cuts freed nothing (zeros), the next file fed to the same chunker is cut from CUT_AHEAD
    on, not only past where the last file's buffer stood."""
    sc = StreamChunker(COARSE)
    zeros = bytes(5 << 20)
    assert list(sc.feed(zeros)) == []  # one cut at 5 MiB frees nothing (zeros are cut at 8 MiB): the next at 6
    assert b"".join(sc.finish()) == zeros
    data = random.Random(11).randbytes(CUT_AHEAD + (1 << 20))
    fed = list(sc.feed(data))
    assert fed  # cut at CUT_AHEAD: the chunks before the last are out already
    assert fed + list(sc.finish()) == chunk_bytes(data, COARSE)
