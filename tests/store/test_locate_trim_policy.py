"""One trim policy for the cache's mapped pages while blobs are located (store/repository.py `locate_needed`): every
TRIM_LOOKUPS lookups the pages are unmapped if the process's file-backed memory grew TRIM_GROWN since the last
unmapping. A large index is unmapped as its lookups map it (bounded whatever its size: check's 8 MiB pagemap test,
tests/store/test_check_memory.py, and export's, tests/sync/test_export_chunks.py); a small one, mapped already, is
left mapped rather than unmapped and faulted in again. Real LMDB cache, this process's /proc/self/smaps."""

from __future__ import annotations

import sys

import pytest

from phonevault.store.repository import TRIM_GROWN, TRIM_LOOKUPS

from .test_cache_trim import _index
from .test_spilled_trim import mapped

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="resident pages are read from /proc/self/smaps")


def test_a_small_index_once_mapped_stays_mapped(repo) -> None:
    ids = _index(repo, 1_000)
    mdb = (repo.cache.path / "data.mdb").resolve()
    repo.cache.trim()
    assert all(repo.cache.lookup(b) is not None for b in ids)  # maps all of it
    warm = mapped(mdb)
    assert 0 < warm < TRIM_GROWN // 2, warm
    for b in ids[: 3 * TRIM_LOOKUPS]:
        assert repo.locate_needed(b) is not None
    assert mapped(mdb) == warm  # three policy checks, nothing grown: nothing unmapped


def test_a_large_index_is_unmapped_as_lookups_map_it(repo) -> None:
    ids = _index(repo, 100_000)
    mdb = (repo.cache.path / "data.mdb").resolve()
    spread = ids[::20]  # lookups all over the index
    repo.cache.trim()
    most = 0
    for n, b in enumerate(spread, 1):
        assert repo.locate_needed(b) is not None
        if n % 8 == 0:
            most = max(most, mapped(mdb))
    repo.cache.trim()
    assert all(repo.cache.lookup(b) is not None for b in spread)  # the same lookups, never unmapped
    whole = mapped(mdb)
    assert most < whole / 2, (most, whole)
