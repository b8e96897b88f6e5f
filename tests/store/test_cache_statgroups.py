"""The stat cache written STAT_GROUP files a write transaction (store/derived.py `stat_put_many`): a folder whose
files fall into two transactions keeps both parts, a file's newer stat replaces its older one, and every entry reads
back exactly as written (an oracle dict of what was put)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store import derived

_vaults = itertools.count()
files = st.tuples(
    st.sampled_from(["ab/", "cd/", "ab/cd/", ""]),
    st.sampled_from(["f1", "f2", "f3", "photo.jpg"]),
    st.integers(0, 3),  # the stat fields' version: another one is another stat of the same file
    st.lists(st.binary(min_size=32, max_size=32), max_size=3),
)


@pytest.mark.parametrize("group", [1, 3, 4096])
@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(files, max_size=12), max_size=4))
def test_entries_read_back_as_last_written_whatever_the_grouping(make_repo, group, calls) -> None:
    repo = make_repo(f"v{next(_vaults)}")
    saved, derived.STAT_GROUP = derived.STAT_GROUP, group
    try:
        cache, oracle = repo.cache, {}
        for call in calls:
            items = [(f"/src/{folder}{name}\0{v}".encode(), chunks) for folder, name, v, chunks in call]
            cache.stat_put_many(iter(items))  # a generator, as an import passes it
            for key, chunks in items:
                path, _, fields = key.partition(b"\0")
                oracle[path] = (fields, chunks)
        for path, (fields, chunks) in oracle.items():
            assert cache.stat_get(path + b"\0" + fields) == chunks
            assert cache.stat_get(path + b"\0" + fields + b"9") is None  # another stat of the file: no entry
        assert cache.notes == []
    finally:
        derived.STAT_GROUP = saved
        repo.close()


def test_a_transaction_writes_at_most_stat_txn_bytes_of_folder_values(make_repo) -> None:
    """One new file in each of 40 large folders (a day-2 import at 1 000 000 files: ~3 900 files a folder) is not one
    transaction rewriting every folder's value, but several of at most STAT_TXN_BYTES (+ the folder that crossed it)."""
    repo = make_repo("large-folders")
    cache = repo.cache
    try:
        chunk = bytes(32)
        for f in range(40):  # ~20 KB a folder's value: one value (under STAT_BUCKET_BYTES), all rewritten
            cache.stat_put_many((f"/src/{f:02x}/{n:040x}\0s".encode(), [chunk]) for n in range(200))
        value = len(cache.env.begin(db=cache._stat).get(cache._stat_key(b"/src/00/")))
        saved, derived.STAT_TXN_BYTES = derived.STAT_TXN_BYTES, 5 * value
        try:
            before = cache.env.info()["last_txnid"]
            cache.stat_put_many((f"/src/{f:02x}/new\0s".encode(), [chunk]) for f in range(40))
            txns = cache.env.info()["last_txnid"] - before
        finally:
            derived.STAT_TXN_BYTES = saved
        assert txns == 8  # 5 folders a transaction (the fifth reaches the limit): 40 / 5
        for f in range(40):
            assert cache.stat_get(f"/src/{f:02x}/new\0s".encode()) == [chunk]
            assert cache.stat_get(f"/src/{f:02x}/{199:040x}\0s".encode()) == [chunk]
    finally:
        repo.close()
