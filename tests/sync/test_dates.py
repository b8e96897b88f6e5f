"""A backup folder's snapshot is dated by the backup itself: Status.plist's Date, then Manifest.plist's, then
Info.plist's Last Backup Date, then the newest file mtime, on real folders of every layout; dates that cannot be
trusted (the future, before any iPhone, not a date) are named and passed over; a device backup is dated when the
device reports success. The order itself is a property against an oracle."""

from __future__ import annotations

import os
import plistlib
from datetime import datetime, timedelta
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonevault.store.records import decode_record
from phonevault.store.repository import now_us
from phonevault.sync.backup2 import backup_device
from phonevault.sync.dates import (
    AHEAD,
    FLOOR_US,
    INFO_PLIST,
    MANIFEST_PLIST,
    NEWEST_MTIME,
    STATUS_PLIST,
    STORED,
    date_backup,
    plist_time_us,
)
from phonevault.sync.emulator import Emulator
from phonevault.sync.emulator.legacy import write_ios3_backup, write_ios8_backup
from phonevault.sync.emulator.phone import SyntheticPhone
from phonevault.sync.emulator.seeds import backup_time
from phonevault.sync.mobilesync import import_folder
from phonevault.sync.records import BackupMeta, backup_meta

SECOND = 10**6
NOW = plist_time_us(datetime(2026, 11, 25, 12, 0))
ORDER = (STATUS_PLIST, MANIFEST_PLIST, INFO_PLIST)


@pytest.fixture(scope="module")
def phone() -> SyntheticPhone:
    return SyntheticPhone(seed=61, size=1 << 20)


def naive(t_us: int) -> datetime:
    """A plist date as plistlib reads it: naive, UTC."""
    return datetime(1970, 1, 1) + timedelta(microseconds=t_us)


def edit_plist(path: Path, **changes) -> None:
    """Set (a value) or delete (None) keys of a plist, keeping its format and its mtime."""
    data = path.read_bytes()
    fmt = plistlib.FMT_BINARY if data.startswith(b"bplist") else plistlib.FMT_XML
    d = plistlib.loads(data)
    for key, value in changes.items():
        key = key.replace("_", " ")
        if value is None:
            d.pop(key, None)
        else:
            d[key] = value
    st = path.stat()
    path.write_bytes(plistlib.dumps(d, fmt=fmt))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def dated(repo, folder: Path):
    r = import_folder(repo, folder)
    return r.snapshot.time, backup_meta(r.snapshot).dated_by, r.problems


# --------------------------------------------------------------------------------------------------- the order


def test_the_first_trusted_date_wins_and_each_one_passed_over_is_named():
    june = naive(plist_time_us(datetime(2024, 6, 1, 10)))
    assert date_backup([(STATUS_PLIST, june), (MANIFEST_PLIST, None)], None, NOW) == date_backup(
        [(STATUS_PLIST, june)], 5, NOW
    )
    got = date_backup([(STATUS_PLIST, None), (MANIFEST_PLIST, june), (INFO_PLIST, None)], None, NOW)
    assert (got.time_us, got.source, got.problems) == (plist_time_us(june), MANIFEST_PLIST, ())  # missing: no problem
    future = naive(NOW + AHEAD + SECOND)
    got = date_backup([(STATUS_PLIST, future), (MANIFEST_PLIST, june)], None, NOW)
    assert got.source == MANIFEST_PLIST and len(got.problems) == 1
    assert "Status.plist's Date" in got.problems[0] and "in the future" in got.problems[0]
    tomorrow = naive(NOW + AHEAD)  # a day ahead is a time zone away, not a wrong clock
    assert date_backup([(STATUS_PLIST, tomorrow)], None, NOW).source == STATUS_PLIST
    apple_zero = datetime(2001, 1, 1)
    got = date_backup([(STATUS_PLIST, apple_zero), (INFO_PLIST, june)], None, NOW)
    assert got.source == INFO_PLIST and "before any iPhone" in got.problems[0]


def test_no_plist_date_falls_back_to_the_newest_mtime_then_to_when_it_is_stored():
    mtime_ns = plist_time_us(datetime(2024, 6, 3)) * 1000 + 123
    got = date_backup([(STATUS_PLIST, None), (MANIFEST_PLIST, None), (INFO_PLIST, None)], mtime_ns, NOW)
    assert (got.time_us, got.source) == (mtime_ns // 1000, NEWEST_MTIME)
    assert len(got.problems) == 1 and "newest file's mtime, 2024-06-03T00:00:00Z" in got.problems[0]
    got = date_backup([(STATUS_PLIST, None)], (NOW + 2 * AHEAD) * 1000, NOW)
    assert (got.time_us, got.source) == (None, STORED) and len(got.problems) == 2
    assert date_backup([], None, NOW).source == STORED


kinds = st.sampled_from(["missing", "good", "future", "ancient"])


@given(st.lists(kinds, min_size=0, max_size=3), kinds, st.integers(0, 10**9))
def test_the_date_is_the_first_trusted_source_in_order(plist_kinds, mtime_kind, jitter):
    """Oracle: the first source (plists in order, then the mtime) whose date is within [2007, now + a day], else
    stored; one problem per untrusted date passed over, plus one for falling back to the mtime or to stored."""

    def value(kind: str, i: int) -> int | None:
        return {
            "missing": None,
            "good": FLOOR_US + jitter + i * SECOND,
            "future": NOW + AHEAD + 1 + jitter,
            "ancient": FLOOR_US - 1 - jitter,
        }[kind]

    candidates = [(src, k, value(k, i)) for i, (src, k) in enumerate(zip(ORDER, plist_kinds, strict=False))]
    plist = [(src, None if t is None else naive(t)) for src, _k, t in candidates]
    mtime = value(mtime_kind, 9)
    got = date_backup(plist, None if mtime is None else mtime * 1000, NOW)
    candidates.append((NEWEST_MTIME, mtime_kind, mtime))
    untrusted = 0
    for src, kind, t in candidates:
        if kind == "good":
            assert (got.source, got.time_us) == (src, t)
            break
        untrusted += kind in ("future", "ancient")
    else:
        assert (got.source, got.time_us) == (STORED, None)
    fell_back = got.source in (NEWEST_MTIME, STORED)
    assert len(got.problems) == untrusted + fell_back


# --------------------------------------------------------------------------------------------------- records


def test_backup_meta_format_3_records_the_source_and_older_records_were_dated_when_stored():
    meta = BackupMeta(backup_date="2024-06-01T10:00:00", layout="mbdb", dated_by=INFO_PLIST)
    assert decode_record(BackupMeta, meta.encode(), "x") == meta
    format2 = msgpack.packb([2, True, "8.4", None, None, None, None, 0, "mbdb"])
    assert decode_record(BackupMeta, format2, "x").dated_by == STORED
    assert decode_record(BackupMeta, msgpack.packb({"encrypted": True}), "x").dated_by == STORED


# --------------------------------------------------------------------------------------------------- real folders


def test_a_finder_backup_is_dated_by_its_status_plist(repo, phone, tmp_path):
    folder = phone.write_backup(tmp_path / "a", day=2)
    finished = datetime(2024, 6, 3, 22, 15, 7)
    edit_plist(folder / "Status.plist", Date=finished)
    t, source, problems = dated(repo, folder)
    assert (t, source, problems) == (plist_time_us(finished), STATUS_PLIST, [])
    assert backup_meta(import_folder(repo, folder).snapshot).backup_date == finished.isoformat()


def test_without_status_plist_a_finder_backup_is_dated_by_its_manifest_plist(repo, phone, tmp_path):
    folder = phone.write_backup(tmp_path / "a", day=1)
    edit_plist(folder / "Status.plist", Date=None)
    t, source, problems = dated(repo, folder)
    assert (t, source, problems) == (backup_time(1) * SECOND, MANIFEST_PLIST, [])


def test_a_backup_dated_in_the_future_takes_the_next_date_and_says_so(repo, phone, tmp_path):
    folder = phone.write_backup(tmp_path / "a", day=0)
    edit_plist(folder / "Status.plist", Date=naive(now_us() + 3 * AHEAD))
    t, source, problems = dated(repo, folder)
    assert (t, source) == (backup_time(0) * SECOND, MANIFEST_PLIST)
    assert len(problems) == 1 and problems[0].startswith("Status.plist's Date is ") and "future" in problems[0]


def test_a_date_that_is_not_a_date_is_named_and_passed_over(repo, phone, tmp_path):
    folder = phone.write_backup(tmp_path / "a", day=0)
    edit_plist(folder / "Status.plist", Date="yesterday")
    t, source, problems = dated(repo, folder)
    assert (t, source) == (backup_time(0) * SECOND, MANIFEST_PLIST)
    assert [p for p in problems if "Status.plist: Date is 'yesterday' (str), not a date" in p], problems


def test_a_backup_with_no_dates_is_dated_by_its_newest_file_and_says_so(repo, phone, tmp_path):
    folder = phone.write_backup(tmp_path / "a", day=1)
    edit_plist(folder / "Status.plist", Date=None)
    edit_plist(folder / "Manifest.plist", Date=None)
    newest_ns = max(p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file())
    t, source, problems = dated(repo, folder)
    assert (t, source) == (newest_ns // 1000, NEWEST_MTIME)
    assert len(problems) == 1 and "no date in Status.plist, Manifest.plist or Info.plist" in problems[0]


def test_an_ios8_backup_is_dated_by_its_plists_in_order(repo, phone, tmp_path):
    folder = write_ios8_backup(phone, tmp_path / "a", day=4)
    assert dated(repo, folder) == (backup_time(4) * SECOND, STATUS_PLIST, [])
    (folder / "Status.plist").unlink()
    t, source, problems = dated(repo, folder)
    assert (t, source) == (backup_time(4) * SECOND, MANIFEST_PLIST)
    assert problems == ["Status.plist: missing"]  # as before: iTunes wrote one for every iOS 4–9 backup
    edit_plist(folder / "Manifest.plist", Date=None)
    edit_plist(folder / "Info.plist", Last_Backup_Date=datetime(2015, 8, 1, 9, 30))
    t, source, _problems = dated(repo, folder)
    assert (t, source) == (plist_time_us(datetime(2015, 8, 1, 9, 30)), INFO_PLIST)


def test_an_iphone_os_3_backup_is_dated_by_its_info_plist(repo, phone, tmp_path):
    folder = write_ios3_backup(phone, tmp_path / "a", day=6)
    assert not (folder / "Status.plist").exists()
    assert dated(repo, folder) == (backup_time(6) * SECOND, INFO_PLIST, [])


def test_a_device_backup_is_dated_when_the_device_reports_success(repo, tmp_path):
    with Emulator(tmp_path / "emulator", seed=62, size=1 << 20) as emu:
        before = now_us()
        snap = backup_device(repo, usbmux_address=emu.address).snapshot
    assert backup_meta(snap).dated_by == STORED
    assert snap.time == snap.committed and before <= snap.time <= now_us()
    assert snap.time > backup_time(0) * SECOND + AHEAD  # not the emulated phone's own plist dates (2024)
