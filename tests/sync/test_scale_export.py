"""Export's read path at scale: many blobs read at once (`sync.writeout.read_located`: sorted, merged reads), read a
batch ahead on a second thread (`writeout.ReadAhead`), into a fresh target (`paths.Target(fresh=True)`). What is
read ahead must equal what `get_blob` gives, a blob the merged read cannot give must fall back to the usual read
(which names it), and the export stays bit-exact."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phonevault.store.errors import PhonevaultError, UnsafePath
from phonevault.store.packs import pack_name
from phonevault.store.repository import Repository
from phonevault.store.trees import FileEntry
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.export import export_snapshot
from phonevault.sync.mobilesync import import_folder
from phonevault.sync.paths import Target
from phonevault.sync.writeout import FileWriters, ReadAhead, read_located, small_plain
from tests.conftest import reopen


@pytest.fixture(scope="module")
def phone() -> SyntheticPhone:
    return SyntheticPhone(seed=43, size=1 << 20, many_files=300)


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def snapshot_entries(repo: Repository, snap) -> list:
    from phonevault.store.check import readable_tree  # noqa: PLC0415

    entries, lost = readable_tree(repo, repo.view(snap.device_key), snap)
    assert not lost
    return entries


def test_read_located_gives_what_get_blob_gives_and_leaves_out_a_damaged_blob(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    snap = import_folder(repo, dev).snapshot
    ids = sorted({c for e in snapshot_entries(repo, snap) for c in e.chunks})
    located = [(b, repo.cache.lookup(b)) for b in ids]
    got = read_located(repo, located)
    assert got.keys() == set(ids)
    assert all(got[b] == repo.get_blob(b) for b in ids)

    # One byte flipped inside one blob: that blob is left out (its neighbours in the same merged read are not),
    # and get_blob names the damage.
    victim, loc = located[len(located) // 2]
    path = Path(repo.backend.location) / pack_name(loc.pack)
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.length // 2] ^= 1
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    again = read_located(repo, located)
    assert again.keys() == set(ids) - {victim}
    assert all(again[b] == got[b] for b in again)
    with pytest.raises(PhonevaultError):
        repo.get_blob(victim)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.integers(1, 200_000), drop=st.sets(st.integers(0, 10_000), max_size=5))
def test_read_ahead_yields_every_entry_once_in_order_and_take_equals_read_file(repo, phone, tmp_path, batch, drop):
    folder = tmp_path / "src"
    if not folder.exists():
        import_folder(repo, phone.write_backup(folder))
    view = repo.view(repo.device_keys()[0])
    snap = view.snapshots[-1]
    shards: dict[str, list] = {}
    for e in snapshot_entries(repo, snap):
        shards.setdefault(e.path[:2], []).append(e)
    ahead = ReadAhead(repo, small_plain)
    ahead.BATCH = batch  # an instance's own batch size: many small batches, or one per shard
    seen = []
    with ahead:
        for got in ahead.batches(list(shards.values())):
            for i, e in enumerate(got):
                seen.append(e)
                if small_plain(e):
                    if i in drop and e.chunks:  # a blob the reader left out: take reads it the usual way
                        ahead._blobs.pop(e.chunks[0], None)
                    assert ahead.take(e) == b"".join(repo.read_file(e))
    assert seen == [e for entries in shards.values() for e in entries]


def test_export_with_read_ahead_is_bit_exact_and_names_only_the_damaged_file(repo, phone, tmp_path):
    dev = phone.write_backup(tmp_path / "src")
    snap = import_folder(repo, dev).snapshot
    view = repo.view(snap.device_key)
    out = export_snapshot(repo, view, snap, tmp_path / "out")
    assert files_of(out.path) == files_of(dev)

    # Damage one small file's only chunk: the export names that file, writes every other one.
    small = next(e for e in snapshot_entries(repo, snap) if small_plain(e) and len(e.chunks) == 1 and e.size > 100)
    shared = [e.path for e in snapshot_entries(repo, snap) if small.chunks[0] in e.chunks]
    loc = repo.cache.lookup(small.chunks[0])
    path = Path(repo.backend.location) / pack_name(loc.pack)
    data = bytearray(path.read_bytes())
    data[loc.offset + loc.length - 1] ^= 1
    os.chmod(path, 0o644)
    path.write_bytes(bytes(data))
    repo.close()
    repo = reopen(repo)  # nothing of the damaged blob in memory
    res = export_snapshot(repo, repo.view(snap.device_key), snap, tmp_path / "out2")
    text = "\n".join(res.damaged)
    assert all(p in text for p in shared)
    for e in snapshot_entries(repo, snap):
        local = res.path / e.path
        if e.path in shared:
            assert not local.exists()
        elif not e.is_dir:
            assert local.read_bytes() == (dev / e.path).read_bytes()
    repo.close()


def test_a_fresh_target_starts_empty_and_still_refuses_unsafe_names(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError):
        Target(tmp_path / "full", fresh=True)
    (tmp_path / "empty").mkdir()
    t = Target(tmp_path / "empty", fresh=True)
    assert t.join("ab/cdef") == tmp_path / "empty" / "ab" / "cdef"
    for bad in ("../x", "/abs", "a//b", "a/./b", "a\x00b", ""):
        with pytest.raises(UnsafePath):
            t.join(bad)


MODES = st.sampled_from([0o644, 0o600, 0o755, 0o777, 0o664, 0o000, 0o4755, 0o2750, 0o1777])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=st.lists(st.tuples(st.binary(max_size=3000), MODES, st.integers(0, 2**62)), min_size=1, max_size=150),
    writers=st.sampled_from([0, 1, 2]),
)
def test_file_writers_give_each_file_its_bytes_mode_and_mtime(tmp_path_factory, files, writers):
    """Bundled hand-over, mode given to open when the umask lets it through, fchmod otherwise (set-id bits, bits
    the umask clears): every file reads back as submitted, whatever the thread count."""
    root = tmp_path_factory.mktemp("w")
    with FileWriters(writers) as w:
        for i, (data, mode, mtime) in enumerate(files):
            e = FileEntry(path=f"f{i}", size=len(data), mode=0o100000 | mode, mtime_ns=mtime, chunks=())
            w.submit(str(root / e.path), e, data)
    for i, (data, mode, mtime) in enumerate(files):
        st_ = os.stat(root / f"f{i}")
        assert (root / f"f{i}").read_bytes() == data
        assert (st_.st_mode & 0o7777, st_.st_mtime_ns) == (mode, mtime)


@pytest.mark.parametrize("writers", [0, 2])
def test_a_failed_write_is_raised_in_the_caller(tmp_path, writers):
    e = FileEntry(path="x", size=1, mode=0o100644, mtime_ns=0, chunks=())
    with pytest.raises(FileNotFoundError), FileWriters(writers) as w:
        for i in range(300):  # more than one bundle, so the failure is met on a writer thread
            w.submit(str(tmp_path / ("missing-folder" if i == 70 else ".") / f"f{i}"), e, b"x")
