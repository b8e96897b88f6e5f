"""Where a large file's chunks are, as export's second thread holds them while it writes the file (sync/writeout.py
`Located`): the same locations as the list of BlobLocations they replace, in a fraction of its memory, and the
file written from them bit for bit."""

from __future__ import annotations

import os
import random
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from phonevault.store.packs import BlobLocation
from phonevault.sync.writeout import LargeWriter, Located
from tests.sync.test_export_chunks import stored_files

locations = st.builds(
    BlobLocation,
    pack=st.sampled_from(["ab" * 32, "cd" * 32, "0f" * 32]),
    offset=st.integers(0, (1 << 63) - 1),
    length=st.integers(0, 1 << 40),
    raw_length=st.integers(0, 1 << 40),
    type=st.integers(0, 255),
)


@given(st.lists(locations, max_size=50))
def test_located_gives_back_each_location_it_was_given(given_locations):
    located = Located()
    for loc in given_locations:
        located.append(loc)
    assert len(located) == len(given_locations)
    assert [located[i] for i in range(len(located))] == given_locations


def test_located_holds_a_manifest_dbs_locations_in_a_fraction_of_a_lists_memory():
    """60 968 chunks in 12 packs (a 1 000 000-file phone's Manifest.db): a list of BlobLocations held ~270 bytes a
    chunk (16.6 MB); Located holds 33 and its arrays' slack."""
    rng = random.Random(3)
    packs = [rng.randbytes(32).hex() for _ in range(12)]

    def location() -> BlobLocation:  # a new name each time, as each cache lookup gives
        return BlobLocation("".join(rng.choice(packs)), rng.randrange(1 << 32), 1000 + rng.randrange(1 << 20), 5000, 0)

    n = 60_968
    tracemalloc.start()
    try:
        as_list = [location() for _ in range(n)]
        listed = tracemalloc.get_traced_memory()[0]
        del as_list
        base = tracemalloc.get_traced_memory()[0]
        located = Located()
        for _ in range(n):
            located.append(location())
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert len(located) == n
    assert held < 40 * n < listed // 5, (held / n, listed / n)


def test_a_large_file_of_many_chunks_is_written_from_its_locations_bit_exact(repo, tmp_path):
    (big,) = stored_files(repo, [(24 << 20, True)])
    assert len(big.chunks) > 3
    local = str(tmp_path / "big")
    with LargeWriter(repo) as large:
        assert large.offer(big, local)
        assert large.returned() == []
    with open(local, "rb") as f:
        assert f.read() == b"".join(repo.read_file(big))
    assert os.stat(local).st_mtime_ns == big.mtime_ns
