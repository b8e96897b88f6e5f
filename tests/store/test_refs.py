"""Naming a snapshot of one device (what `rollback DEVICE --to X` takes): id prefixes, latest/current, dates and
date-times, against a real vault whose snapshots were committed at known times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phonevault.store.errors import SnapshotNotFound
from phonevault.store.history import apply_forget, plan_forget, rollback
from phonevault.store.projections import DeviceView, SnapshotRecord
from phonevault.store.records import DeviceRecord
from phonevault.store.refs import resolve_device, resolve_in_device, resolve_snapshot
from phonevault.store.repository import Repository
from phonevault.store.retention import Policy
from phonevault.store.writer import SnapshotWriter

PHONE = "00008101-000A1B2C3D4E5F60"
OTHER = "00008030-001122334455667E"
PHONE_TIMES = ["2026-11-24T10:00", "2026-11-25T09:00", "2026-11-25T14:30", "2026-11-26T08:00"]
OTHER_TIMES = ["2026-11-25T12:00"]


def us(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1_000_000)


def commit(repo: Repository, device: str, name: str, when: str) -> SnapshotRecord:
    w = SnapshotWriter(repo, device, DeviceRecord(name), incremental=False)
    f = w.open_file("Manifest.db")
    f.write(when.encode())
    f.close()
    return w.commit("test", time_us=us(when))


@pytest.fixture
def vault(repo: Repository) -> tuple[Repository, list[SnapshotRecord], SnapshotRecord]:
    phone = [commit(repo, PHONE, "Ada's iPhone", t) for t in PHONE_TIMES]
    (other,) = [commit(repo, OTHER, "Ada's iPad", t) for t in OTHER_TIMES]
    return repo, phone, other


def view_of(repo: Repository, device: str = PHONE) -> DeviceView:
    return resolve_device(repo, device)


def test_an_id_or_a_prefix_of_it_names_that_snapshot(vault):
    repo, phone, _ = vault
    view = view_of(repo)
    for snap in phone:
        for text in (snap.hex, snap.hex[:4], snap.hex[:9].upper()):
            assert resolve_in_device(view, text).id == snap.id


def test_an_id_of_another_device_is_not_found_here(vault):
    repo, _, other = vault
    with pytest.raises(SnapshotNotFound, match="no such snapshot"):
        resolve_in_device(view_of(repo), other.hex[:8])
    assert resolve_in_device(view_of(repo, OTHER), other.hex[:8]).id == other.id


def test_a_hex_word_is_an_id_never_a_date(vault):
    repo, _, _ = vault
    # 20261125 parses as a (basic-format) ISO date, but a word of hex digits always names a snapshot id.
    with pytest.raises(SnapshotNotFound, match="20261125: no such snapshot"):
        resolve_in_device(view_of(repo), "20261125")


def test_a_date_names_the_last_snapshot_of_that_day_or_before(vault):
    repo, phone, _ = vault
    view = view_of(repo)
    assert resolve_in_device(view, "2026-11-24").id == phone[0].id
    assert resolve_in_device(view, "2026-11-25").id == phone[2].id  # two that day: the later one
    assert resolve_in_device(view, "2026-11-30").id == phone[3].id  # nothing that day: the last before it
    with pytest.raises(SnapshotNotFound, match="at or before"):
        resolve_in_device(view, "2026-11-23")


def test_a_date_time_names_the_snapshot_at_or_before_it(vault):
    repo, phone, _ = vault
    view = view_of(repo)
    assert resolve_in_device(view, "2026-11-25T09:00").id == phone[1].id  # exactly at
    assert resolve_in_device(view, "2026-11-25T14:29").id == phone[1].id
    assert resolve_in_device(view, "2026-11-25T14:30Z").id == phone[2].id
    assert resolve_in_device(view, "2026-11-25T16:29+02:00").id == phone[1].id  # 14:29 UTC
    with pytest.raises(SnapshotNotFound):
        resolve_in_device(view, "2026-11-24T09:59")


def test_latest_and_current_differ_after_a_rollback(vault):
    repo, phone, _ = vault
    assert resolve_in_device(view_of(repo), "current").id == phone[3].id
    rollback(repo, view_of(repo), phone[1])
    view = view_of(repo)
    assert resolve_in_device(view, "latest").id == phone[3].id
    assert resolve_in_device(view, "current").id == phone[1].id


def test_a_forgotten_snapshot_is_named_as_forgotten_and_skipped_by_dates(vault):
    repo, phone, _ = vault
    apply_forget(repo, plan_forget(view_of(repo), Policy(), {phone[2].id}), "test")
    view = view_of(repo)
    with pytest.raises(SnapshotNotFound, match="forgotten"):
        resolve_in_device(view, phone[2].hex[:8])
    assert resolve_in_device(view, "2026-11-25").id == phone[1].id


@pytest.mark.parametrize("text", ["yesterday", "2026-13-45", "abc", "", "2026-11-25T25:00", "@", "latest@x"])
def test_what_names_nothing_is_snapshot_not_found(vault, text):
    repo, _, _ = vault
    with pytest.raises(SnapshotNotFound):
        resolve_in_device(view_of(repo), text)


def test_it_agrees_with_device_at_when(vault):
    # The vault-wide spelling DEVICE@WHEN and the per-device one name the same snapshot.
    repo, _, _ = vault
    view = view_of(repo)
    for when in ("latest", "current", "2026-11-25", "2026-11-26T07:00"):
        assert resolve_in_device(view, when).id == resolve_snapshot(repo, f"{PHONE}@{when}")[1].id


@given(minutes=st.integers(-60, 4 * 24 * 60))
def test_any_minute_resolves_to_the_latest_snapshot_not_after_it(vault, minutes):
    repo, phone, _ = vault
    t = datetime(2026, 11, 24, tzinfo=UTC) + timedelta(minutes=minutes)
    at = t.strftime("%Y-%m-%dT%H:%M")
    expected = [s for s in phone if s.time <= us(at)]  # phone is in time order
    if not expected:
        with pytest.raises(SnapshotNotFound):
            resolve_in_device(view_of(repo), at)
    else:
        assert resolve_in_device(view_of(repo), at).id == expected[-1].id
