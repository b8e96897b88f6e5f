"""A snapshot is dated by the backup it holds, not by when it was stored: history, `current`, `DEVICE@WHEN` and
rollback all follow the backup's own date, whatever order backups are imported in."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from phonevault.store.backends.memory import MemoryBackend
from phonevault.store.history import rollback
from phonevault.store.records import DeviceRecord
from phonevault.store.refs import resolve_device, resolve_snapshot
from phonevault.store.repository import Repository
from phonevault.store.writer import SnapshotWriter
from tests.conftest import FAST_SCRYPT, PASSWORD
from tests.store.test_refs import us

PHONE = "00008101-000A1B2C3D4E5F60"
DAY = 86_400 * 10**6


def commit(repo: Repository, when_us: int, content: bytes, name: str = "Radia’s iPhone"):
    w = SnapshotWriter(repo, PHONE, DeviceRecord(name), incremental=False)
    f = w.open_file("Manifest.db")
    f.write(content)
    f.close()
    return w.commit("test", time_us=when_us)


def history(repo: Repository) -> tuple[list[tuple[int, bytes]], int]:
    """(every snapshot as (date, content), oldest first), and the date of the current one."""
    view = repo.view(repo.device_key(PHONE), refresh=True)
    rows = sorted((s.time, b"".join(repo.read_file(_manifest(repo, s)))) for s in view.live())
    return rows, view.head_record.time


def _manifest(repo, snap):
    from phonevault.store.trees import lookup

    return lookup(snap.tree, "Manifest.db", repo.get_blob)


@settings(max_examples=25)
@given(days=st.lists(st.integers(0, 3650), min_size=1, max_size=6, unique=True), rnd=st.randoms(use_true_random=False))
def test_any_import_order_gives_the_same_history(days, rnd, tmp_path_factory):
    """Import the same dated backups in two orders: the same snapshots on the same dates, and the newest current."""
    dated = [(us("2016-01-01T00:00") + d * DAY, f"backup of day {d}".encode()) for d in days]
    shuffled = list(dated)
    rnd.shuffle(shuffled)
    results = []
    for order in (dated, shuffled):
        repo = Repository.init(
            MemoryBackend(), PASSWORD, scrypt_n=FAST_SCRYPT, cache_root=tmp_path_factory.mktemp("cache")
        )
        for when, content in order:
            commit(repo, when, content)
        results.append(history(repo))
        repo.close()
    assert results[0] == results[1]
    assert results[0][1] == max(when for when, _ in dated)  # the newest backup is current


def test_an_older_backup_imported_late_does_not_move_current_back(repo):
    new = commit(repo, us("2024-06-04T10:00"), b"june 4")
    old = commit(repo, us("2024-06-01T10:00"), b"june 1")
    view = repo.view(repo.device_key(PHONE), refresh=True)
    assert view.head == new.id
    assert old.committed > new.committed and old.time < new.time  # stored later, dated earlier
    assert resolve_snapshot(repo, f"{PHONE}@2024-06-01")[1].id == old.id
    assert resolve_snapshot(repo, f"{PHONE}@2024-06-03")[1].id == old.id
    assert resolve_snapshot(repo, f"{PHONE}@latest")[1].id == new.id
    rollback(repo, view, old)
    assert repo.view(view.key, refresh=True).head == old.id
    newest = commit(repo, us("2024-06-10T10:00"), b"june 10")  # a new backup after a rollback is current again
    assert repo.view(view.key, refresh=True).head == newest.id


def test_a_date_time_names_the_last_snapshot_within_that_minute(repo):
    first = commit(repo, us("2026-11-25T12:30") + 5 * 10**6, b"12:30:05")
    last = commit(repo, us("2026-11-25T12:30") + 59 * 10**6, b"12:30:59")
    commit(repo, us("2026-11-25T12:31"), b"12:31:00")
    assert resolve_snapshot(repo, f"{PHONE}@2026-11-25T12:30")[1].id == last.id
    assert resolve_snapshot(repo, f"{PHONE}@2026-11-25T12:30:05")[1].id == first.id
    assert resolve_snapshot(repo, f"{PHONE}@2026-11-25T14:30+02:00")[1].id == last.id  # 12:30 UTC


def test_device_names_match_with_either_apostrophe(repo):
    commit(repo, us("2026-11-25T12:00"), b"x", name="Radia’s iPhone")
    for typed in ("Radia's iPhone", "radia’s iphone", "RADIA'S IPHONE"):
        assert resolve_device(repo, typed).device == PHONE
    assert resolve_snapshot(repo, "Radia's iPhone@latest")[0].device == PHONE
