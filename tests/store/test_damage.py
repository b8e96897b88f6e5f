"""Damage is contained: a real vault in tmp_path, damaged by flipping, truncating and deleting its real files.

`check` names what each damage costs (per snapshot, the backup-folder paths that cannot be read back), measured
against an oracle computed from the undamaged vault; `check --repair-index` rebuilds index objects from pack headers
and deletes nothing; a damaged or lost event segment hides none of the segments after it.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.check import check, readable_tree, unreadable_files
from phonevault.store.errors import CorruptObject
from phonevault.store.events import segment_name
from phonevault.store.history import tag
from phonevault.store.index import decode_index, index_name, write_index
from phonevault.store.packs import TRAILER, pack_name
from phonevault.store.records import DeviceRecord
from phonevault.store.repair import repair_index
from phonevault.store.repository import Repository
from phonevault.store.trees import load_tree, read_root
from phonevault.store.writer import SnapshotWriter
from tests.conftest import reopen

DEV = "udid-damage"
_names = itertools.count()


@pytest.fixture
def reopened():
    """Open a vault again (closing the handle given, so its cache can be reused); closes what it opened."""
    opened: list[Repository] = []

    def again(repo: Repository, cache: Path | None = None) -> Repository:
        if cache is None:
            repo.close()
        opened.append(reopen(repo, cache))
        return opened[-1]

    yield again
    for r in opened:
        r.close()


def commit(repo, files: dict[str, bytes], *, incremental: bool = False, source: str = "test"):
    with SnapshotWriter(repo, DEV, DeviceRecord("phone"), incremental=incremental) as w:
        for path, data in files.items():
            fw = w.open_file(path)
            fw.write(data)
            fw.close()
        return w.commit(source)


def vault_file(repo, name: str) -> Path:
    return Path(repo.backend.location) / name


def flip_blob(repo, blob: bytes) -> None:
    """Flip one byte in the middle of a blob where it lies in its pack."""
    loc = repo.locate(blob)
    path = vault_file(repo, pack_name(loc.pack))
    raw = bytearray(path.read_bytes())
    raw[loc.offset + loc.length // 2] ^= 0x40
    path.write_bytes(bytes(raw))


def damage_map(report) -> dict[str, set[str]]:
    return {d.snapshot.hex(): set(d.paths) for d in report.damaged}


def files_of(repo, snap) -> dict[str, tuple[bytes, ...]]:
    return {p: e.chunks for p, e in load_tree(snap.tree, repo.get_blob).items() if not e.is_dir}


def oracle(trees: dict[str, dict[str, tuple[bytes, ...]]], bad: set[bytes]) -> dict[str, set[str]]:
    """Per snapshot, the files with at least one chunk in `bad` (snapshots losing nothing left out)."""
    out = {sid: {p for p, chunks in files.items() if bad & set(chunks)} for sid, files in trees.items()}
    return {sid: paths for sid, paths in out.items() if paths}


@pytest.fixture
def history(repo):
    """Three snapshots over two shards and top-level files, sharing most content."""
    photo, video, shared = os.urandom(3000), os.urandom(5000), os.urandom(2000)
    day0 = {"Manifest.db": b"db0" * 300, "ab/ab01": photo, "ab/ab02": shared, "cd/cd01": video, "cd/cd02": shared}
    day1 = {**day0, "Manifest.db": b"db1" * 300, "ab/ab03": os.urandom(1000)}
    day2 = {k: v for k, v in day1.items() if k != "cd/cd01"} | {"Manifest.db": b"db2" * 300}
    snaps = [commit(repo, day0), commit(repo, day1), commit(repo, day2)]
    trees = {s.hex: files_of(repo, s) for s in snaps}
    return snaps, trees


def test_a_blob_failing_authentication_names_every_snapshot_and_file_that_needs_it(repo, history, reopened):
    snaps, trees = history
    shared = trees[snaps[0].hex]["ab/ab02"][0]  # "ab/ab02" and "cd/cd02" hold the same bytes: one chunk
    flip_blob(repo, shared)
    blobs = sum(len(decode_index(repo.key, n, repo.backend.get(n))) for n, _ in repo.backend.list("index/"))
    report = check(reopened(repo), read_data=True)
    assert not report.ok
    assert damage_map(report) == oracle(trees, {shared})
    assert damage_map(report)[snaps[2].hex] == {"ab/ab02", "cd/cd02"}
    assert any(shared.hex()[:16] in e for e in report.errors)
    assert report.blobs_checked == blobs - 1  # every other blob of the pack was still read and verified


def test_a_missing_pack_names_its_files_without_reading_data(repo, history, reopened):
    snaps, trees = history
    video = trees[snaps[0].hex]["cd/cd01"][0]
    pack = repo.locate(video).pack
    in_pack = {bid for bid, loc in decode_index(repo.key, index_name(pack), repo.backend.get(index_name(pack))).items()}
    vault_file(repo, pack_name(pack)).unlink()
    report = check(reopened(repo))
    assert damage_map(report) == oracle(trees, in_pack)
    assert snaps[0].hex in damage_map(report)


def test_an_unreadable_tree_node_costs_nothing_while_the_deltas_fold(repo, history, reopened):
    snaps, trees = history
    node = next(r.node for r in read_root(snaps[1].tree, repo.get_blob) if r.shard == "ab")
    flip_blob(repo, node)
    again = reopened(repo)
    report = check(again, read_data=True)
    assert not report.ok and report.damaged == []  # day 1 and day 2 (same ab/ node) read ab/ from the fold
    assert any(node.hex()[:16] in e for e in report.errors)
    view = again.view(again.device_key(DEV))
    for s in snaps:
        entries, lost = readable_tree(again, view, s)
        assert lost == {} and {e.path: e.chunks for e in entries if not e.is_dir} == trees[s.hex]


def test_an_unreadable_tree_node_whose_fold_is_lost_too_loses_its_folder(repo, history, reopened):
    snaps, trees = history
    node = next(r.node for r in read_root(snaps[1].tree, repo.get_blob) if r.shard == "ab")
    flip_blob(repo, node)
    flip_blob(repo, snaps[0].deltas[0])  # the lineage of day 1 and day 2 goes through day 0's delta
    again = reopened(repo)
    lost = damage_map(check(again, read_data=True))
    assert lost[snaps[1].hex] == lost[snaps[2].hex] == {"ab/**"}
    assert snaps[0].hex not in lost  # day 0's tree is intact and has another ab/ node
    entries, gone = readable_tree(again, again.view(again.device_key(DEV)), snaps[1])
    assert set(gone) == {"ab/**"} and {e.path for e in entries} == {p for p in trees[snaps[1].hex] if "ab/" not in p}


def test_an_unreadable_tree_root_is_read_from_the_fold_and_is_lost_only_with_it(repo, history, reopened):
    snaps, trees = history
    flip_blob(repo, snaps[0].tree)
    again = reopened(repo)
    report = check(again, read_data=True)
    assert report.damaged == [] and not report.ok
    view = again.view(again.device_key(DEV))
    entries, lost = readable_tree(again, view, snaps[0])
    assert lost == {} and {e.path: e.chunks for e in entries if not e.is_dir} == trees[snaps[0].hex]

    for d in snaps[0].deltas:
        flip_blob(repo, d)
    again = reopened(again)
    report = check(again, read_data=True)
    lost = damage_map(report)
    assert lost[snaps[0].hex] == {"**"}
    # the later snapshots' trees are intact: their files read back, though their fold (through day 0) is lost
    assert snaps[2].hex not in lost
    assert any("do not fold" in e for e in report.errors)
    with pytest.raises(CorruptObject):
        readable_tree(again, again.view(again.device_key(DEV)), snaps[0])


@settings(max_examples=25)
@given(picks=st.sets(st.integers(0, 10_000), min_size=1, max_size=4))
def test_named_damage_is_exactly_the_files_holding_a_damaged_chunk(make_repo, reopened, picks):
    """Oracle: for random chunks flipped in place, the files named per snapshot are those holding one of them."""
    repo = make_repo(f"vault-{next(_names)}")
    contents = [os.urandom(700 + 37 * i) for i in range(8)]
    days = [
        {f"{'ab' if i % 2 else 'cd'}/f{i}": contents[i] for i in range(6)},
        {f"{'ab' if i % 2 else 'cd'}/f{i}": contents[i] for i in range(2, 8)} | {"top": contents[0]},
    ]
    snaps = [commit(repo, d) for d in days]
    trees = {s.hex: files_of(repo, s) for s in snaps}
    chunks = sorted({c for files in trees.values() for cs in files.values() for c in cs})
    bad = {chunks[i % len(chunks)] for i in picks}
    for c in bad:
        flip_blob(repo, c)
    entries = [e for s in snaps for e in load_tree(s.tree, repo.get_blob).values()]
    again = reopened(repo)
    assert damage_map(check(again, read_data=True)) == oracle(trees, bad)
    assert set(unreadable_files(again, entries)) == {p for paths in oracle(trees, bad).values() for p in paths}


def vault_names(repo) -> set[str]:
    root = Path(repo.backend.location)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_repair_index_rewrites_missing_damaged_and_disagreeing_index_objects_and_deletes_nothing(
    repo, tmp_path, reopened
):
    snaps = [commit(repo, {f"ab/f{i}": os.urandom(900), "Manifest.db": os.urandom(300)}) for i in range(3)]
    indexes = sorted(name for name, _ in repo.backend.list("index/"))
    assert len(indexes) >= 3
    missing, damaged, wrong = indexes[:3]
    vault_file(repo, missing).unlink()
    raw = bytearray(vault_file(repo, damaged).read_bytes())
    raw[len(raw) // 2] ^= 1
    vault_file(repo, damaged).write_bytes(bytes(raw))
    entries = decode_index(repo.key, wrong, repo.backend.get(wrong))
    wrong_pack = wrong.split("/", 1)[1]
    write_index(repo.backend, repo.key, wrong_pack, dict(list(entries.items())[:-1]))  # one blob left out

    fresh = reopened(repo, tmp_path / "cache-after-damage")
    assert not check(fresh).ok
    before = vault_names(repo)
    report = repair_index(fresh)
    assert {(r.index, r.reason) for r in report.written} == {
        (missing, "missing"),
        (damaged, "unreadable"),
        (wrong, "disagreed with its pack's header"),
    }
    assert report.problems == []
    assert before <= vault_names(repo)  # nothing deleted
    assert fresh.warnings == []  # what opening said of the rewritten objects no longer holds
    after = check(fresh, read_data=True)
    assert after.ok, after.errors
    for s in snaps:  # the cache serves the rebuilt index
        assert all(fresh.locate(c) is not None for cs in files_of(fresh, s).values() for c in cs)
    assert repair_index(fresh).written == []  # nothing left to repair


def test_repair_index_leaves_a_pack_with_a_damaged_header_alone(repo, tmp_path, reopened):
    commit(repo, {"ab/f": os.urandom(900)})
    name, size = next(iter(repo.backend.list("packs/")))
    path = vault_file(repo, name)
    raw = bytearray(path.read_bytes())
    raw[size - TRAILER.size - 5] ^= 1  # inside the sealed header
    path.write_bytes(bytes(raw))
    iname = index_name(name.rsplit("/", 1)[1])
    before = vault_file(repo, iname).read_bytes()
    report = repair_index(reopened(repo, tmp_path / "c2"))
    assert report.written == [] and len(report.problems) == 1 and name in report.problems[0]
    assert vault_file(repo, iname).read_bytes() == before
    # check reads the pack's blobs where the index puts them: the data is intact, only the header is not
    r = check(reopened(repo, tmp_path / "c3"), read_data=True)
    assert r.damaged == [] and r.blobs_checked >= 1
    assert any(name in e and "where its index object puts them" in e for e in r.errors), r.errors


# --- the event log --------------------------------------------------------------------------------------------


def ten_segments(repo):
    """Segments 0–9: commits and tags, so losing one loses an event of each kind around it."""
    snaps = []
    for i in range(7):
        snaps.append(commit(repo, {f"ab/f{i}": b"%d" % i * 50}, incremental=True, source=f"day{i}"))
    view = repo.view(repo.device_key(DEV), refresh=True)
    for i, s in enumerate((snaps[0], snaps[3], snaps[6])):  # not the one whose commit is damaged below
        tag(repo, view, s, [f"t{i}"])
    assert repo.view(repo.device_key(DEV), refresh=True).last_seq == 9
    return snaps


def damage_segment(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "flipped":
        raw[len(raw) // 2] ^= 1
        path.write_bytes(bytes(raw))
    elif how == "nonce flipped":
        raw[0] ^= 1
        path.write_bytes(bytes(raw))
    elif how == "truncated":
        path.write_bytes(bytes(raw[: len(raw) // 2]))
    elif how == "emptied":
        path.write_bytes(b"")
    elif how == "deleted":
        path.unlink()


@pytest.mark.parametrize("how", ["flipped", "nonce flipped", "truncated", "emptied", "deleted"])
@pytest.mark.parametrize("cache", ["warm", "cold"])
def test_a_damaged_segment_never_hides_the_ones_after_it(repo, tmp_path, reopened, how, cache):
    snaps = ten_segments(repo)
    key = repo.device_key(DEV)
    seg = segment_name(key, 5)  # commits 0–6 are segments 0–6; tags 7–9
    damage_segment(vault_file(repo, seg), how)
    r = reopened(repo, None if cache == "warm" else tmp_path / "cold-cache")
    view = r.view(key, refresh=True)
    seen = {s.id for s in view.snapshots}
    assert snaps[5].id not in seen or (cache == "warm" and how == "flipped")  # a cached intact copy may serve it
    assert {s.id for i, s in enumerate(snaps) if i != 5} <= seen  # 0–4 and 6 (after the damage) are there
    assert view.head == snaps[6].id and view.last_seq == 9
    assert sorted(t for s in view.snapshots for t in s.tags) == ["t0", "t1", "t2"]  # segments 7–9
    report = check(r)
    assert any(seg in e for e in report.errors), report.errors  # named, even when the cache held a good copy
    if not (cache == "warm" and how == "flipped"):
        assert any(seg in w for w in r.warnings)
    # snapshot 6's fold runs through the lost commit: said, not hidden; its tree still reads back in full
    assert snaps[6].hex not in damage_map(report)
    assert set(files_of(r, snaps[6])) == {f"ab/f{i}" for i in range(7)}
    # the next commit goes after the last segment, never into the hole
    nxt = commit(r, {"ab/next": b"n"}, incremental=True)
    assert r.view(key, refresh=True).get(nxt.id).seq == 10
