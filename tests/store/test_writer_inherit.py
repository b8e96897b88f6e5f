"""A shard whose files make the parent's tree node (an unchanged re-import, store/writer.py `put_parent_shard`) is
sealed as the parent's node: no encode, no hash, no put, and the new snapshot's tree names the same node. Anything
else staged in that shard afterwards makes the seal encode it again. Real repository, real packs and cache."""

from __future__ import annotations

from phonevault.store import writer as writer_mod
from phonevault.store.records import DeviceRecord
from phonevault.store.trees import decode_shard, load_tree, read_root
from phonevault.store.writer import SnapshotWriter

DEVICE = "udid-inherit"


def _first(repo) -> None:
    with SnapshotWriter(repo, DEVICE, DeviceRecord(), incremental=False) as w:
        for shard in ("ab", "cd"):
            for k in range(5):
                w.put_bytes(f"{shard}/file-{k}", 0o100644, 1_000 + k, b"%s %d" % (shard.encode(), k))
            w.seal_shard(shard)
        w.commit("test")


def test_an_inherited_shard_keeps_the_parent_node_and_another_is_written_again(repo, monkeypatch) -> None:
    _first(repo)
    written: list[str] = []
    real = writer_mod.write_shard
    monkeypatch.setattr(writer_mod, "write_shard", lambda shard, *a: written.append(shard) or real(shard, *a))
    with SnapshotWriter(repo, DEVICE, DeviceRecord(), incremental=False) as w:
        parent_tree = w.parent.tree
        refs = {r.shard: r for r in read_root(parent_tree, repo.get_blob)}
        for shard in ("ab", "cd"):
            entries = decode_shard(repo.get_blob(refs[shard].node), shard)
            assert w.put_parent_shard(refs[shard].node, entries)
        w.put_bytes("cd/late", 0o100644, 7, b"staged after the parent's shard")  # cd is no longer the parent's
        for shard in ("ab", "cd"):
            w.seal_shard(shard)
        record = w.commit("test")
    assert written == ["cd"]  # ab's node was reused as it was, cd encoded again
    now = {r.shard: r for r in read_root(record.tree, repo.get_blob)}
    assert now["ab"] == refs["ab"]
    assert now["cd"].node != refs["cd"].node and now["cd"].files == refs["cd"].files + 1
    state, before = load_tree(record.tree, repo.get_blob), load_tree(parent_tree, repo.get_blob)
    assert set(state) == set(before) | {"cd/late"}
    assert all(state[p] == e for p, e in before.items())
    assert record.stats.added == 1 and record.stats.removed == 0 and record.stats.modified == 0


def test_a_node_that_does_not_match_stages_nothing(repo) -> None:
    _first(repo)
    with SnapshotWriter(repo, DEVICE, DeviceRecord(), incremental=False) as w:
        refs = {r.shard: r for r in read_root(w.parent.tree, repo.get_blob)}
        entries = decode_shard(repo.get_blob(refs["ab"].node), "ab")
        assert not w.put_parent_shard(refs["cd"].node, entries)
        assert w.get("ab/file-0") is None and w._inherited == {}
