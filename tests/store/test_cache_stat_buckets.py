"""The stat cache's buckets (store/derived.py `StatEntries`, format: store/cache.py): a folder whose entries pack past
STAT_BUCKET_BYTES is split into buckets of consecutive names under a root of their starts. Every entry reads back as
last written (an oracle dict), in walk order or any other; each bucket holds the names from its start to the next
and packs into the limit (or is one entry); a change of one file rewrites one bucket, not the folder; lookups in walk
order hold one bucket; a cache of the stat format before buckets has its stat entries dropped on opening, its blob
index kept. Real LMDB cache in tmp_path."""

from __future__ import annotations

import itertools
import tracemalloc
from bisect import bisect_right

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store import derived
from phonevault.store.backends.local import LocalBackend
from phonevault.store.repository import Repository
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.mobilesync import import_folder
from tests.conftest import FAST_SCRYPT, PASSWORD

_vaults = itertools.count()
CHUNK = bytes(range(32))


@pytest.fixture
def small_buckets():
    saved, derived.STAT_BUCKET_BYTES = derived.STAT_BUCKET_BYTES, 400
    yield 400
    derived.STAT_BUCKET_BYTES = saved


def _values(cache) -> dict[bytes, bytes]:
    with cache.env.begin(db=cache._stat) as txn:
        return {bytes(k): bytes(v) for k, v in txn.cursor()}


def _layout(cache, folder: bytes) -> list[tuple[bytes, dict]]:
    """[(bucket start, its entries)] of a folder as stored (one value: [(b"", entries)])."""
    with cache.env.begin(db=cache._stat) as txn:
        k = cache._stat_key(folder)
        root = cache._unpack(b"stat", k, txn.get(k))
        if isinstance(root, dict):
            return [(b"", root)]
        out = []
        for start in root:
            bk = cache._stat_key(folder + b"\0" + start)
            out.append((start, cache._unpack(b"stat", bk, txn.get(bk))))
        return out


names = st.binary(min_size=1, max_size=6).filter(lambda b: b"/" not in b and b"\0" not in b)
files = st.tuples(
    st.sampled_from([b"/src/ab/", b"/src/cd/", b"/src/"]),
    names,
    st.integers(0, 2),  # the stat fields' version
    st.lists(st.just(CHUNK), max_size=12),  # up to ~400 bytes: some entries alone pass the limit
)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(files, max_size=40), min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_buckets_read_back_as_last_written_and_keep_their_ranges(make_repo, small_buckets, calls, rnd) -> None:
    repo = make_repo(f"v{next(_vaults)}")
    try:
        cache, oracle = repo.cache, {}
        for call in calls:
            items = [(folder + name + b"\0%d" % v, chunks) for folder, name, v, chunks in call]
            cache.stat_put_many(iter(items))
            for key, chunks in items:
                path, _, fields = key.partition(b"\0")
                oracle[path] = (fields, chunks)
            paths = sorted(oracle)  # walk order, then any order
            for path in paths + rnd.sample(paths, len(paths)):
                fields, chunks = oracle[path]
                assert cache.stat_get(path + b"\0" + fields) == chunks
                assert cache.stat_get(path + b"\0" + fields + b"9") is None
        for folder in {p[: p.rfind(b"/") + 1] for p in oracle}:
            layout = _layout(cache, folder)
            starts = [s for s, _ in layout]
            assert starts[0] == b"" and starts == sorted(set(starts))
            stored = {}
            for i, (_start, entries) in enumerate(layout):
                assert entries, "no bucket is empty"
                assert all(bisect_right(starts, name) - 1 == i for name in entries)
                assert len(msgpack.packb(entries)) <= small_buckets or len(entries) == 1 or len(layout) == 1
                stored.update(entries)
            expect = {p[len(folder) :]: [f, c] for p, (f, c) in oracle.items() if p[: p.rfind(b"/") + 1] == folder}
            assert stored == expect
            if len(layout) == 1:
                assert len(msgpack.packb(layout[0][1])) <= small_buckets or len(layout[0][1]) == 1
        assert cache.notes == []
    finally:
        repo.close()


def _big_folder(cache, n: int = 3900) -> list[bytes]:
    """A MobileSync folder of a 1 000 000-file phone: n files named by 40 hex digits, one chunk each."""
    keys = [
        b"/src/ab/ab%038x\x0012345\x001700000000000000000\x0042\x001700000000000000000" % (i * 7919) for i in range(n)
    ]
    keys.sort()
    cache.stat_put_many((k, [CHUNK]) for k in keys)
    return keys


def test_a_change_of_one_file_rewrites_one_bucket_not_the_folder(make_repo) -> None:
    repo = make_repo("one-change")
    cache = repo.cache
    try:
        keys = _big_folder(cache)
        before = _values(cache)
        assert sum(map(len, before.values())) > 10 * derived.STAT_BUCKET_BYTES  # the folder is ~390 KB
        assert max(map(len, before.values())) <= derived.STAT_BUCKET_BYTES + 64
        changed = keys[1234].replace(b"\x0042\x00", b"\x0043\x00")
        cache.stat_put_many([(changed, [bytes(32)])])
        after = _values(cache)
        rewritten = [k for k in after if before.get(k) != after[k]]
        assert 1 <= len(rewritten) <= 3  # the bucket, or its two halves and the root
        assert sum(len(after[k]) for k in rewritten) <= derived.STAT_BUCKET_BYTES + 4096
        assert cache.stat_get(changed) == [bytes(32)] and cache.stat_get(keys[1234]) is None
        assert all(cache.stat_get(k) == [CHUNK] for i, k in enumerate(keys) if i != 1234)
    finally:
        repo.close()


def test_lookups_in_walk_order_hold_one_bucket(make_repo) -> None:
    """tracemalloc peak of looking up every file of a 3 900-file folder (~500 KB of values) in name order: 2.56 MB
    with the folder one value decoded whole (78d758f), 0.28 MB with one bucket (~245 entries, ~32 KB packed) held."""
    repo = make_repo("walk")
    cache = repo.cache
    try:
        keys = _big_folder(cache)
        cache.stat_get(b"/src/cd/x\0s")  # the read transaction begun, nothing of the folder held
        tracemalloc.start()
        try:
            assert all(cache.stat_get(k) == [CHUNK] for k in keys)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 400_000
        held = cache._folder[4]
        assert 0 < len(held) < 400
    finally:
        repo.close()


def test_a_cache_of_the_stat_format_before_buckets_drops_its_stat_entries_keeps_its_index(tmp_path) -> None:
    def vault(init: bool) -> Repository:
        if init:
            return Repository.init(
                LocalBackend(tmp_path / "v"), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=tmp_path / "c"
            )
        return Repository.open(LocalBackend(tmp_path / "v"), PASSWORD, cache_root=tmp_path / "c")

    src = SyntheticPhone(seed=7, size=1 << 20).write_backup(tmp_path / "src", day=0)
    repo = vault(init=True)
    import_folder(repo, src)
    cache = repo.cache
    blobs = cache.env.begin().stat(cache._blobs)["entries"]
    assert blobs > 0 and cache.env.begin().stat(cache._stat)["entries"] > 0
    with cache.env.begin(write=True, db=cache._meta) as txn:
        assert txn.delete(cache._ck.key(b"meta", b"stat-format"))  # what a cache written before buckets lacks
    repo.close()
    repo = vault(init=False)
    try:
        assert repo.cache.env.begin().stat(repo.cache._stat)["entries"] == 0
        assert repo.cache.env.begin().stat(repo.cache._blobs)["entries"] == blobs
        assert import_folder(repo, src).reused_files == 0 and repo.notes == []
        assert import_folder(repo, src).reused_files > 0
    finally:
        repo.close()


@pytest.mark.parametrize(
    "damage",
    [
        lambda starts: [b"", *reversed(starts[1:])],  # starts out of order
        lambda starts: starts[1:],  # not beginning at b""
        lambda starts: [b"", 7],  # a start that is no name
    ],
)
def test_a_damaged_root_is_the_cache_s_damage_not_a_misread(make_repo, damage) -> None:
    """A root whose starts are not sorted names from b"" is CacheCorrupt: the cache is rebuilt, said in one line of
    notes, the lookup a miss, and the rebuilt cache takes entries again."""
    repo = make_repo(f"damaged-{next(_vaults)}")
    cache = repo.cache
    try:
        keys = _big_folder(cache, 1000)
        k = cache._stat_key(b"/src/ab/")
        with cache.env.begin(db=cache._stat) as txn:
            starts = cache._unpack(b"stat", k, txn.get(k))
        assert isinstance(starts, list) and len(starts) > 2
        cache._write(lambda txn: cache._put_value(txn, k, msgpack.packb(damage(starts))))
        cache._stat_gen += 1
        assert cache.stat_get(keys[500]) is None
        assert len(cache.notes) == 1 and "neither a folder's entries nor its buckets' starts" in cache.notes[0]
        cache.stat_put_many([(keys[500], [CHUNK])])
        assert cache.stat_get(keys[500]) == [CHUNK] and cache.stat_get(keys[501]) is None
    finally:
        repo.close()


def test_a_file_whose_entry_alone_passes_the_limit_is_not_held_after_its_lookup(make_repo) -> None:
    """A backup folder's Manifest.db (890 MB at 1 000 000 files: ~60 000 chunk ids, ~4.4 MB decoded) is looked up once
    before the Manifest parse child is forked; holding its decoded bucket, the child inherited it. Its neighbours'
    small bucket is held as before."""
    repo = make_repo("big-entry")
    cache = repo.cache
    try:
        big = [i.to_bytes(32, "big") for i in range(20_000)]
        small = [(b"/src/Info.plist\0s", [CHUNK]), (b"/src/Status.plist\0s", [CHUNK])]
        cache.stat_put_many([(b"/src/Manifest.db\0s", big), *small])
        tracemalloc.start()
        try:
            assert cache.stat_get(b"/src/Manifest.db\0s") == big
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert held < 64_000  # the bucket decoded: ~1.5 MB
        assert cache._folder is None
        assert cache.stat_get(b"/src/Info.plist\0s") == [CHUNK] and cache._folder is not None
        assert cache.stat_get(b"/src/Manifest.db\0s") == big  # read again when asked again
    finally:
        repo.close()
