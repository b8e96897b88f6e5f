"""The local cache and what it may be trusted with: real vaults, real LMDB files, the real `phonevault` command.

Copies of one vault share one cache (same repo id) and must each see only themselves; the cache holds nothing in
plaintext and no value can be moved under another key; damage anywhere in it (a value, a key, the file's structure,
the lock file) is the cache's, repaired from the vault, never reported against the vault; cache and vault are private
(0700/0600); a failed or crashed write leaves no temporary file behind for long.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import stat
import time
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.backends.local import LocalBackend
from phonevault.store.cache import CACHE_FORMAT
from phonevault.store.check import check
from phonevault.store.errors import PhonevaultError
from phonevault.store.repository import Repository
from phonevault.store.trees import iter_tree
from phonevault.sync.catalog import load_catalog
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.mobilesync import import_folder
from tests.conftest import FAST_SCRYPT, PASSWORD
from tests.sync.test_mobilesync import export, tree_digest

DBS = (b"meta", b"blobs", b"indexes", b"segments", b"stat", b"derived")


@pytest.fixture(scope="module")
def phone() -> SyntheticPhone:
    return SyntheticPhone(seed=31, size=3 << 20)


def new_vault(path: Path, cache_root: Path) -> Repository:
    return Repository.init(LocalBackend(path), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=cache_root)


def open_vault(path: Path, cache_root: Path) -> Repository:
    return Repository.open(LocalBackend(path), PASSWORD, cache_root=cache_root)


def cache_dir(cache_root: Path) -> Path:
    (only,) = [p for p in cache_root.iterdir() if p.is_dir()]
    return only


def js(r):
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return json.loads(r.stdout)


def ok(r):
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r


# --- copies of one vault ----------------------------------------------------------------------------------------
def test_two_copies_of_one_vault_sharing_a_cache_each_stay_themselves(pv, cli_env, phone, tmp_path):
    """cp -r v X; cp -r v Y: one cache dir for both. Importing into one never shows in the other, and prune in Y
    (after its own forget) deletes nothing either copy needs — checked again with fresh caches."""
    cache = Path(cli_env["PHONEVAULT_CACHE_DIR"])
    new_vault(tmp_path / "v", cache).close()
    shutil.copytree(tmp_path / "v", tmp_path / "X")
    shutil.copytree(tmp_path / "v", tmp_path / "Y")
    src = phone.write_backup(tmp_path / "src", day=0)
    day0 = tree_digest(src)

    def run(vault: str, *args: str, cache_root: Path = cache):
        return pv(*args, env=dict(cli_env, PHONEVAULT_REPO=str(tmp_path / vault), PHONEVAULT_CACHE_DIR=str(cache_root)))

    ok(run("X", "import", str(src)))
    # The same folder into Y: the stat cache knows these files, but their chunks are not in Y, so Y reads them all.
    r = ok(run("Y", "import", str(src)))
    assert "(0 files unchanged since last import)" in r.stdout
    phone.write_backup(tmp_path / "src", day=1)
    day1 = tree_digest(src)
    ok(run("Y", "import", str(src)))
    ok(run("X", "import", str(src)))

    snaps = {v: js(run(v, "snapshots", "--json")) for v in ("X", "Y")}
    assert not {s["id"] for s in snaps["X"]} & {s["id"] for s in snaps["Y"]}
    for v in ("X", "Y"):
        first, second = snaps[v]
        assert first["parent"] is None and second["parent"] == first["id"], snaps[v]
        assert [s["current"] for s in snaps[v]] == [False, True]
        assert js(run(v, "check", "--read-data", "--json"))["ok"]
        ok(run(v, "export", first["id"], "--to", str(tmp_path / f"{v}-0")))
        ok(run(v, "export", second["id"], "--to", str(tmp_path / f"{v}-1")))
        assert tree_digest(tmp_path / f"{v}-0" / phone.udid) == day0
        assert tree_digest(tmp_path / f"{v}-1" / phone.udid) == day1

    y0, y1 = snaps["Y"]
    ok(run("Y", "forget", y0["id"]))
    ok(run("Y", "prune", "--grace", "0"))
    for v, kept in (("X", snaps["X"]), ("Y", [y1])):
        fresh = tmp_path / f"fresh-cache-{v}"
        assert js(run(v, "check", "--read-data", "--json", cache_root=fresh))["ok"]
        live = [s for s in js(run(v, "snapshots", "--json", cache_root=fresh)) if not s.get("forgotten")]
        assert [s["id"] for s in live] == [s["id"] for s in kept]
        dest = tmp_path / f"{v}-after-prune"
        ok(run(v, "export", kept[-1]["id"], "--to", str(dest), cache_root=fresh))
        assert tree_digest(dest / phone.udid) == day1


def test_a_vault_restored_from_an_older_copy_sees_only_its_own_history(phone, tmp_path):
    """Time Machine: the vault goes back to an older copy while the cache remembers the newer history."""
    cache = tmp_path / "cache"
    src = phone.write_backup(tmp_path / "src", day=0)
    repo = new_vault(tmp_path / "v", cache)
    old = import_folder(repo, src).snapshot
    repo.close()
    shutil.copytree(tmp_path / "v", tmp_path / "old")
    phone.write_backup(tmp_path / "src", day=1)
    day1 = tree_digest(src)
    repo = open_vault(tmp_path / "v", cache)
    newer = import_folder(repo, src).snapshot
    repo.close()
    shutil.rmtree(tmp_path / "v")
    shutil.copytree(tmp_path / "old", tmp_path / "v")

    repo = open_vault(tmp_path / "v", cache)
    view = repo.view(old.device_key)
    assert [s.id for s in view.snapshots] == [old.id] and view.head == old.id
    again = import_folder(repo, src).snapshot
    assert again.parent == old.id and again.id != newer.id
    assert check(repo, read_data=True).ok
    repo.close()
    # The newer history's cached segment matched no segment of this vault and was dropped with the first miss.
    assert len(entries(cache_dir(cache))[b"segments"]) == len(list(LocalBackend(tmp_path / "v").list("events/"))) == 2
    repo = open_vault(tmp_path / "v", tmp_path / "fresh")
    assert [s.id for s in repo.view(old.device_key).snapshots] == [old.id, again.id]
    assert tree_digest(export(repo, again, tmp_path / "out")) == day1
    repo.close()


# --- nothing in plaintext, nothing swappable --------------------------------------------------------------------
def needles(phone: SyntheticPhone, src: Path) -> dict[str, bytes]:
    info = phone.device_info()
    found = {"UDID": info.udid.encode(), "device name": info.name.encode(), "source folder": str(src).encode()}
    for what in ("serial", "imei", "phone_number", "iccid"):
        if value := getattr(info, what):
            found[what] = value.encode()
    entries = [f.entry for f in phone.files(0) if f.entry.flags == 1]
    for e in entries[:: max(1, len(entries) // 10)]:
        found[f"domain {e.domain}"] = e.domain.encode()
        found[f"path {e.relative_path}"] = e.relative_path.encode()
        found[f"fileID {e.file_id}"] = e.file_id.encode()
    return {k: v for k, v in found.items() if len(v) >= 6}


def entries(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    try:
        out = {}
        with env.begin() as txn:
            for name in DBS:
                out[name] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=env.open_db(name, txn=txn, create=False))]
        return out
    finally:
        env.close()


def test_the_cache_holds_no_plaintext_and_every_key_is_a_hash(phone, tmp_path):
    src = phone.write_backup(tmp_path / "src", day=0)
    repo = new_vault(tmp_path / "v", tmp_path / "cache")
    snap = import_folder(repo, src).snapshot
    assert load_catalog(repo, snap)  # the catalog (every domain and path) is in the cache now
    repo.close()
    path = cache_dir(tmp_path / "cache")
    wanted = needles(phone, src)
    for f in sorted(path.iterdir()):
        data = f.read_bytes()
        assert [what for what, needle in wanted.items() if needle in data] == [], f
    found = entries(path)
    assert all(found[db] for db in DBS), {db: len(v) for db, v in found.items()}
    for db, items in found.items():
        for k, v in items:
            assert len(k) == 32, (db, k)
            assert len(v) >= 28, (db, v)  # nonce and tag at least: sealed


def rewrite(path: Path, db: bytes, change) -> int:
    """Rewrite every entry of one database with change(key, value) -> (key, value), through LMDB itself: the file
    stays structurally sound, so only sealing can notice."""
    env = lmdb.open(str(path), max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            handle = env.open_db(db, txn=txn, create=False)
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=handle)]
            txn.drop(handle, delete=False)
            for k, v in items:
                txn.put(*change(k, v), db=handle)
        return len(items)
    finally:
        env.close()


def flip_last(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


@pytest.fixture
def imported(phone, tmp_path):
    """A vault holding one import (catalog loaded, so every database has entries), its cache closed cleanly."""
    src = phone.write_backup(tmp_path / "src", day=0)
    repo = new_vault(tmp_path / "v", tmp_path / "cache")
    snap = import_folder(repo, src).snapshot
    load_catalog(repo, snap)
    repo.close()
    return src, snap, tree_digest(src)


def still_right(tmp_path: Path, src: Path, snap, digest, *, cache_root: Path | None = None) -> Repository:
    """Everything reads as from a fresh cache: the log, every file, check; and an unchanged re-import commits the
    same tree. Returns the (open) repository so the caller can look at its notes."""
    repo = open_vault(tmp_path / "v", cache_root or tmp_path / "cache")
    view = repo.view(snap.device_key)
    assert view.snapshots[0].id == snap.id and view.snapshots[0].tree == snap.tree
    assert tree_digest(export(repo, view.head_record, tmp_path / f"out-{time.monotonic_ns()}")) == digest
    report = check(repo, read_data=True)
    assert report.ok and not report.errors, report.errors
    assert load_catalog(repo, view.head_record)
    again = import_folder(repo, src).snapshot
    assert again.tree == snap.tree
    assert repo.warnings == []
    return repo


@pytest.mark.parametrize("db", [b"meta", b"blobs", b"segments", b"stat", b"derived"])
def test_a_damaged_value_is_the_caches_fault_never_the_vaults(imported, tmp_path, db):
    src, snap, digest = imported
    assert rewrite(cache_dir(tmp_path / "cache"), db, lambda k, v: (k, flip_last(v)))
    repo = still_right(tmp_path, src, snap, digest)
    assert repo.notes and all("local cache" in n and "vault is not affected" in n for n in repo.notes), repo.notes
    repo.close()


@pytest.mark.parametrize("db", [b"blobs", b"indexes", b"segments", b"stat", b"derived"])
def test_a_damaged_key_is_a_miss_the_vault_answers(imported, tmp_path, db):
    src, snap, digest = imported
    assert rewrite(cache_dir(tmp_path / "cache"), db, lambda k, v: (flip_last(k), v))
    still_right(tmp_path, src, snap, digest).close()


def test_values_cannot_be_swapped_between_keys(imported, tmp_path):
    """Two stat entries trading values would make a file's entry point at another file's chunks: refused."""
    src, snap, digest = imported
    path = cache_dir(tmp_path / "cache")
    values = [v for _k, v in entries(path)[b"stat"]]
    rotated = iter(values[1:] + values[:1])
    rewrite(path, b"stat", lambda k, v: (k, next(rotated)))
    repo = open_vault(tmp_path / "v", tmp_path / "cache")
    again = import_folder(repo, src)
    assert again.snapshot.tree == snap.tree
    assert again.reused_files == 0  # the cache was found out and rebuilt: every file read again
    assert len(repo.notes) == 1
    repo.close()


# --- a damaged data file ----------------------------------------------------------------------------------------
def _flip_bytes(path: Path, seed: int, count: int = 64) -> None:
    r = random.Random(seed)
    data = bytearray(path.read_bytes())
    for _ in range(count):
        data[r.randrange(len(data))] ^= 1 << r.randrange(8)
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped bytes": lambda d: _flip_bytes(d / "data.mdb", seed=1),
    "flipped bytes (other places)": lambda d: _flip_bytes(d / "data.mdb", seed=2),
    "truncated to half": lambda d: os.truncate(d / "data.mdb", os.path.getsize(d / "data.mdb") // 2),
    "truncated to nothing": lambda d: os.truncate(d / "data.mdb", 0),
    "garbage": lambda d: (d / "data.mdb").write_bytes(random.Random(3).randbytes(os.path.getsize(d / "data.mdb"))),
    "garbage lock file": lambda d: (d / "lock.mdb").write_bytes(random.Random(4).randbytes(8192)),
    "garbage state file": lambda d: (d / "state").write_bytes(b"\x00" * 57),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_file_is_rebuilt_and_every_command_succeeds(pv, cli_env, phone, tmp_path, damage):
    cache = Path(cli_env["PHONEVAULT_CACHE_DIR"])
    src = phone.write_backup(tmp_path / "src", day=0)
    digest = tree_digest(src)
    repo = new_vault(Path(cli_env["PHONEVAULT_REPO"]), cache)
    import_folder(repo, src)
    repo.close()
    DAMAGE[damage](cache_dir(cache))

    runs = [pv("snapshots", "--json")]
    (snap,) = js(runs[0])
    runs.append(ok(pv("export", snap["id"], "--to", str(tmp_path / "out"))))
    assert tree_digest(tmp_path / "out" / phone.udid) == digest
    runs.append(pv("check", "--read-data", "--json"))
    assert js(runs[-1])["ok"]
    runs.append(ok(pv("ls", snap["id"])))
    runs.append(ok(pv("import", str(src))))
    assert "0 added, 0 modified, 0 removed" in runs[-1].stdout
    notes = [[ln for ln in r.stderr.splitlines() if ln.startswith("note: local cache")] for r in runs]
    assert all(len(n) <= 1 for n in notes), notes  # at most one line per command
    if damage in ("garbage", "truncated to half"):  # no LMDB file any more: found at once, rebuilt once
        assert [len(n) for n in notes] == [1, 0, 0, 0, 0], notes
    # Flipped bits may sit in free pages or in values a command does not read: those are found (one note) by the
    # command that reads them, if any. An emptied file is an empty cache; LMDB re-initialises a garbage lock file.


@pytest.fixture(scope="module")
def pristine(phone, tmp_path_factory):
    """A vault and a cache closed cleanly, copied afresh for each example."""
    root = tmp_path_factory.mktemp("pristine")
    src = phone.write_backup(root / "src", day=0)
    repo = new_vault(root / "v", root / "cache")
    snap = import_folder(repo, src).snapshot
    load_catalog(repo, snap)
    files = {e.path: b"".join(repo.read_file(e)) for e in iter_tree(snap.tree, repo.get_blob) if not e.is_dir}
    repo.close()
    return root, snap, files


@settings(max_examples=20, derandomize=True)
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7)), min_size=1, max_size=50))
def test_bit_flips_anywhere_in_the_data_file_never_reach_the_answers(pristine, tmp_path_factory, flips):
    """Oracle: a repository over any damaged cache reads exactly what it read over the intact one."""
    root, snap, files = pristine
    work = tmp_path_factory.mktemp("flips")
    shutil.copytree(root / "cache", work / "cache")
    data = cache_dir(work / "cache") / "data.mdb"
    raw = bytearray(data.read_bytes())
    for where, bit in flips:
        raw[int(where * len(raw))] ^= 1 << bit
    data.write_bytes(bytes(raw))
    repo = open_vault(root / "v", work / "cache")
    try:
        view = repo.view(snap.device_key)
        assert [s.id for s in view.snapshots] == [snap.id]
        got = {e.path: b"".join(repo.read_file(e)) for e in iter_tree(snap.tree, repo.get_blob) if not e.is_dir}
        assert got == files
        assert check(repo).ok and repo.warnings == []
    finally:
        repo.close()
        shutil.rmtree(work)


def test_an_old_plaintext_cache_is_wiped_not_read(phone, tmp_path):
    repo = new_vault(tmp_path / "v", tmp_path / "cache")
    path = repo.cache.path
    repo.close()
    shutil.rmtree(path)
    os.mkdir(path, 0o755)
    env = lmdb.open(str(path), max_dbs=8, mode=0o755)  # what format 1 left: plaintext, 0644 files
    with env.begin(write=True) as txn:
        txn.put(b"format", b"1", db=env.open_db(b"meta", txn=txn))
        txn.put(b"/Users/alan/MobileSync/Backup/00008030-SECRET-UDID/ab/abcd", b"\x91\xc4\x20" + bytes(32),
                db=env.open_db(b"stat", txn=txn))  # fmt: skip
    env.close()
    src = phone.write_backup(tmp_path / "src", day=0)
    repo = open_vault(tmp_path / "v", tmp_path / "cache")
    assert import_folder(repo, src).reused_files == 0
    assert repo.notes == []  # an upgrade, not damage
    repo.close()
    assert b"SECRET-UDID" not in (path / "data.mdb").read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert b"2" == CACHE_FORMAT


def test_a_cache_open_twice_in_one_process_is_refused_not_wiped(phone, tmp_path):
    src = phone.write_backup(tmp_path / "src", day=0)
    repo = new_vault(tmp_path / "v", tmp_path / "cache")
    import_folder(repo, src)
    with pytest.raises(PhonevaultError, match="already open in this process"):
        open_vault(tmp_path / "v", tmp_path / "cache")
    assert import_folder(repo, src).reused_files > 0 and repo.notes == []
    repo.close()


# --- privacy of files on disk -----------------------------------------------------------------------------------
def test_cache_and_vault_are_private_whatever_the_umask_lets_through(phone, tmp_path):
    old = os.umask(0o022)
    try:
        src = phone.write_backup(tmp_path / "src", day=0)
        repo = new_vault(tmp_path / "made" / "by" / "vault", tmp_path / "made-too" / "cache")
        import_folder(repo, src)
        repo.close()
    finally:
        os.umask(old)
    for root in (tmp_path / "made", tmp_path / "made-too"):
        for dirpath, _dirs, files in os.walk(root):
            assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
            for f in files:
                assert stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode) == 0o600, (dirpath, f)
        assert sum(len(files) for _d, _s, files in os.walk(root)) >= 3


# --- temporaries ------------------------------------------------------------------------------------------------
def temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".tmp-*"))


def test_a_write_that_fails_midway_leaves_no_temporary(tmp_path):
    """A real failing write: the process may not grow a file past 1 MiB (RLIMIT_FSIZE; the write fails with EFBIG
    exactly where a full disk fails with ENOSPC)."""
    backend = LocalBackend(tmp_path / "v")
    backend.put("index/small", b"x")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(OSError):
            backend.put("packs/ab/big", os.urandom(3 << 20))
        with pytest.raises(OSError):
            backend.put_exclusive("events/dev/0000000000", os.urandom(3 << 20))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert temporaries(tmp_path / "v") == []
    assert not backend.exists("packs/ab/big") and not backend.exists("events/dev/0000000000")


def test_old_temporaries_go_with_the_first_write_and_young_ones_stay(phone, tmp_path):
    src = phone.write_backup(tmp_path / "src", day=0)
    repo = new_vault(tmp_path / "v", tmp_path / "cache")
    import_folder(repo, src)
    repo.close()
    vault = tmp_path / "v"
    old = [vault / "index" / ".tmp-crashed", vault / "events" / ".tmp-crashed", vault / ".tmp-crashed"]
    old += [next((vault / "packs").iterdir()) / ".tmp-crashed"]
    young = vault / "index" / ".tmp-running"
    for p in [*old, young]:
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    for p in old:
        os.utime(p, (two_hours_ago, two_hours_ago))

    repo = open_vault(vault, tmp_path / "cache")  # reading only: nothing is swept
    assert check(repo, read_data=True).ok
    assert len(temporaries(vault)) == 5
    import_folder(repo, src)  # the first write sweeps
    repo.close()
    assert temporaries(vault) == ["index/.tmp-running"]
