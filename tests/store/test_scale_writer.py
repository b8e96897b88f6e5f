"""The shard-at-a-time writer: writing shards as they complete (`seal_shard`) gives the very snapshot a writer that
holds everything until its commit gives, and the spool that keeps an import's stat updates out of memory."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.check import check
from phonevault.store.errors import CacheCorrupt
from phonevault.store.projections import fold_state
from phonevault.store.records import DeviceRecord
from phonevault.store.trees import DELTA_GROUP, FileEntry, load_tree, read_root, shard_of
from phonevault.store.writer import SnapshotWriter

DEV = "udid-scale"
INFO = DeviceRecord(name="scale")

shards = st.sampled_from(["", "00", "0a", "ff", "Snapshot"])
names = st.text("abcdef0123", min_size=1, max_size=6)
paths = st.tuples(shards, names).map(lambda t: f"{t[0]}/{t[1]}" if t[0] else t[1])
folder = st.dictionaries(paths, st.binary(max_size=300), max_size=25)


def commit(repo, files: dict[str, bytes], *, seal: bool) -> bytes:
    """Stage `files`; with `seal`, write each shard as soon as its files are staged (top level at the commit)."""
    with SnapshotWriter(repo, DEV, INFO, incremental=False) as w:
        by_shard: dict[str, list[str]] = {}
        for p in sorted(files):
            by_shard.setdefault(shard_of(p), []).append(p)
        for shard in sorted(by_shard, key=lambda s: (s == "", s)):
            for p in by_shard[shard]:
                fw = w.open_file(p, 0o100644, len(p))
                fw.write(files[p])
                fw.close()
            if seal and shard:
                w.seal_shard(shard)
        return w.commit("test").id


@settings(max_examples=8)
@given(day0=folder, day1=folder)
def test_sealing_shards_one_at_a_time_writes_the_same_snapshot(make_repo, day0, day1):
    """Property: over two days (so the second diffs against the first shard by shard, including shards that
    appear or vanish), sealed and unsealed writers commit the same trees, the fold of the deltas equals the tree,
    and the vault checks clean."""
    tag = os.urandom(4).hex()  # one function-scoped fixture serves every example
    a, b = make_repo(f"a{tag}"), make_repo(f"b{tag}")
    trees = {}
    for repo, seal in ((a, False), (b, True)):
        for files in (day0, day1):
            commit(repo, files, seal=seal)
        view = repo.view(repo.device_key(DEV), refresh=True)
        # tree and chunk ids are keyed by each vault's own key: compare what the trees hold, shard by shard
        trees[seal] = [
            (
                [(r.shard, r.files, r.size) for r in read_root(s.tree, repo.get_blob)],
                {
                    p: (e.size, e.mode, e.mtime_ns, b"".join(repo.read_file(e)))
                    for p, e in load_tree(s.tree, repo.get_blob).items()
                },
            )
            for s in view.live()
        ]
        for s in view.live():
            assert fold_state(view, s.id, repo.get_blob) == load_tree(s.tree, repo.get_blob)
        assert check(repo).ok
        latest = view.head_record
        assert latest.stats.files == len(day1) and latest.stats.size == sum(map(len, day1.values()))
    assert trees[True] == trees[False]
    b.close()
    a.close()


def test_a_sealed_shard_takes_no_more_entries(repo):
    with SnapshotWriter(repo, DEV, INFO, incremental=False) as w:
        fw = w.open_file("ab/one")
        fw.write(b"x")
        fw.close()
        w.seal_shard("ab")
        assert w.get("ab/one") is None  # it left memory
        with pytest.raises(ValueError, match="already written"):
            w.open_file("ab/two").close()
        with pytest.raises(ValueError, match="already written"):
            w.add_dir("ab/sub")
        with pytest.raises(ValueError, match="already written"):
            w.seal_shard("ab")
        fw = w.open_file("cd/one")  # other shards still take entries
        fw.write(b"y")
        fw.close()
        snap = w.commit("test")
    assert sorted(load_tree(snap.tree, repo.get_blob)) == ["ab/one", "cd/one"]


def test_many_changes_stream_into_several_delta_blobs(repo):
    """More changes than one delta blob holds: the delta stream puts each full group as it fills."""
    files = {f"{i % 7:02x}/{i:06d}": b"" for i in range(DELTA_GROUP + 10)}
    sid = commit(repo, files, seal=True)
    view = repo.view(repo.device_key(DEV), refresh=True)
    snap = view.get(sid)
    assert len(snap.deltas) == 2
    assert fold_state(view, sid, repo.get_blob) == load_tree(snap.tree, repo.get_blob)


def test_spool_gives_back_its_batches_and_refuses_a_changed_one(repo):
    with repo.cache.spool() as spool:
        spool.append([[b"k1", [b"c" * 32]], [b"k2", []]])
        spool.append([])  # an empty batch is not written
        spool.append([[b"k3", [b"d" * 32]]])
        assert list(spool) == [[[b"k1", [b"c" * 32]], [b"k2", []]], [[b"k3", [b"d" * 32]]]]
        assert list(spool) == list(spool)  # read again from the start
        spool._file.seek(8)
        spool._file.write(b"\xff")
        with pytest.raises(CacheCorrupt):
            list(spool)


def test_entries_left_after_commit_are_gone(repo):
    """A committed writer holds no staged entries (an import's memory does not outlive its commit)."""
    with SnapshotWriter(repo, DEV, INFO, incremental=False) as w:
        w.put_entry(FileEntry("ab/empty", 0, 0o100644, 0))
        w.commit("test")
        assert len(w.tree) == 0


heads = st.sampled_from([b"", b"bplist00", b"SQLite format 3\x00", b"\xff\xd8\xff", b"{", b"hello "])
sizes = st.sampled_from([0, 1, 63, 64, 2047, 2048, 2049, 9000, 70_000, (256 << 10) - 1, 256 << 10, (256 << 10) + 1])


@settings(max_examples=40)
@given(head=heads, size=sizes, seed=st.integers(0, 2**32 - 1), block=st.sampled_from([1000, 1 << 20]))
def test_a_file_given_whole_is_chunked_and_staged_as_a_streamed_one(repo, head, size, seed, block):
    """put_bytes (import's small files, read by reader threads) skips the chunker below a profile's minimum chunk:
    its entry must be the one open_file + write + close gives the same bytes, at every size around the minimums."""
    body = head + (random_text(seed, size) if head in (b"{", b"hello ") else os.urandom(size))
    data = body[:size] if size >= len(head) else head[:size]
    with SnapshotWriter(repo, DEV, INFO, incremental=False) as w:
        whole = w.put_bytes("00/whole", 0o100644, 7, data)
        fw = w.open_file("00/streamed", 0o100644, 7)
        for i in range(0, len(data), block):
            fw.write(data[i : i + block])
        streamed = fw.close()
        assert whole.chunks == streamed.chunks and whole.size == streamed.size == len(data)
        assert b"".join(w.read_file(whole)) == data


def random_text(seed: int, size: int) -> bytes:
    rnd = random.Random(seed)
    return bytes(rnd.choice(b"abcdefgh ij\n") for _ in range(size))
