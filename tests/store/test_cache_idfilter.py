"""The cache's id filter (store/residency.py IdFilter, store/cache.py `Cache.lookup`): a lookup it answers is the
answer LMDB would give. It never lacks an id the index holds, whether the id was loaded before the filter was built,
after it (this process's add_index), or by another process (its load shows as another count of entries, which drops
the filter at this process's next read transaction or write)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.packs import DATA, BlobLocation
from phonevault.store.residency import IdFilter
from tests.conftest import PASSWORD

ids = st.binary(min_size=32, max_size=32)
_vaults = itertools.count()


def _loc(n: int) -> BlobLocation:
    return BlobLocation(f"{n:064x}", n, 10, 10, DATA)


@given(st.lists(ids, max_size=200), st.lists(ids, max_size=200))
def test_the_filter_holds_every_id_added(added: list[bytes], others: list[bytes]) -> None:
    f = IdFilter()
    for i in added:
        f.add(i)
    assert all(f.may_hold(i) for i in added)
    # An id it was never given is held only if it shares its 24-bit prefix with one that was.
    prefixes = {i[:3] for i in added}
    assert all(f.may_hold(i) == (i[:3] in prefixes) for i in others)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.lists(ids, max_size=40), st.lists(ids, max_size=40)), min_size=1, max_size=6))
def test_lookups_agree_with_the_index_as_it_is_loaded(make_repo, rounds) -> None:
    """Rounds of (ids loaded by add_index, ids looked up): every lookup gives what was loaded, or None; the filter is
    built at some miss (a fresh index: the first) and kept up by each load after it."""
    repo = make_repo(f"v{next(_vaults)}")
    try:
        cache, held, n = repo.cache, {}, 0
        for load, asked in rounds:
            batch = {}
            for i in load:
                n += 1
                batch[i] = _loc(n)
            cache.add_index(f"index-{n}", batch)
            held.update(batch)
            for i in [*asked, *load]:
                assert cache.lookup(i) == held.get(i)
        assert cache.lookup(b"\xff" * 33) is None  # no blob id: a miss, whatever was loaded
        assert cache.notes == []
    finally:
        repo.close()


def test_a_fresh_index_builds_the_filter_at_its_first_miss_and_keeps_it_up(repo) -> None:
    cache = repo.cache
    assert cache.lookup(b"a" * 32) is None
    assert cache._filter is not None
    cache.add_index("index-a", {b"a" * 32: _loc(1)})
    assert cache._filter is not None and cache._filter.may_hold(b"a" * 32)
    assert cache.lookup(b"a" * 32) == _loc(1)


_OTHER = """
import sys
from pathlib import Path
from phonevault.store.backends.local import LocalBackend
from phonevault.store.packs import DATA, BlobLocation
from phonevault.store.repository import Repository
repo = Repository.open(LocalBackend(Path(sys.argv[1])), sys.argv[2], cache_root=Path(sys.argv[3]))
repo.cache.add_index("index-other", {b"x" * 32: BlobLocation("%064x" % 9, 9, 10, 10, DATA)})
repo.close()
"""


def _other_process_loads(repo) -> None:
    root = Path(__file__).parents[2]
    where = [repo.backend.location, PASSWORD, str(repo.cache.path.parent)]
    subprocess.run([sys.executable, "-c", _OTHER, *where], check=True, cwd=root.parent, env=_env(root))


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root.parent), *sys.path])}


def test_another_process_load_drops_the_filter_at_the_next_read_transaction(repo) -> None:
    cache = repo.cache
    cache.add_index("index-a", {b"a" * 32: _loc(1)})
    assert cache.lookup(b"x" * 32) is None and cache._filter is not None  # built, without x
    _other_process_loads(repo)  # it clears the index (the vault has no index-a) and loads x
    assert cache.lookup(b"x" * 32) is None  # this thread's read transaction began before: x is not in it yet
    seen: list[object] = []
    reader = threading.Thread(target=lambda: seen.extend([cache.lookup(b"x" * 32), cache.lookup(b"a" * 32)]))
    reader.start()  # a thread's first lookup begins a read transaction: it sees the other process's commit
    reader.join(30)
    assert seen == [BlobLocation(f"{9:064x}", 9, 10, 10, DATA), None]  # (the miss of a built the filter again)


def test_another_process_load_drops_the_filter_at_this_process_load(repo) -> None:
    cache = repo.cache
    cache.add_index("index-a", {b"a" * 32: _loc(1)})
    assert cache.lookup(b"x" * 32) is None and cache._filter is not None
    _other_process_loads(repo)
    cache.add_index("index-b", {b"b" * 32: _loc(2)})  # its write transaction sees the other's entries counted
    assert cache.lookup(b"x" * 32) == BlobLocation(f"{9:064x}", 9, 10, 10, DATA)
    assert cache.lookup(b"b" * 32) == _loc(2)
