"""Folder import a shard at a time: what it holds, what it compares, and a folder that changes under it."""

from __future__ import annotations

import os
import plistlib
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.check import check
from phonevault.store.trees import load_tree, shard_of
from phonevault.store.writer import SnapshotWriter
from phonevault.sync.export import export_snapshot
from phonevault.sync.manifest import CatalogEntry, file_id, write_manifest_db
from phonevault.sync.mobilesync import _Present, import_folder

UDID = "00008030-0000000000000002"


def make_folder(root: Path, n: int, size: int = 100, names: list[str] | None = None) -> Path:
    dev = root / UDID
    dev.mkdir(parents=True)
    entries = []
    for i in names if names is not None else [f"f{i}" for i in range(n)]:
        fid = file_id("HomeDomain", f"{i}")
        (dev / fid[:2]).mkdir(exist_ok=True)
        (dev / fid[:2] / fid).write_bytes(os.urandom(size))
        entries.append(CatalogEntry(fid, "HomeDomain", f"{i}", 1, size, 0o100644, 0))
    write_manifest_db(dev / "Manifest.db", entries)
    (dev / "Info.plist").write_bytes(plistlib.dumps({"Target Identifier": UDID, "Device Name": "S"}))
    return dev


def test_import_holds_one_shard_at_a_time(repo, tmp_path, monkeypatch):
    """The staged tree never holds more than the shard being imported plus the top level, and what is written is
    the whole folder, exported bit for bit."""
    dev = make_folder(tmp_path / "src", 300)
    held: list[tuple[str, int]] = []
    seal = SnapshotWriter.seal_shard

    def spy(self, shard):
        held.append((shard, len(self.tree)))
        assert {shard_of(p) for p in self.tree.state} <= {shard, ""}
        seal(self, shard)

    monkeypatch.setattr(SnapshotWriter, "seal_shard", spy)
    r = import_folder(repo, dev)
    shards = {p.name for p in dev.iterdir() if p.is_dir()}
    assert sorted(s for s, _ in held) == sorted(shards)
    top = sum(1 for p in dev.iterdir() if p.is_file())
    assert max(n for _, n in held) <= max(len(list((dev / s).iterdir())) for s in shards) + top
    tree = load_tree(r.snapshot.tree, repo.get_blob)
    assert len([p for p in tree if "/" in p]) == 300
    assert check(repo).ok
    view = repo.view(r.snapshot.device_key, refresh=True)
    out = export_snapshot(repo, view, r.snapshot, tmp_path / "out").path
    for p in dev.rglob("*"):
        if p.is_file():
            assert (out / p.relative_to(dev)).read_bytes() == p.read_bytes()


@pytest.mark.parametrize("size", [3000, 300_000])  # read whole by a reader thread; streamed by the caller
def test_a_file_that_changes_while_the_import_reads_is_stored_as_read_and_named(repo, tmp_path, size):
    by_prefix: dict[str, str] = {}  # two files in one shard: the second is listed before the first is read
    for i in range(1000):
        name = f"f{i}"
        if (prefix := file_id("HomeDomain", name)[:2]) in by_prefix:
            break
        by_prefix[prefix] = name
    dev = make_folder(tmp_path / "src", 2, size=size, names=[by_prefix[prefix], name])
    last = sorted((dev / prefix).iterdir())[-1]
    cut, calls = [], []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        # The first call comes before the walk; the second once the shard is listed, before any of it is read.
        if len(calls) == 2 and not cut:
            cut.append(last.read_bytes()[:1000])
            last.write_bytes(cut[0])

    r = import_folder(repo, dev, progress=progress)
    rel = f"{last.parent.name}/{last.name}"
    assert any(p.startswith(f"{rel}: changed while it was read ({size} bytes listed, 1000 read)") for p in r.problems)
    tree = load_tree(r.snapshot.tree, repo.get_blob)
    assert b"".join(repo.read_file(tree[rel])) == cut[0]
    again = import_folder(repo, dev)  # not taken from the stat cache: read again, nothing named
    assert not any("changed while" in p for p in again.problems)


fid = st.binary(min_size=20, max_size=20).map(bytes.hex)
rel = st.one_of(
    fid.map(lambda f: f"{f[:2]}/{f}"),  # a MobileSync name
    fid.map(lambda f: f"{f[2:4]}/{f}"),  # a fileID in the wrong folder
    st.text("abcXYZ./", min_size=1, max_size=12),  # anything else
)


@settings(max_examples=50)
@given(st.dictionaries(rel, st.integers(0, 2**40), max_size=40))
def test_the_compact_table_answers_as_the_dict_it_replaces(present):
    table = _Present()
    by_shard: dict[str, list[tuple[str, int]]] = {}
    for path in sorted(present):
        by_shard.setdefault(path.partition("/")[0] if "/" in path else "", []).append((path, present[path]))
    for rows in by_shard.values():
        table.add_shard(rows)
    assert dict(table) == present
    assert len(table) == len(present)
    for path, size in present.items():
        assert table.get(path) == size
    assert table.get("00/" + "00" * 20) == present.get("00/" + "00" * 20)
    assert table.keys() - {"x"} == present.keys() - {"x"}


def _vault_bytes(repo, snap) -> dict[str, tuple[int, int, bytes]]:
    """path -> (mode, mtime, bytes) of every file of a snapshot, read back from the vault."""
    tree = load_tree(snap.tree, repo.get_blob)
    return {p: (e.mode, e.mtime_ns, b"".join(repo.read_file(e))) for p, e in tree.items() if not e.is_dir}


def _folder_bytes(dev: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for p in dev.rglob("*"):
        if p.is_file():
            s = p.lstat()
            out[p.relative_to(dev).as_posix()] = (s.st_mode, s.st_mtime_ns, p.read_bytes())
    return out


step = st.sampled_from(["same-stat-content", "touch", "add", "remove", "forget-head", "prune", "nothing"])


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(step, st.integers(0, 10**6)), min_size=1, max_size=5))
def test_reimport_with_the_stat_cache_stores_the_folder_as_it_is(make_repo, tmp_path_factory, steps):
    """Each import, whether its shards come from the stat cache (and unchanged shards are taken as the parent's
    without a blob lookup per file) or are read, stores the folder as it is now: a file rewritten with the same size
    and mtime (its ctime moves: the stat cache's contract) is stored anew; a forgotten head leaves a parent whose
    shards differ from what the stat cache knows, and a prune then deletes chunks the stat cache still names: the
    files are read again, not staged with chunks the vault no longer holds."""
    from phonevault.store.history import apply_forget, plan_forget  # noqa: PLC0415
    from phonevault.store.prune import prune  # noqa: PLC0415

    repo = make_repo(f"vault-{os.urandom(4).hex()}")  # one per example: the fixture's factory outlives them
    dev = make_folder(tmp_path_factory.mktemp("src"), 24, size=64)
    files = sorted(p for p in dev.rglob("*") if p.is_file() and p.parent != dev)
    snaps = [import_folder(repo, dev).snapshot]
    for kind, n in steps:
        if kind == "same-stat-content":
            f = files[n % len(files)]
            s = f.stat()
            f.write_bytes(os.urandom(s.st_size))
            os.utime(f, ns=(s.st_atime_ns, s.st_mtime_ns))
        elif kind == "touch":
            f = files[n % len(files)]
            os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
        elif kind == "add":
            f = files[n % len(files)].parent / f"{n:040x}"
            f.write_bytes(os.urandom(n % 200))
            files = sorted({*files, f})
        elif kind == "remove" and len(files) > 1:
            f = files[n % len(files)]
            f.unlink()
            files.remove(f)
        elif kind == "forget-head" and len(snaps) > 1:
            view = repo.view(snaps[-1].device_key, refresh=True)
            apply_forget(repo, plan_forget(view, None, {snaps.pop().id}), "test")
        elif kind == "prune":
            prune(repo, grace_us=0, max_unused=0.0)
        r = import_folder(repo, dev)
        assert _vault_bytes(repo, r.snapshot) == _folder_bytes(dev)
        snaps.append(r.snapshot)
    assert check(repo).ok


def test_stat_cache_naming_pruned_chunks_under_an_older_parent_reads_the_file_again(repo, tmp_path):
    """Day 1 changes a file (the stat cache then names its new chunks), day 1 is forgotten and pruned (those chunks
    leave the vault), and the folder is imported again: the stat cache still matches the file, but the shard is not
    the parent's, so its entries are checked and the file is read and stored again, not staged with chunks the
    vault no longer holds (the skip of per-file lookups is for a shard equal to the parent's only)."""
    from phonevault.store.history import apply_forget, plan_forget  # noqa: PLC0415
    from phonevault.store.prune import prune  # noqa: PLC0415

    dev = make_folder(tmp_path / "src", 40, size=64)
    day0 = import_folder(repo, dev).snapshot
    f = sorted(p for p in dev.rglob("*") if p.parent != dev)[3]
    f.write_bytes(os.urandom(64))
    day1 = import_folder(repo, dev).snapshot
    apply_forget(repo, plan_forget(repo.view(day1.device_key, refresh=True), None, {day1.id}), "test")
    assert prune(repo, grace_us=0, max_unused=0.0).deleted
    again = import_folder(repo, dev)
    assert again.snapshot.parent == day0.id
    assert _vault_bytes(repo, again.snapshot) == _folder_bytes(dev)
    assert again.reused_files == sum(1 for p in dev.rglob("*") if p.is_file()) - 1  # all but the file read
    assert check(repo, read_data=True).ok


def test_catalog_cached_once_per_manifest_and_anew_when_it_changes_at_the_same_size(repo, tmp_path, monkeypatch):
    """An unchanged re-import finds its catalog cached under the Manifest.db's content and does not write it again;
    a Manifest.db rewritten with other rows at the same size and mtime is stored anew (its ctime moved), and its
    catalog is written and read back as the new rows."""
    from phonevault.sync import catalogcache  # noqa: PLC0415
    from phonevault.sync.catalog import load_catalog  # noqa: PLC0415

    dev = make_folder(tmp_path / "src", 30, size=64)
    writes: list[bytes] = []
    write = catalogcache.write_cached
    monkeypatch.setattr(
        "phonevault.sync.catalog.write_cached", lambda r, key, *a: (writes.append(key), write(r, key, *a))
    )
    day0 = import_folder(repo, dev).snapshot
    rows0 = sorted((c.file_id, c.relative_path) for c in load_catalog(repo, day0))
    day1 = import_folder(repo, dev).snapshot
    assert len(writes) == 1
    assert sorted((c.file_id, c.relative_path) for c in load_catalog(repo, day1)) == rows0
    db = dev / "Manifest.db"
    s = db.stat()
    rows = list(load_catalog(repo, day1))
    write_manifest_db(
        db, [c if i else replace(c, relative_path=c.relative_path[:-1] + "~") for i, c in enumerate(rows)]
    )
    os.utime(db, ns=(s.st_atime_ns, s.st_mtime_ns))
    assert db.stat().st_size == s.st_size
    day2 = import_folder(repo, dev).snapshot
    assert len(writes) == 2
    paths = sorted(c.relative_path for c in load_catalog(repo, day2))
    assert paths != sorted(p for _f, p in rows0) and sum(p.endswith("~") for p in paths) == 1


def test_memo_of_an_unchanged_manifest_is_sent_as_nil_and_kept(repo, tmp_path):
    """A second parse of the same Manifest.db with the memo the first left sends no shard's memo (nil: the cache's
    is the same), and the memo the cache holds after a second import is the first one's; a Manifest.db whose rows
    changed sends and stores the memo of the shards they are in."""
    from phonevault.sync.catalog import _duplicate_problems, _row, _row_problem, load_catalog  # noqa: PLC0415
    from phonevault.sync.catalogshards import CatalogShard, old_memo, parse_shards, unpack_shard  # noqa: PLC0415

    def parsed(memo):
        funcs = (_row, _row_problem, _duplicate_problems)
        got = [unpack_shard(m) for m in parse_shards(dev / "Manifest.db", iter(memo), None, *funcs)]
        return [s for s in got if isinstance(s, CatalogShard)]

    dev = make_folder(tmp_path / "src", 30, size=64)
    snap = import_folder(repo, dev).snapshot
    key = repo.device_key(UDID)
    first = list(old_memo(repo, key))
    assert first and all(s.memo is None for s in parsed(first))
    import_folder(repo, dev)
    assert list(old_memo(repo, key)) == first
    rows = sorted(load_catalog(repo, snap), key=lambda c: c.file_id)
    write_manifest_db(dev / "Manifest.db", [replace(rows[0], mtime=rows[0].mtime + 1), *rows[1:]])
    sent = {s.shard: s.memo for s in parsed(first)}
    assert sent[rows[0].file_id[:2]] is not None
    assert all(m is None for s, m in sent.items() if s != rows[0].file_id[:2])
    import_folder(repo, dev)
    sent_memo = msgpack.unpackb(sent[rows[0].file_id[:2]], strict_map_key=False)  # sent packed: the cache's value
    assert dict(old_memo(repo, key))[rows[0].file_id[:2]] == sent_memo


@pytest.mark.parametrize("lose_shard", [False, True])
def test_reimport_compares_the_folder_with_the_cached_catalog_as_with_a_parse(repo, tmp_path, monkeypatch, lose_shard):
    """A re-import whose Manifest.db the stat cache knows compares the folder with the catalog cached for those bytes
    instead of parsing the file again, and names the same problems (listed but missing, another size) as the import
    that parsed it; with a shard of that catalog gone from the cache, the file is parsed after
    all, from that shard on, with the same problems."""
    from phonevault.sync import catalogshards  # noqa: PLC0415
    from phonevault.sync.catalog import catalog_key  # noqa: PLC0415

    dev = make_folder(tmp_path / "src", 40, size=64)
    rows = [CatalogEntry(file_id("HomeDomain", f"f{i}"), "HomeDomain", f"f{i}", 1, 64, 0o100644, 0) for i in range(40)]
    extra = CatalogEntry(file_id("HomeDomain", "never"), "HomeDomain", "never", 1, 9, 0o100644, 0)
    write_manifest_db(dev / "Manifest.db", [*rows, extra])  # a row whose file the folder never had
    files = sorted(p for p in dev.rglob("*") if p.parent != dev)
    files[0].unlink()
    files[1].write_bytes(b"short")
    parses: list[Path] = []
    init = catalogshards.ManifestStream.__init__
    monkeypatch.setattr(catalogshards.ManifestStream, "__init__", lambda s, *a: (parses.append(a[2]), init(s, *a))[1])
    first = import_folder(repo, dev)
    assert len(parses) == 1
    if lose_shard:
        tree = load_tree(first.snapshot.tree, repo.get_blob)
        k = repo.cache._derived_key(catalog_key(repo, tree["Manifest.db"]) + b"/" + rows[20].file_id[:2].encode())
        repo.cache._write(lambda txn: txn.delete(k, db=repo.cache._derived))
    again = import_folder(repo, dev)
    assert len(parses) == 1 + lose_shard
    listed = [p for p in first.problems if "Manifest.db" in p or "listed" in p or "says" in p]
    assert len(listed) >= 3
    assert [p for p in again.problems if p in listed] == listed
    assert sorted(again.problems) == sorted(first.problems)
    assert _vault_bytes(repo, again.snapshot) == _folder_bytes(dev)
